"""In-memory DataModule for MNIST and Fashion-MNIST IDX files, on :class:`~dnnkit.data.base.TensorDataModule`."""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch

from dnnkit.data.base import SEED_LIMIT, TensorDataModule, split_indices
from dnnkit.data.discovery import DATASETS, check_files, find_dataset
from dnnkit.data.idx import read_idx
from dnnkit.errors import DnnkitError, choose, number

log = logging.getLogger(__name__)

# pixel mean/std of each training set scaled to [0, 1] (checked in shared/datasets/README.md)
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
__all__ = ["SEED_LIMIT", "STATS", "MNISTDataModule", "load_arrays", "read_checked", "read_labels", "split_indices"]


def read_checked(path: Path, dims: int) -> torch.Tensor:
    """:func:`~dnnkit.data.idx.read_idx`, with a corrupt gzip stream (zlib's own error) named too."""
    try:
        return read_idx(path, expect_dims=dims)
    except zlib.error as err:
        raise DnnkitError(f"cannot read IDX file {path}: its gzip data is corrupt ({err}); copy or download the file again") from None


def read_labels(name: str, path: Path) -> torch.Tensor:
    """The labels in ``path`` as int64, each checked to be one of ``name``'s classes."""
    labels = read_checked(path, 1).long()
    n_classes = len(DATASETS[name].classes)
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < n_classes:
        bad = labels[(labels < 0) | (labels >= n_classes)][0].item()
        raise DnnkitError(f"{path} holds label {bad}; {name} labels are 0..{n_classes - 1}")
    return labels


@functools.lru_cache(maxsize=4)
def load_arrays(name: str, root: str | None = None, download: bool = True) -> dict[str, torch.Tensor]:
    """The four tensors of dataset ``name``, read once per process (stages share them)."""
    files = find_dataset(name, root, download)
    check_files(name, files)  # the headers agree and the files are one set's, before 47 MB are read
    arrays = {key: read_labels(name, path) if key.endswith("labels") else read_checked(path, 3) for key, path in files.items()}
    for split in ("train", "test"):  # the headers said so; the payloads agree (read_idx checks their lengths)
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DnnkitError(f"{files[split + '_images']} holds {n_img} images but {files[split + '_labels']} {n_lab} labels")
    log.info("%s: reading %s", name, files["train_images"].parent)
    return arrays


class MNISTDataModule(TensorDataModule):
    """MNIST or Fashion-MNIST held in memory as uint8, batches cut from tensors.

    Args:
        name: ``mnist`` or ``fashion_mnist``.
        root: a folder with the four IDX files (else see :mod:`dnnkit.data.discovery`).
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
        val_size: validation images taken from the training set (the seed's 5,000).
        val_split: ``random`` (seeded) or ``first``: the first ``val_size`` images of the file,
            as TF's ``input_data.read_data_sets`` gave the seed (they are easier than a random
            5,000: MNIST's seed recipes score about 0.5 points higher on them).
        classes: keep only these original labels, remapped to 0..k-1 in the given order.
        n_per_class: training images per class (few-label experiments); ``None`` keeps all.
        seed: fixes the split, the subset and the shuffle order.
        normalize: standardise with the training set's pixel mean/std instead of [0, 1].
        download: allow a torchvision download when the files are nowhere on disk.
        augment: training-split augmentation, e.g. ``[crop, flip]`` (:mod:`dnnkit.data.augment`).

    Example::

        >>> import os, tempfile, torch
        >>> from dnnkit.data.discovery import write_example_files
        >>> root = write_example_files(tempfile.mkdtemp())  # a tiny stand-in for the four IDX files
        >>> dm = MNISTDataModule("fashion_mnist", root=root, classes=[5, 6], n_per_class=10, val_size=20)
        >>> dm.setup("fit")  # doctest: +ELLIPSIS
        fashion_mnist: reading ...
        fashion_mnist classes remapped: 5 (Sandal) -> 0, 6 (Shirt) -> 1
        fashion_mnist: 20 train, 20 val, 20 test images
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.dtype, tuple(x.shape), sorted(set(y.tolist()))
        (torch.float32, (20, 1, 28, 28), [0, 1])
    """

    # what model configs resolve to without reading a file (dnnkit.stages: dnnkit.input_features, dnnkit.num_classes)
    nominal_input_shape, nominal_num_classes = (1, 28, 28), 10

    def __init__(
        self,
        name: str = "mnist",
        root: str | None = None,
        batch_size: int = 200,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        val_split: str = "random",
        classes: Sequence[int] | None = None,
        n_per_class: int | None = None,
        seed: int = 0,
        normalize: bool = False,
        download: bool = True,
        augment: Sequence | None = None,
    ) -> None:
        choose("dataset", name, DATASETS)
        number("data.batch_size", batch_size, 1, integer=True)
        number("data.eval_batch_size", eval_batch_size, 1, integer=True)
        number("data.val_size", val_size, 0, integer=True)
        number("data.n_per_class", n_per_class, 1, integer=True, optional=True)
        number("data.seed", seed, 0, SEED_LIMIT, integer=True, high_open=True)
        super().__init__(batch_size, eval_batch_size, val_size, val_split, classes, n_per_class, seed, normalize, augment)
        self.name, self.root, self.download = name, root, download
        self.class_names  # noqa: B018 - checks `classes` against the set's ten now, not at setup

    def source_class_names(self) -> Sequence[str]:
        return DATASETS[self.name].classes

    def dataset_files(self) -> dict[str, Path]:
        """The four IDX files this module reads, found (:func:`~dnnkit.data.discovery.find_dataset`)
        and checked to belong together (:func:`~dnnkit.data.discovery.check_files`)."""
        files = find_dataset(self.name, self.root, self.download)
        check_files(self.name, files)
        return files

    def input_shape(self) -> tuple[int, ...]:
        """``(channels, height, width)`` of one image, from the training images' header alone.

        Example::

            >>> import os, tempfile, torch
            >>> from dnnkit.data.discovery import write_example_files
            >>> root = write_example_files(tempfile.mkdtemp())  # a tiny stand-in for the four IDX files
            >>> MNISTDataModule("mnist", root=root).input_shape()
            (1, 28, 28)
        """
        files = find_dataset(self.name, self.root, self.download)
        shape = check_files(self.name, files)["train_images"] or list(read_checked(files["train_images"], 3).shape)
        return (1, *shape[1:])

    def source_labels(self, split: str) -> torch.Tensor | None:
        """The labels of the ``train`` or ``test`` file (MNIST has no val file), each checked."""
        if split == "val":
            return None
        return read_labels(self.name, self.dataset_files()[f"{split}_labels"])

    def load_source(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = load_arrays(self.name, self.root, self.download)
        return arrays[f"{split}_images"], arrays[f"{split}_labels"]

    def normalization(self) -> tuple | None:
        """The set's known pixel mean and std (:data:`STATS`), with ``normalize``."""
        return STATS[self.name] if self.normalize else None
