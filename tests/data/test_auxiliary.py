"""Auxiliary tasks: labels built from the images alone."""

import pytest
import torch

from dnnkit.data.auxiliary import AuxiliaryDataModule, make_auxiliary, shuffle_patches
from dnnkit.data.datamodule import load_arrays
from dnnkit.data.idx import write_idx
from dnnkit.errors import DnnkitError
from tests.conftest import make_images, write_fake_dataset


def test_make_auxiliary_needs_only_images():
    images, _ = make_images(200, seed=0)
    for task in ("shuffle_patches", "noise", "rotation"):
        a = make_auxiliary(images, task, seed=3)
        b = make_auxiliary(images.clone(), task, seed=3)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # a function of images and seed


def test_rotation_labels_say_how_each_image_was_turned():
    images, _ = make_images(100, seed=0)
    out, labels = make_auxiliary(images, "rotation", seed=1)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    for img, rotated, k in zip(images, out, labels.tolist()):
        assert torch.equal(torch.rot90(rotated, -k, dims=(0, 1)), img)


def test_shuffled_images_are_labelled_corrupted_and_keep_their_tiles():
    images, _ = make_images(100, seed=0)
    out, labels = make_auxiliary(images, "shuffle_patches", seed=1)
    real = labels == 0
    assert 30 < real.sum() < 70
    assert torch.equal(out[real], images[real])
    for img, shuffled in zip(images[~real], out[~real]):
        assert not torch.equal(img, shuffled)
        tiles = lambda t: sorted(map(tuple, t.reshape(4, 7, 4, 7).permute(0, 2, 1, 3).reshape(16, 49).tolist()))
        assert tiles(img) == tiles(shuffled)


def test_shuffle_never_returns_the_original_order():
    images = torch.arange(4 * 4, dtype=torch.uint8).reshape(1, 4, 4).repeat(500, 1, 1)
    out = shuffle_patches(images, 2, torch.Generator().manual_seed(0))
    assert not (out == images).flatten(1).all(1).any()


def test_datamodule_ignores_the_class_labels(tmp_path, monkeypatch):
    """The same images with scrambled class labels give the same auxiliary data set."""
    root = write_fake_dataset(tmp_path / "a")
    other = write_fake_dataset(tmp_path / "b")
    for split, n in (("train", 1200), ("t10k", 300)):
        write_idx(other / f"{split}-labels-idx1-ubyte.gz", torch.randint(0, 10, (n,), dtype=torch.uint8))
    splits = []
    for folder in (root, other):
        load_arrays.cache_clear()
        dm = AuxiliaryDataModule(task="rotation", root=str(folder), val_size=100, download=False)
        dm.setup()
        splits.append({s: dm.split(s) for s in ("train", "val", "test")})
    load_arrays.cache_clear()
    for s in ("train", "val", "test"):
        assert torch.equal(splits[0][s][0], splits[1][s][0]) and torch.equal(splits[0][s][1], splits[1][s][1])


def test_bad_settings():
    with pytest.raises(DnnkitError, match="unknown auxiliary task 'pairs'; valid: noise, rotation, shuffle_patches"):
        AuxiliaryDataModule(task="pairs")
    with pytest.raises(DnnkitError, match="n_per_class must be null, got 10"):
        AuxiliaryDataModule(n_per_class=10)
    with pytest.raises(DnnkitError, match="patch=5 must divide the image size 28x28"):
        make_auxiliary(make_images(4, 0)[0], "shuffle_patches", patch=5)
    for patch in (0, -7, 28):  # 28: one tile, so a "shuffled" image is the image itself
        with pytest.raises(DnnkitError, match=f"patch={patch} must divide the image size 28x28 "
                                              f"into at least 2 tiles: one of \\(1, 2, 4, 7, 14\\)"):
            AuxiliaryDataModule(patch=patch)
        with pytest.raises(DnnkitError, match=f"patch={patch} must divide the image size 28x28 into at least 2 tiles"):
            make_auxiliary(make_images(4, 0)[0], "shuffle_patches", patch=patch)
