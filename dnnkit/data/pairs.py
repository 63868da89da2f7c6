"""The book's "same digit or not" pairs (Hands-On ML 1e, ch. 11, exercise 10).

The MNIST training file is cut in two, once, by ``split_seed`` (whatever ``data.seed`` is, so
every stage and seed of a recipe sees the same cut): **split 2** holds ``split2_per_class``
images of each class (500: 5,000 images), **split 1** the rest (55,000). Two parts read it:

* ``part="pairs"``: the pair task. Training pairs are drawn from split 1 on the fly, half of the
  same class (label 1) and half of two different classes (label 0); the pairs of epoch ``e``
  are a pure function of ``(seed, e)`` (:func:`draw_pairs`), as :class:`~dnnkit.data.TensorLoader`'s
  shuffle order is, so a resumed epoch draws the same pairs. Validation pairs (``val_size`` of
  them) are drawn once from split 2, test pairs (as many as test images) from the test set, as
  the book measured the pair task. Batches are ``(B, 2, H, W)``.
* ``part="classifier"``: the classifier on split 2: training on its ``split2_per_class`` images
  per class, validation on the first ``val_size`` images of split 1 (the rest of the labelled
  set: disjoint from the training images), test on the test set.
"""

from __future__ import annotations

import logging

import torch
from typing_extensions import override

from dnnkit.data.datamodule import MNISTDataModule
from dnnkit.data.loader import TensorLoader
from dnnkit.errors import DnnkitError, choose, number

log = logging.getLogger(__name__)

PARTS = ("pairs", "classifier")
FIXED_PAIRS_SEED = 20_181_011  # the validation and test pairs, the same for every seed


