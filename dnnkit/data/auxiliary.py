"""Auxiliary tasks whose labels are made from the images alone (no class labels).

When labels are scarce, train first on a task whose labels you can make yourself, then reuse
the lower layers for the real task (Hands-On ML 1e, ch. 11, "Pretraining on an auxiliary
task"). Tasks here, each a function of the images and a seed only:

* ``shuffle_patches``: "real vs corrupted". Half the images have their ``patch`` x ``patch``
  tiles shuffled (label 1), the other half are untouched (label 0). Telling them apart takes
  knowing what strokes of a real digit look like across tile borders.
* ``noise``: "real vs corrupted" with pixel noise: half the images get Gaussian noise (std 0.3
  of the pixel range). Easy, and mostly teaches low-level statistics: a weak baseline.
* ``rotation``: each image rotated by 0, 90, 180 or 270 degrees, the label is which
  (Gidaris et al., 2018). Knowing a digit's upright orientation takes knowing its shape.

The book's "same digit or not" pairs need the digit labels to build the pairs, so it is not a
task that can be made from unlabelled images; it is not offered here.
"""

from __future__ import annotations

import torch
from typing_extensions import override

from dnnkit.data.datamodule import MNISTDataModule
from dnnkit.errors import DnnkitError, choose

TASKS = {"shuffle_patches": 2, "noise": 2, "rotation": 4}


def check_patch(patch, h: int = 28, w: int = 28) -> int:
    """``patch`` if square tiles of that side cut ``h`` x ``w`` images into at least 2 tiles, else
    one error that lists the sides that do."""
    valid = tuple(p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0 and h * w // p**2 >= 2)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch not in valid:
        raise DnnkitError(f"patch={patch!r} must divide the image size {h}x{w} into at least 2 tiles: one of {valid}")
    return patch


def shuffle_patches(images: torch.Tensor, patch: int, generator: torch.Generator) -> torch.Tensor:
    """Each image's ``patch`` x ``patch`` tiles in a random order (never the original order)."""
    n, h, w = images.shape
    check_patch(patch, h, w)
    gh, gw = h // patch, w // patch
    tiles = images.reshape(n, gh, patch, gw, patch).permute(0, 1, 3, 2, 4).reshape(n, gh * gw, patch, patch)
    order = torch.rand(n, gh * gw, generator=generator).argsort(1)
    identity = (order == torch.arange(gh * gw)).all(1)
    order[identity] = order[identity].roll(1, dims=1)
    tiles = tiles[torch.arange(n)[:, None], order]
    return tiles.reshape(n, gh, gw, patch, patch).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def make_auxiliary(images: torch.Tensor, task: str = "shuffle_patches", seed: int = 0, patch: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of auxiliary ``task``, made from uint8 ``images`` (N, H, W) alone.

    Example::

        >>> x = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
        >>> aux_x, aux_y = make_auxiliary(x, "rotation", seed=0)
        >>> aux_x.shape, aux_y.tolist() == [int(k) for k in aux_y]
        (torch.Size([6, 28, 28]), True)
    """
    choose("auxiliary task", task, TASKS)
    if images.dim() != 3:
        raise DnnkitError(f"make_auxiliary expects images of shape (N, H, W), got {tuple(images.shape)}")
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    out = images.clone()
    if task == "rotation":
        labels = torch.randint(0, 4, (n,), generator=g)
        for k in range(1, 4):
            out[labels == k] = torch.rot90(images[labels == k], k, dims=(1, 2))
        return out, labels
    labels = (torch.rand(n, generator=g) < 0.5).long()
    bad = labels == 1
    if task == "shuffle_patches":
        out[bad] = shuffle_patches(images[bad], patch, g)
    else:
        noisy = images[bad].float() + 0.3 * 255 * torch.randn(images[bad].shape, generator=g)
        out[bad] = noisy.clamp(0, 255).round().to(images.dtype)
    return out, labels


class AuxiliaryDataModule(MNISTDataModule):
    """An :class:`~dnnkit.data.MNISTDataModule` whose train/val/test splits are replaced by
    auxiliary ``task`` (see :data:`TASKS`) built from their images; the class labels are dropped.

    Args:
        task: ``shuffle_patches``, ``noise`` or ``rotation``.
        patch: tile size for ``shuffle_patches`` (must divide 28: 2, 4, 7, 14).
        **kwargs: as for :class:`~dnnkit.data.MNISTDataModule` (``n_per_class`` must stay ``None``:
            the auxiliary task needs no labels, so it uses every training image).

    Example::

        >>> import os, tempfile, torch
        >>> from dnnkit.data.discovery import write_example_files
        >>> root = write_example_files(tempfile.mkdtemp())  # a tiny stand-in for the four IDX files
        >>> dm = AuxiliaryDataModule(task="rotation", root=root, val_size=50)
        >>> dm.setup("fit")  # doctest: +ELLIPSIS
        mnist: reading ...
        mnist: 250 train, 50 val, 100 test images
        >>> images, labels = dm.split("train")
        >>> dm.class_names, labels.unique().tolist()   # labels 0..3: the rotation
        (['0°', '90°', '180°', '270°'], [0, 1, 2, 3])
    """

    def __init__(self, task: str = "shuffle_patches", patch: int = 7, **kwargs) -> None:
        if kwargs.get("n_per_class") is not None:
            raise DnnkitError(
                f"an auxiliary task makes its labels from all images; n_per_class must be null, got {kwargs['n_per_class']!r}"
            )
        super().__init__(**kwargs)
        self.task, self.patch = choose("auxiliary task", task, TASKS), patch
        if task == "shuffle_patches":
            check_patch(patch)  # MNIST-like images are 28x28: fail here, not at setup
        self.num_classes = TASKS[task]
        self.class_names = ["real", "corrupted"] if self.num_classes == 2 else ["0°", "90°", "180°", "270°"]

    @override
    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        super().setup(stage)
        for i, split in enumerate(("train", "val", "test")):
            images, _ = self._splits[split]  # the class labels are dropped here, unused
            self._splits[split] = make_auxiliary(images, self.task, self.seed * 3 + i, self.patch)
