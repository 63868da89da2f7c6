"""The streaming path of ``data=folder`` (dnnkit/data/streaming.py): the same batches as the
in-memory loader for the same seed (split, shuffle by (seed, epoch), augmentation,
normalisation), the same mid-epoch resume position, bounded prefetch by workers, the automatic
choice by size, and corrupt pixels met mid-epoch."""

from __future__ import annotations

import logging

import pytest
import torch

from dnnkit.data.image_files import BadImage
from dnnkit.data.streaming import FileImages, StreamingLoader
from tests.data.test_folder import folder_dm, marks, write_folder


def batches(loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.fixture
def pair(tmp_path):
    """The same folder as an in-memory and as a streaming datamodule (augmented, normalised)."""
    root = write_folder(tmp_path / "d", n=12)
    options = {"augment": ["crop:1", "flip"], "normalize": True, "seed": 3}
    memory, stream = folder_dm(root, in_memory=True, **options), folder_dm(root, in_memory=False, **options)
    memory.setup()
    stream.setup()
    return memory, stream


def test_streaming_gives_the_in_memory_batches(pair):
    memory, stream = pair
    assert isinstance(stream.train_dataloader(), StreamingLoader) and not isinstance(memory.train_dataloader(), StreamingLoader)
    for split in ("train", "val", "test"):
        assert torch.equal(memory.split(split)[1], stream.split(split)[1])
    assert torch.equal(memory.normalization()[0], stream.normalization()[0])  # one pass over the files for the stats
    for epoch in (0, 1):
        assert same(batches(memory.train_dataloader(), epoch), batches(stream.train_dataloader(), epoch))
    assert not same(batches(stream.train_dataloader(), 0), batches(stream.train_dataloader(), 1))  # a new order each epoch
    assert same(list(memory.val_dataloader()), list(stream.val_dataloader()))
    assert same(list(memory.test_dataloader()), list(stream.test_dataloader()))


def test_streaming_resumes_mid_epoch_where_it_stopped(pair):
    _, stream = pair
    whole = batches(stream.train_dataloader(), epoch=1)
    first = stream.train_dataloader()
    first.sampler.set_epoch(1)
    it = iter(first)
    served = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 1, "served": 3} and same(served, whole[:3])
    resumed = stream.train_dataloader()
    resumed.load_state_dict(state)
    assert resumed.planned_batches()[0].tolist() == resumed.order(1)[3 * 4 : 4 * 4].tolist()
    assert same(list(resumed), whole[3:])


def test_workers_prefetch_the_same_batches_and_odd_requests_still_work(tmp_path):
    root = write_folder(tmp_path / "d", n=8)
    memory, stream = folder_dm(root, in_memory=True), folder_dm(root, in_memory=False, num_workers=2)
    memory.setup()
    stream.setup()
    loader = stream.train_dataloader()
    assert loader.images.loader.num_workers == 2 and loader.images.loader.prefetch_factor == 2  # at most 4 batches in flight
    assert same(batches(memory.train_dataloader(), 2), batches(loader, 2))
    assert loader.images.prefetched == len(loader) == 4  # every batch came from the workers
    idx = torch.tensor([5, 0, 2])  # not a planned batch: decoded on the spot
    assert torch.equal(loader.batch(idx)[0], memory.train_dataloader().batch(idx)[0])


def test_the_size_limit_chooses_streaming(tmp_path, caplog):
    root = write_folder(tmp_path / "d", n=4)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        assert folder_dm(root, memory_limit_gb=1e-7, val_size=2, test_size=2).streams()
        assert not folder_dm(root, memory_limit_gb=1.0, val_size=2, test_size=2).streams()
    assert "768 B decoded) streamed, decoded in this process, above the limit of 107 B (data.memory_limit_gb)" in caplog.text
    assert "768 B decoded) in memory, within the limit of 1.0 GB (data.memory_limit_gb)" in caplog.text


def test_corrupt_pixels_met_while_streaming_are_named_or_blanked(tmp_path, caplog):
    root = write_folder(tmp_path / "d", n=4, classes=("a", "b"))
    bad = root / "b" / "001.png"
    data = bytearray(bad.read_bytes())
    data[60] ^= 0x01  # the header still reads: only decoding finds it
    bad.write_bytes(bytes(data))
    images = FileImages(sorted(root.rglob("*.png")), (1, 8, 8))
    with pytest.raises(BadImage, match=rf"cannot decode image {bad}: chunk 'IDAT' fails its CRC check"):
        images[0:8]
    tolerant = FileImages(images.files, (1, 8, 8), skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="dnnkit"):
        x = tolerant[0:8]
    assert f"{bad}" in caplog.text and "a blank image is used instead" in caplog.text
    assert int(x[5].sum()) == 0 and marks(x.float() / 255)[4].item() == 16 + 0


def test_lightning_fits_on_the_streaming_loader(tmp_path):
    import lightning as L

    from dnnkit.modules import Classifier
    from dnnkit.nn import MLP

    dm = folder_dm(write_folder(tmp_path / "d", n=8), in_memory=False)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(Classifier(MLP(64, [8], 3)), datamodule=dm)
    assert trainer.global_step == 2 * 4 and trainer.train_dataloader.sampler.epoch == 1
