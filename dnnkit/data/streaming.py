"""Streaming an image folder that does not fit in memory: files decoded by workers, batch by batch.

:class:`FileImages` stands for a uint8 ``(N, C, H, W)`` tensor of image files without holding
it: :class:`~dnnkit.data.base.TensorDataModule` splits it with ``index_select`` (a lazy subset),
reads its ``shape``, and slices it for the training split's normalisation statistics. The
:class:`StreamingLoader` is a :class:`~dnnkit.data.loader.TensorLoader` whose images are such
files: the order of epoch ``e`` (``(seed, e)``), the DDP shard, the mid-epoch resume position,
the seeded augmentation and the standardisation are the in-memory loader's own code, so both
paths give the same batches for the same seed; only the gather of a batch differs. A
``torch.utils.data.DataLoader`` with ``workers`` persistent processes decodes the batches the
epoch will ask for ahead of time (at most ``prefetch`` per worker in flight: memory stays
bounded); a batch asked for out of that order is decoded on the spot, so correctness never
depends on the prefetch.

A file whose header read fine but whose pixels are corrupt is found only when its batch is
decoded: it is an error naming the file, or with ``skip_bad`` a blank image in that batch,
logged once per file.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from dnnkit.data.image_files import BadImage, decode
from dnnkit.data.loader import TensorLoader

log = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """``(uint8 image (C, H, W), label, None)`` per file, decoded by
    :func:`~dnnkit.data.image_files.decode`; with ``tolerant``, a bad file gives a blank image
    and the problem instead of raising :class:`~dnnkit.data.image_files.BadImage`."""

    def __init__(self, files: list[Path], labels: list[int], channels: int, size: tuple[int, int], tolerant: bool = False) -> None:
        self.files, self.labels, self.channels, self.size, self.tolerant = list(files), list(labels), channels, size, tolerant

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str | None]:
        try:
            return decode(self.files[i], self.channels, self.size), self.labels[i], None
        except BadImage as err:
            if not self.tolerant:
                raise
            return torch.zeros((self.channels, *self.size), dtype=torch.uint8), self.labels[i], str(err)


def collate(items: list) -> tuple[torch.Tensor, list[str | None]]:
    """A batch of :class:`ImageFiles` items: the stacked images and each file's problem."""
    return torch.stack([image for image, _, _ in items]), [problem for _, _, problem in items]


class FileImages:
    """A lazy uint8 ``(N, C, H, W)`` "tensor" of image files (see the module docstring).

    Example::

        >>> import tempfile, torch
        >>> from torchvision.io import write_png
        >>> folder = Path(tempfile.mkdtemp())
        >>> for i in range(3):
        ...     _ = write_png(torch.full((1, 4, 4), 50 * i, dtype=torch.uint8), str(folder / f"{i}.png"))
        >>> images = FileImages(sorted(folder.glob("*.png")), (1, 4, 4))
        >>> tuple(images.shape), len(images.index_select(0, torch.tensor([2, 0])))
        ((3, 1, 4, 4), 2)
        >>> images.index_select(0, torch.tensor([2, 0]))[0:2][:, 0, 0, 0].tolist()
        [100, 0]
    """

    dtype = torch.uint8

    def __init__(self, files: list[Path], shape: tuple[int, int, int], skip_bad: bool = False) -> None:
        self.files, self.item_shape, self.skip_bad = list(files), tuple(shape), skip_bad

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.files), *self.item_shape))

    def dim(self) -> int:
        return 4

    def index_select(self, dim: int, idx: torch.Tensor) -> FileImages:
        if dim != 0:
            raise ValueError("FileImages selects along dimension 0 only")
        return FileImages([self.files[i] for i in idx.tolist()], self.item_shape, self.skip_bad)

    def dataset(self, tolerant: bool = True) -> ImageFiles:
        return ImageFiles(self.files, [0] * len(self.files), self.item_shape[0], self.item_shape[1:], tolerant)

    def decode(self, idx: list[int]) -> torch.Tensor:
        """The images ``idx`` decoded, in that order (in this process)."""
        data = self.dataset()
        images, problems = collate([data[i] for i in idx])
        return self.checked(images, problems, [self.files[i] for i in idx])

    def checked(self, images: torch.Tensor, problems: list[str | None], files: list[Path]) -> torch.Tensor:
        """``images``, unless a problem is not to be skipped (then the error naming the file)."""
        for problem in problems:
            if problem is None:
                continue
            if not self.skip_bad:
                raise BadImage(f"{problem}; fix or remove it, or set data.skip_bad=true to use a blank image instead")
            log.warning("%s: a blank image is used instead (data.skip_bad=true)", problem)
        return images

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self.decode(list(range(len(self.files)))[key])
        if isinstance(key, int):
            return self.decode([key])[0]
        raise TypeError(f"FileImages index must be an int or a slice, got {type(key).__name__}")