def draw_pairs(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` pairs of indices into ``labels`` (``(n, 2)``) and their targets (1: same class, 0:
    different), ``n // 2`` of them same, in a random order; a pure function of its arguments.
    A same pair never pairs an image with itself.

    Example::

        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
        >>> pairs, same = draw_pairs(labels, 10, seed=3)
        >>> int(same.sum()), bool(((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == same.bool()).all())
        (5, True)
        >>> torch.equal(pairs, draw_pairs(labels, 10, seed=3)[0])
        True
    """
    number("pairs", n, 1, integer=True)
    classes, counts = labels.unique(return_counts=True)
    if len(classes) < 2:
        raise DnnkitError(
            f"pairs need images of at least 2 classes (a pair of different classes is half the task); "
            f"these {len(labels)} images are all of class {classes.tolist()[0] if len(classes) else None}"
        )
    if int(counts.min()) < 2:
        lonely = classes[counts < 2].tolist()
        raise DnnkitError(f"pairs need at least 2 images of each class; class {lonely[0]} has only 1")
    g = torch.Generator().manual_seed(seed)
    k = len(classes)
    cls = torch.searchsorted(classes, labels)  # class index 0..k-1 of each image
    order = torch.argsort(cls, stable=True)  # images grouped by class
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(labels)) - starts[cls[order]]  # position of each image in its class
    first = torch.randint(0, len(labels), (n,), generator=g)
    c = cls[first]
    n_same = n // 2
    same_c = c[:n_same]
    offset = 1 + (torch.rand(n_same, generator=g) * (counts[same_c] - 1)).long()  # 1..count-1: never itself
    second_same = order[starts[same_c] + (rank[first[:n_same]] + offset) % counts[same_c]]
    other = (c[n_same:] + 1 + (torch.rand(n - n_same, generator=g) * (k - 1)).long()) % k
    second_diff = order[starts[other] + (torch.rand(n - n_same, generator=g) * counts[other]).long()]
    pairs = torch.stack([first, torch.cat([second_same, second_diff])], dim=1)
    same = torch.cat([torch.ones(n_same, dtype=torch.long), torch.zeros(n - n_same, dtype=torch.long)])
    perm = torch.randperm(n, generator=g)
    return pairs[perm], same[perm]


class PairLoader(TensorLoader):
    """Batches ``(x, same)`` of image pairs, ``x`` of shape ``(B, 2, H, W)``, drawn from ``images``
    by :func:`draw_pairs`: ``n_pairs`` each epoch, new ones each epoch when ``shuffle`` (seeded by
    ``(seed, epoch)``), else one fixed set (seeded by ``seed`` alone). Resumes mid-epoch as
    :class:`~dnnkit.data.TensorLoader` does.

    Example::

        >>> images = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
        >>> loader = PairLoader(images, torch.arange(8) % 2, n_pairs=6, batch_size=4)
        >>> [(tuple(x.shape), y.tolist()) for x, y in loader][0][0]
        (4, 2, 28, 28)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n_pairs: int, **kwargs) -> None:
        self.n_pairs = number("pairs per epoch", n_pairs, 1, integer=True)
        super().__init__(images, labels, **kwargs)
        if self.augment is not None:
            raise DnnkitError("augment is not supported for image pairs; set data.augment=null")
        draw_pairs(labels, 2, 0)  # two classes of two images at least, checked now

    @property
    @override
    def dataset_size(self) -> int:
        return self.n_pairs

    @override
    def _num_batches_total(self) -> int:
        n = self.n_pairs
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def pairs(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs and targets of ``epoch`` (identical on every rank, and after a resume)."""
        seed = self.seed * 100_003 + epoch if self.shuffle else self.seed
        return draw_pairs(self.labels, self.n_pairs, seed)

    @override
    def __iter__(self):
        pairs, same = self.pairs(self.sampler.epoch)
        bs = self.batch_size
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == self.sampler.epoch else 0
        self._served = skip
        for i in range(skip, len(self)):
            b = self.rank + i * self.world_size
            self._served = i + 1
            rows = pairs[b * bs : (b + 1) * bs]
            x1, _ = self.batch(rows[:, 0])
            x2, _ = self.batch(rows[:, 1])
            yield torch.cat([x1, x2], dim=1), same[b * bs : (b + 1) * bs]


class PairsDataModule(MNISTDataModule):
    """MNIST cut into the book's split 1 (pairs) and split 2 (the small classifier); see the module docstring.

    Args:
        part: ``pairs`` (the pair task) or ``classifier`` (split 2's images and their classes).
        split2_per_class: images per class in split 2 (500: the book's 5,000).
        split_seed: fixes the cut between the splits, whatever ``seed`` is.
        pairs_per_epoch: training pairs per epoch (``None``: as many as split 1 has images).
        val_size: validation pairs (``pairs``, drawn from split 2) or images (``classifier``,
            taken from split 1).
        **kwargs: as for :class:`~dnnkit.data.MNISTDataModule` (``n_per_class`` stays ``None``).

    Example::

        >>> import tempfile
        >>> from dnnkit.data.discovery import write_example_files
        >>> root = write_example_files(tempfile.mkdtemp())  # a tiny stand-in for the four IDX files
        >>> dm = PairsDataModule(root=root, split2_per_class=5, val_size=40, batch_size=16)
        >>> dm.setup()  # doctest: +ELLIPSIS
        mnist: reading ...
        mnist: 250 train, 50 val, 100 test images
        mnist pairs (half same class): 250 train an epoch from split 1's 250 images, 40 val from split 2's 50, 100 test
        >>> x, same = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.class_names, dm.input_shape()
        ((16, 2, 28, 28), ['different', 'same'], (2, 28, 28))
        >>> clf = PairsDataModule(root=root, part="classifier", split2_per_class=5, val_size=40)
        >>> clf.setup()  # doctest: +ELLIPSIS
        mnist: 50 train, 40 val, 100 test images
    """

    def __init__(self, part: str = "pairs", split2_per_class: int = 500, split_seed: int = 0,
                 pairs_per_epoch: int | None = None, **kwargs) -> None:
        if kwargs.get("n_per_class") is not None:
            raise DnnkitError(
                f"data.n_per_class={kwargs['n_per_class']!r}: the pairs data sets split 2's size with "
                "data.split2_per_class; n_per_class must be null"
            )
        super().__init__(**kwargs)
        self.part = choose("data.part", part, PARTS)
        self.split2_per_class = number("data.split2_per_class", split2_per_class, 1, integer=True)
        self.split_seed = number("data.split_seed", split_seed, 0, integer=True)
        self.pairs_per_epoch = number("data.pairs_per_epoch", pairs_per_epoch, 1, integer=True, optional=True)
        if self.part == "pairs":
            if self.augment is not None:
                raise DnnkitError("data.augment is not supported for the pair task (part=pairs); set data.augment=null")
            self.num_classes = 2
            self.class_names = ["different", "same"]

    @override
    def input_shape(self) -> tuple[int, ...]:
        shape = super().input_shape()
        return (2, *shape[1:]) if self.part == "pairs" else shape

    def cut(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(split 1, split 2) indices into ``labels``: split 2 the first ``split2_per_class`` of each
        class in an order seeded by ``split_seed``, split 1 the rest in that order."""
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        shuffled = labels[perm]
        classes, counts = shuffled.unique(return_counts=True)
        if len(classes) < 2:
            raise DnnkitError(
                f"the pair task needs a dataset of at least 2 classes (pairs of different digits are half of it); "
                f"{self.name}'s training images are all of class {classes.tolist()[0] if len(classes) else None}"
            )
        short = classes[counts < self.split2_per_class + 2].tolist()
        if short:
            have = int(counts[classes == short[0]])
            raise DnnkitError(
                f"data.split2_per_class={self.split2_per_class} but class {short[0]} has {have} training images; "
                f"use split2_per_class <= {have - 2} (split 1 keeps at least 2 of each)"
            )
        by_class = torch.argsort(shuffled, stable=True)  # positions in perm, class by class, perm order within
        starts = torch.cumsum(counts, 0) - counts
        in2 = torch.zeros(len(labels), dtype=torch.bool)
        for s in starts.tolist():
            in2[by_class[s : s + self.split2_per_class]] = True
        return perm[~in2], perm[in2]

    @override
    def plan(self) -> dict[str, tuple[str, torch.Tensor, torch.Tensor]]:
        if self._plan is not None:
            return self._plan
        names = [str(n) for n in self.source_class_names()]
        self.check_classes(names)
        lut = self._lut(len(names))
        plan = {}
        for split in ("train", "test"):
            labels = self.check_labels(split, self.source_labels(split))
            idx = torch.arange(len(labels))
            if lut is not None:
                keep = lut[labels] >= 0
                idx, labels = idx[keep], lut[labels[keep]]
            plan[split] = (idx, labels)
        (idx, labels), (test_idx, test_labels) = plan["train"], plan["test"]
        one, two = self.cut(labels)
        n_val = number("data.val_size", self.val_size, 1 if self.part == "pairs" else 0, integer=True)
        if self.part == "classifier":
            if not 0 <= n_val < len(one):
                raise DnnkitError(f"data.val_size={self.val_size!r}: split 1 has {len(one)} images; use 0..{len(one) - 1}")
            train, val = two, one[:n_val]
        else:  # val_size pairs are drawn from split 2's images
            train, val = one, two
        self._plan = {"train": ("train", idx[train], labels[train]), "val": ("train", idx[val], labels[val]),
                      "test": ("test", test_idx, test_labels)}
        return self._plan

    @override
    def train_size(self) -> int:
        n = len(self.plan()["train"][1])
        return (self.pairs_per_epoch or n) if self.part == "pairs" else n

    @override
    def setup(self, stage: str | None = None) -> None:
        fresh = not self._splits
        super().setup(stage)
        if fresh and self.part == "pairs":
            log.info("%s pairs (half same class): %d train an epoch from split 1's %d images, %d val from split 2's %d, %d test",
                     self.name, self.pair_count("train"), len(self._splits["train"][1]), self.pair_count("val"),
                     len(self._splits["val"][1]), self.pair_count("test"))

    def pair_count(self, split: str) -> int:
        """Pairs served per epoch of ``split``: ``pairs_per_epoch`` (training), ``val_size``, one per test image."""
        n = len(self.split(split)[1])
        return {"train": self.pairs_per_epoch or n, "val": self.val_size, "test": n}[split]

    @override
    def make_loader(self, split: str) -> TensorLoader:
        if self.part != "pairs":
            return super().make_loader(split)
        images, labels = self.split(split)
        options = self.loader_options(split)
        if split != "train":
            options["seed"] = FIXED_PAIRS_SEED + ("val", "test").index(split)
        return PairLoader(images, labels, self.pair_count(split), **options)
