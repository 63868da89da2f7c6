"""One DataModule contract for every data source: splits, class subsets and loaders from labels.

:class:`TensorDataModule` holds everything the MNIST DataModule used to do for itself; a data
source (IDX files, an ``.npz``, a torchvision set, an image folder) only says how to read its
data. **The contract** a subclass fulfils:

``source_labels(split) -> Tensor | None``
    int64 labels, in the source's own numbering ``0..K-1``, of the source split ``"train"``,
    ``"val"`` or ``"test"`` in a fixed order (file order); ``None`` when the source has no such
    split. Cheap: no image is read. ``"train"`` is required. A source with its own ``"val"``
    gets it as the validation split (``val_size``/``val_split`` are then unused); one without
    ``"test"`` gets a seeded ``test_size`` part of ``"train"`` held out, the same for every
    ``seed`` (``test_size=None``: such a source is refused with one line saying so).
``load_source(split) -> (x, y)``
    the whole source split in the same order: ``x`` uint8 images ``(N, H, W)`` or
    ``(N, C, H, W)``, float32 images ``(N, C, H, W)`` in [0, 1], or float32 feature vectors
    ``(N, F)``; ``y`` as ``source_labels``. Called by :meth:`setup` only, once per split used.
``source_class_names() -> Sequence[str]``
    the ``K`` names of the source's labels (cheap).
``input_shape() -> tuple``
    ``(C, H, W)`` of one image or ``(F,)`` of one feature vector, without reading the data
    (a header, one file); model configs read it through ``${dnnkit.input_shape:${data},0}``.

Optional: ``normalization()`` (default: per-channel, or per-feature, mean and std of the
training split; known stats where a set has them, as MNIST's), and ``name`` (used in messages).

What the base gives every source, from the labels alone (:meth:`plan`): the seeded train/val
split (``val_size`` a count or a fraction in (0, 1); ``val_split`` ``random`` or ``first``),
``classes`` (a subset of the source labels, remapped to ``0..k-1`` in the given order),
``n_per_class`` training samples per class, ``class_names``, ``num_classes``, ``train_size()``
(the preflight's check of DDP ranks), and the fast in-memory :class:`TensorLoader` with its
exact mid-epoch resume position, DDP rank/world sharding, ``normalize`` and, on the training
split only, ``augment`` (:mod:`dnnkit.data.augment`). A source that streams (its data does not
fit in memory) uses :meth:`plan` for its file lists and :meth:`loader_options` for its own
loader, so that it splits, shuffles and resumes exactly as the in-memory one does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch

from dnnkit.data.augment import BatchAugment, build_augment
from dnnkit.data.loader import TensorLoader
from dnnkit.errors import DnnkitError, choose, number, shorten

log = logging.getLogger(__name__)

SEED_LIMIT = 2**32  # numpy's and Lightning's seeds are unsigned 32-bit
TEST_SEED = 20_240_915  # fixes a held-out test split, whatever data.seed is
SPLITS = ("train", "val", "test")


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


def size_of(name: str, value, n: int) -> int:
    """``value`` (a count, or a fraction in (0, 1)) of ``n`` samples, as a count."""
    if isinstance(value, float) and 0 < value < 1:
        return int(round(value * n))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DnnkitError(f"{name} must be an integer >= 0 or a fraction in (0, 1), got {value!r}")
    return value


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel of images (N, C, H, W) or (N, H, W) scaled to [0, 1] (uint8 / 255),
    or per feature of vectors (N, F); float64 sums over chunks, so a large set needs no float copy."""
    dims = (0,) if x.dim() == 2 else (0, 2, 3) if x.dim() == 4 else (0, 1, 2)
    scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
    total = sq = None
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].double() * scale
        s, q = part.sum(dims), (part * part).sum(dims)
        total, sq = (s, q) if total is None else (total + s, sq + q)
    count = len(x) * (x[0].numel() // (total.numel() if x.dim() != 3 else 1))
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant channel or feature: shift it only
    return mean.float(), std.float()


def sample_shape(x: torch.Tensor) -> tuple[int, ...]:
    """One sample's shape as :meth:`TensorDataModule.input_shape` gives it: (N, H, W) -> (1, H, W)."""
    return (1, *x.shape[1:]) if x.dim() == 3 else tuple(x.shape[1:])


class TensorDataModule(L.LightningDataModule):
    """The shared part of dnnkit's DataModules; see the module docstring for the contract.

    Args:
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
        val_size: validation samples taken from the training split: a count, or a fraction in
            (0, 1) of it (after the class subset). Unused when the source has its own val split.
        val_split: ``random`` (seeded) or ``first``: the first ``val_size`` of the source order.
        classes: keep only these source labels, remapped to 0..k-1 in the given order.
        n_per_class: training samples per class (few-label experiments); ``None`` keeps all.
        seed: fixes the split, the subset, the shuffle order and the augmentation.
        normalize: standardise (see :meth:`normalization`) instead of [0, 1].
        augment: training-split augmentation (:func:`dnnkit.data.augment.build_augment`).
        test_size: held out of the training split when the source has no test split (a count or
            a fraction), the same samples for every ``seed``; ``None``: refuse such a source.

    Example::

        >>> class Tiny(TensorDataModule):  # a source: 60 random 8x8 images of 3 classes, no test split
        ...     name = "tiny"
        ...     def source_labels(self, split):
        ...         return torch.arange(60) % 3 if split == "train" else None
        ...     def load_source(self, split):
        ...         return torch.randint(0, 256, (60, 8, 8), dtype=torch.uint8), self.source_labels(split)
        ...     def source_class_names(self):
        ...         return ["a", "b", "c"]
        ...     def input_shape(self):
        ...         return (1, 8, 8)
        >>> dm = Tiny(batch_size=8, val_size=0.25, test_size=12, classes=[2, 0])
        >>> dm.class_names, dm.train_size()
        (['c', 'a'], 23)
        >>> dm.setup()
        tiny classes remapped: 2 (c) -> 0, 0 (a) -> 1
        tiny: 23 train, 8 val, 9 test images
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), sorted(set(y.tolist()))
        ((8, 1, 8, 8), [0, 1])
    """

    def __init__(
        self,
        batch_size: int = 200,
        eval_batch_size: int = 1000,
        val_size: int | float = 5000,
        val_split: str = "random",
        classes: Sequence[int] | None = None,
        n_per_class: int | None = None,
        seed: int = 0,
        normalize: bool = False,
        augment: Sequence | None = None,
        test_size: int | float | None = None,
    ) -> None:
        super().__init__()
        number("data.batch_size", batch_size, 1, integer=True)
        number("data.eval_batch_size", eval_batch_size, 1, integer=True)
        size_of("data.val_size", val_size, 1)
        if test_size is not None:
            size_of("data.test_size", test_size, 1)
        number("data.n_per_class", n_per_class, 1, integer=True, optional=True)
        number("data.seed", seed, 0, SEED_LIMIT, integer=True, high_open=True)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.classes, self.n_per_class, self.seed = val_size, classes, n_per_class, seed
        self.val_split = choose("val_split", val_split, ["random", "first"])
        self.normalize, self.test_size = normalize, test_size
        self.augment: BatchAugment | None = build_augment(augment)
        self._num_classes: int | None = None
        self._class_names: list[str] | None = None
        self._plan: dict[str, tuple[str, torch.Tensor, torch.Tensor]] | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stats: tuple | None = None

    # ------------------------------------------------------------------ the source (subclasses)

    def source_labels(self, split: str) -> torch.Tensor | None:
        raise NotImplementedError

    def load_source(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def source_class_names(self) -> Sequence[str]:
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    # ------------------------------------------------------------------ classes

    def check_classes(self, names: Sequence[str]) -> None:
        """``classes`` must be at least two distinct labels of the source's ``names``."""
        classes, k = self.classes, len(names)
        if classes is None:
            return
        ok = isinstance(classes, Sequence) and not isinstance(classes, str)
        if not ok or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < k for c in classes) \
                or len(set(classes)) != len(classes) or len(classes) < 2:
            listed = ", ".join(f"{i}={n}" for i, n in enumerate(names))
            raise DnnkitError(
                f"data.classes={classes!r} is invalid: give at least two distinct labels from 0..{k - 1} ({shorten(listed, 300)})"
            )

    @property
    def class_names(self) -> list[str]:
        """The names of labels ``0..num_classes-1`` (after the ``classes`` subset)."""
        if self._class_names is None:
            names = [str(n) for n in self.source_class_names()]
            self.check_classes(names)
            self._class_names = [names[c] for c in self.classes] if self.classes else names
        return self._class_names

    @class_names.setter
    def class_names(self, value: list[str]) -> None:
        self._class_names = list(value)

    @property
    def num_classes(self) -> int:
        return self._num_classes if self._num_classes is not None else len(self.class_names)

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self._num_classes = value

    def _lut(self, k: int) -> torch.Tensor | None:
        if not self.classes:
            return None
        lut = torch.full((k,), -1, dtype=torch.long)
        lut[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        return lut

    # ------------------------------------------------------------------ splits, from labels alone

    def check_labels(self, split: str, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` if each is one of the source's classes, else one error naming a bad one."""
        k = len(self.source_class_names())
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < k:
            bad = labels[(labels < 0) | (labels >= k)][0].item()
            raise DnnkitError(f"{self.name or type(self).__name__} {split} labels hold {bad}; labels must be 0..{k - 1}")
        return labels

    def plan(self) -> dict[str, tuple[str, torch.Tensor, torch.Tensor]]:
        """Per split (``train``, ``val``, ``test``): the source split it comes from, the indices
        into it and the labels (0..k-1) of the chosen samples, from :meth:`source_labels` alone."""
        if self._plan is not None:
            return self._plan
        names = [str(n) for n in self.source_class_names()]
        self.check_classes(names)
        lut = self._lut(len(names))

        def subset(source: str, idx: torch.Tensor, labels: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
            if lut is None:
                return source, idx, labels
            keep = lut[labels] >= 0
            return source, idx[keep], lut[labels[keep]]

        train = self.source_labels("train")
        if train is None:
            raise DnnkitError(f"{self.name or type(self).__name__} has no training split")
        train = self.check_labels("train", train)
        test = self.source_labels("test")
        pool = torch.arange(len(train))
        if test is None:
            if self.test_size is None:
                raise DnnkitError(
                    f"{self.name or type(self).__name__} has no test split; give one, or set data.test_size "
                    "(a count, or a fraction such as 0.2) to hold out a seeded part of the training split"
                )
            n_test = size_of("data.test_size", self.test_size, len(train))
            if not 0 < n_test < len(train):
                raise DnnkitError(f"data.test_size={self.test_size!r} holds out {n_test} of {len(train)} training samples; "
                                  f"use 1..{len(train) - 1} or a fraction in (0, 1)")
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(TEST_SEED))
            held, pool = perm[:n_test].sort().values, perm[n_test:].sort().values
            tests = subset("train", held, train[held])
        else:
            test = self.check_labels("test", test)
            tests = subset("test", torch.arange(len(test)), test)
        _, kept, labels = subset("train", pool, train[pool])
        val = self.source_labels("val")
        if val is None:
            n_val = size_of("data.val_size", self.val_size, len(labels))
            tr, va = split_indices(labels, n_val, self.n_per_class, self.seed, self.val_split)
            vals = ("train", kept[va], labels[va])
        else:
            tr, _ = split_indices(labels, 0, self.n_per_class, self.seed)
            vals = subset("val", torch.arange(len(val)), self.check_labels("val", val))
        self._plan = {"train": ("train", kept[tr], labels[tr]), "val": vals, "test": tests}
        return self._plan

    def train_size(self) -> int:
        """How many training samples :meth:`setup` will keep (after the validation split, the
        class subset and ``n_per_class``), from the labels alone: no image is read, and a split the
        data cannot give fails here as it would in :meth:`setup` (so does an augmentation the
        data's shape cannot take)."""
        if self.augment is not None:
            self.augment.check(tuple(self.input_shape()))
        return len(self.plan()["train"][1])

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        plan = self.plan()
        sources = {s: self.load_source(s) for s in SPLITS if any(src == s for src, _, _ in plan.values())}
        for split, (source, idx, labels) in plan.items():
            x = sources[source][0]
            whole = len(idx) == len(x) and bool((idx == torch.arange(len(x))).all())
            self._splits[split] = (x if whole else x.index_select(0, idx), labels)
        name = self.name or type(self).__name__
        if self.classes:
            mapping = ", ".join(f"{c} ({n}) -> {i}" for i, (c, n) in enumerate(zip(self.classes, self.class_names)))
            log.info("%s classes remapped: %s", name, mapping)
        noun = "samples" if self._splits["train"][0].dim() == 2 else "images"
        log.info("%s: %d train, %d val, %d test %s", name, *(len(self._splits[s][1]) for s in SPLITS), noun)
        if self.augment is not None:
            log.info("%s: augmenting the training split: %s", name, shorten(self.augment.specs, 200))

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples, int64 labels) of ``train``, ``val`` or ``test`` (after :meth:`setup`)."""
        if not self._splits:
            self.setup()
        return self._splits[choose("split", name, self._splits)]

    # ------------------------------------------------------------------ loaders

    def normalization(self) -> tuple | None:
        """``(mean, std)`` for ``normalize``: per channel (images scaled to [0, 1]) or per feature,
        of the training split, computed once; ``None`` without ``normalize``."""
        if not self.normalize:
            return None
        if self._stats is None:
            self._stats = channel_stats(self.split("train")[0])
            log.info("%s: normalising with the training split's mean %s, std %s", self.name or type(self).__name__,
                     shorten([round(v, 4) for v in self._stats[0].tolist()], 80),
                     shorten([round(v, 4) for v in self._stats[1].tolist()], 80))
        return self._stats

    def _trainer_attached(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def loader_options(self, split: str) -> dict:
        """The keyword arguments of :class:`TensorLoader` for ``split`` (a streaming loader takes
        the same, so it shuffles, shards and resumes alike)."""
        shuffle = split == "train"
        mean, std = self.normalization() or (None, None)
        trainer = self.trainer if self._trainer_attached() else None
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None and shuffle else (0, 1)
        augment = self.augment if shuffle else None
        if augment is not None:
            augment.check(sample_shape(self.split("train")[0]))
        return {"batch_size": self.batch_size if shuffle else self.eval_batch_size, "shuffle": shuffle, "seed": self.seed,
                "mean": mean, "std": std, "rank": rank, "world_size": world, "augment": augment}

    def make_loader(self, split: str) -> TensorLoader:
        images, labels = self.split(split)
        return TensorLoader(images, labels, **self.loader_options(split))

    def train_dataloader(self) -> TensorLoader:
        return self.make_loader("train")

    def val_dataloader(self) -> TensorLoader:
        return self.make_loader("val")

    def test_dataloader(self) -> TensorLoader:
        return self.make_loader("test")
