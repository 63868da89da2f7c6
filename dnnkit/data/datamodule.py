"""In-memory DataModule for MNIST-like sets: splits, class subsets, few-label budgets."""

from __future__ import annotations

import functools
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from dnnkit.data.discovery import DATASETS, check_files, find_dataset
from dnnkit.data.idx import read_idx
from dnnkit.data.loader import TensorLoader
from dnnkit.errors import DnnkitError, choose, number

log = logging.getLogger(__name__)

# pixel mean/std of each training set scaled to [0, 1] (checked in shared/datasets/README.md)
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
SEED_LIMIT = 2**32  # numpy's and Lightning's seeds are unsigned 32-bit


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


def split_indices(
    labels: torch.Tensor, val_size: int, n_per_class: int | None, seed: int, val_split: str = "random"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, val) indices: the first ``val_size`` of a seeded shuffle (or, with
    ``val_split="first"``, of the file, as TF's ``read_data_sets`` did) for validation, then at
    most ``n_per_class`` per class from the rest for training."""
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < len(labels):
        raise DnnkitError(f"val_size must be an integer in [0, {len(labels)}), got {val_size!r}")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    if choose("val_split", val_split, ["random", "first"]) == "first":
        first = torch.zeros(len(labels), dtype=torch.bool)
        first[:val_size] = True
        perm = torch.cat([torch.arange(val_size), perm[~first[perm]]])
    val, train = perm[:val_size], perm[val_size:]
    if n_per_class is not None:
        if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class <= 0:
            raise DnnkitError(f"n_per_class must be a positive integer or null, got {n_per_class!r}")
        # per class, its first n_per_class in `train`'s order: one stable sort instead of a mask per
        # class (each torch op costs ~10 ms on 2 busy cores, whatever its size)
        classes = torch.bincount(labels)
        in_train = labels[train]
        counts = torch.bincount(in_train, minlength=len(classes)).tolist()
        by_class = train[torch.argsort(in_train, stable=True)]
        starts = [sum(counts[:c]) for c in range(len(counts))]
        picked = []
        for c in classes.nonzero().flatten().tolist():
            if counts[c] < n_per_class:
                raise DnnkitError(
                    f"n_per_class={n_per_class} but class {c} has only {counts[c]} training images "
                    f"after the {val_size}-image validation split; use n_per_class <= {counts[c]}"
                )
            picked.append(by_class[starts[c] : starts[c] + n_per_class])
        train = torch.cat(picked)
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))]
    return train, val


class MNISTDataModule(L.LightningDataModule):
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
    ) -> None:
        super().__init__()
        choose("dataset", name, DATASETS)
        number("data.batch_size", batch_size, 1, integer=True)
        number("data.eval_batch_size", eval_batch_size, 1, integer=True)
        number("data.val_size", val_size, 0, integer=True)
        number("data.n_per_class", n_per_class, 1, integer=True, optional=True)
        number("data.seed", seed, 0, SEED_LIMIT, integer=True, high_open=True)
        if classes is not None:
            ok = isinstance(classes, Sequence) and not isinstance(classes, str)
            if not ok or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < 10 for c in classes) \
                    or len(set(classes)) != len(classes) or len(classes) < 2:
                raise DnnkitError(
                    f"data.classes={classes!r} is invalid: give at least two distinct labels from 0..9 "
                    f"({', '.join(f'{i}={n}' for i, n in enumerate(DATASETS[name].classes))})"
                )
        self.name, self.root, self.download = name, root, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.classes, self.n_per_class, self.seed = val_size, classes, n_per_class, seed
        self.val_split = choose("val_split", val_split, ["random", "first"])
        self.normalize = normalize
        self.num_classes = len(classes) if classes else 10
        names = DATASETS[name].classes
        self.class_names = [names[c] for c in classes] if classes else list(names)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _subset(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.classes:
            return images, labels
        lut = torch.full((10,), -1, dtype=torch.long)
        lut[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        keep = lut[labels] >= 0
        return images[keep], lut[labels[keep]]

    def _subset_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if not self.classes:
            return labels
        lut = torch.full((10,), -1, dtype=torch.long)
        lut[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        return lut[labels][lut[labels] >= 0]

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

    def train_size(self) -> int:
        """How many training images :meth:`setup` will keep (after the validation split, the class
        subset and ``n_per_class``), from the labels alone: no image is read, and a split the data
        cannot give fails here as it would in :meth:`setup`."""
        labels = self._subset_labels(read_labels(self.name, self.dataset_files()["train_labels"]))
        return len(split_indices(labels, self.val_size, self.n_per_class, self.seed, self.val_split)[0])

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        arrays = load_arrays(self.name, self.root, self.download)
        images, labels = self._subset(arrays["train_images"], arrays["train_labels"])
        train, val = split_indices(labels, self.val_size, self.n_per_class, self.seed, self.val_split)
        self._splits["train"] = (images[train], labels[train])
        self._splits["val"] = (images[val], labels[val])
        self._splits["test"] = self._subset(arrays["test_images"], arrays["test_labels"])
        if self.classes:
            mapping = ", ".join(f"{c} ({n}) -> {i}" for i, (c, n) in enumerate(zip(self.classes, self.class_names)))
            log.info("%s classes remapped: %s", self.name, mapping)
        log.info(
            "%s: %d train, %d val, %d test images",
            self.name, len(self._splits["train"][1]), len(self._splits["val"][1]), len(self._splits["test"][1]),
        )

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, int64 labels) of ``train``, ``val`` or ``test`` (after :meth:`setup`)."""
        if not self._splits:
            self.setup()
        return self._splits[choose("split", name, self._splits)]

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> TensorLoader:
        images, labels = self.split(split)
        mean, std = STATS[self.name] if self.normalize else (None, None)
        trainer = self.trainer if self._trainer_attached() else None
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None and shuffle else (0, 1)
        return TensorLoader(images, labels, batch_size, shuffle, self.seed, mean=mean, std=std, rank=rank, world_size=world)

    def _trainer_attached(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