class _Batches:
    """A batch sampler whose batches are set per epoch (it is iterated in the main process)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Fetcher:
    """What :class:`StreamingLoader` has for ``images``: ``index_select(0, idx)`` gives the
    decoded batch, prefetched by the workers when it is the one expected next."""

    dtype = torch.uint8

    def __init__(self, images: FileImages, workers: int, prefetch: int) -> None:
        self.source = images
        self.sampler = _Batches()
        options = {"num_workers": workers, "persistent_workers": workers > 0}
        if workers > 0:
            options["prefetch_factor"] = prefetch
        self.loader = DataLoader(images.dataset(), batch_sampler=self.sampler, collate_fn=collate, **options)
        self._expected: deque[torch.Tensor] = deque()
        self._iterator = None
        self.prefetched = 0  # batches served from the workers (the rest were decoded on the spot)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def shape(self) -> torch.Size:
        return self.source.shape

    def dim(self) -> int:
        return 4

    def start(self, batches: list[torch.Tensor]) -> None:
        self.sampler.batches = [b.tolist() for b in batches]
        self._expected = deque(batches)
        self._iterator = iter(self.loader) if batches else None

    def stop(self) -> None:
        self._expected.clear()
        self._iterator = None

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        if self._iterator is not None and self._expected and torch.equal(self._expected[0], idx):
            self._expected.popleft()
            images, problems = next(self._iterator)
            self.prefetched += 1
            return self.source.checked(images, problems, [self.source.files[i] for i in idx.tolist()])
        self.stop()  # not the batch foreseen: decode it here
        return self.source.decode(idx.tolist())


class StreamingLoader(TensorLoader):
    """A :class:`~dnnkit.data.loader.TensorLoader` over :class:`FileImages` (module docstring).

    Args:
        images: the split's :class:`FileImages`.
        labels: int64 labels, one per file.
        workers: decoding processes (0: decode in this process, when the batch is asked for).
        prefetch: batches each worker decodes ahead.
        options: :class:`~dnnkit.data.loader.TensorLoader`'s (``batch_size``, ``shuffle``, ``seed``,
            ``mean``/``std``, ``rank``/``world_size``, ``augment``).
    """

    def __init__(self, images: FileImages, labels: torch.Tensor, workers: int = 0, prefetch: int = 2, **options) -> None:
        super().__init__(images, labels, **options)
        self.images = _Fetcher(images, workers, prefetch)

    def planned_batches(self) -> list[torch.Tensor]:
        """The sample indices of each batch :meth:`__iter__` will serve next, as the parent
        computes them (the epoch's order, the resume position, this rank's share)."""
        epoch, resume = self.sampler.epoch, self._resume
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        order, bs = self.order(epoch), self.batch_size
        return [order[b * bs : (b + 1) * bs] for b in (self.rank + i * self.world_size for i in range(skip, len(self)))]

    def __iter__(self):
        self.images.start(self.planned_batches())
        try:
            yield from super().__iter__()
        finally:
            self.images.stop()
