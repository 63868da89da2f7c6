"""A batch loader that cuts batches straight from in-memory tensors.

Lightning over torchvision's PIL-based MNIST calls ``__getitem__`` 55,000 times an epoch and
collates one-image tensors: on a 2-core CPU that ran 3.8x slower than a hand-written loop
over tensors, and a ``TensorDataset`` in a ``DataLoader`` 1.45x slower. This loader indexes a
whole batch at once (one gather), converts uint8 to float32 on the fly and does nothing else.

The shuffle order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
batches as one that was never interrupted; ``state_dict`` records how far into the epoch it
got, and under DDP each rank takes every ``world_size``-th batch of the same order. With an
``augment`` (training split only), batch ``b`` of epoch ``e`` is augmented with a generator
seeded by ``(seed, e, b)`` alone (:func:`dnnkit.data.augment.batch_generator`), so a resumed run
sees the same augmented batches too.

Samples may be uint8 images (scaled to [0, 1]), float32 images already in [0, 1], or float32
feature vectors (N, F), served as they are; ``mean``/``std`` are numbers or one per channel
(images) or feature (vectors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dnnkit.data.augment import batch_generator
from dnnkit.errors import DnnkitError, number


class _EpochSampler:
    """Lightning calls ``dataloader.sampler.set_epoch(epoch)`` at each epoch start."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorLoader:
    """Iterate ``(x, y)`` batches of ``images`` (uint8, N x H x W) scaled to [0, 1].

    Args:
        images: uint8 tensor (N, H, W) or (N, C, H, W); batches come out float32 (B, C, H, W).
            A float tensor (N, C, H, W) is taken as scaled already; a 2-D one (N, F) as
            feature vectors, batches (B, F).
        labels: int64 tensor (N,).
        batch_size: samples per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: a new order each epoch, drawn from ``(seed, epoch)``.
        mean, std: standardise after scaling (``None``: keep [0, 1]); numbers, or a sequence
            or tensor of one per channel (per feature for vectors).
        augment: ``augment(x, generator)`` on each float batch before standardising
            (:class:`dnnkit.data.augment.BatchAugment`).

    Example::

        >>> x = torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8)
        >>> loader = TensorLoader(x, torch.arange(10), batch_size=4)
        >>> [tuple(b[0].shape) for b in loader]
        [(4, 1, 28, 28), (4, 1, 28, 28), (2, 1, 28, 28)]
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        mean: float | None = None,
        std: float | None = None,
        rank: int = 0,
        world_size: int = 1,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> None:
        number("batch_size", batch_size, 1, integer=True)
        number("seed", seed, 0, integer=True)
        number("world_size", world_size, 1, integer=True)
        number("rank", rank, 0, world_size, integer=True, high_open=True)
        if len(images) != len(labels):
            raise DnnkitError(f"{len(images)} images but {len(labels)} labels")
        self.images = images.unsqueeze(1) if images.dim() == 3 else images
        self.labels = labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.augment = augment
        self.base = 1.0 / 255.0 if images.dtype == torch.uint8 else 1.0  # to [0, 1]
        mean, std = _per_channel(mean, self.images), _per_channel(std, self.images)
        # 1 / (255 std) as one number, as before: the same floats as the runs in docs/RESULTS.md
        self.scale = self.base if std is None else 1.0 / (255.0 * std) if images.dtype == torch.uint8 else 1.0 / std
        self.shift = 0.0 if mean is None else mean / (1.0 if std is None else std)
        self.mean, self.std = mean, std
        self.rank, self.world_size = rank, world_size
        self.sampler = _EpochSampler()
        self.batch_sampler = None  # Lightning inspects DataLoader-like attributes
        self._resume: tuple[int, int] | None = None  # (epoch, batches served) of the checkpoint we resume from
        self._served = 0
        total = self._num_batches_total()
        if world_size > 1 and total < world_size:  # a rank without a batch trains 0 epochs, silently
            n = len(labels)
            fix = f"use batch_size <= {n // world_size}" if n >= world_size else f"use at most {n} ranks"
            raise DnnkitError(
                f"{n} samples in batches of {batch_size} are {total} batch{'' if total == 1 else 'es'} for {world_size} "
                f"ranks: 0 per rank; {fix}"
            )

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def _num_batches_total(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        # every rank gets the same number of batches, so collective ops never wait forever
        return self._num_batches_total() // self.world_size if self.world_size > 1 else self._num_batches_total()

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (identical on every rank)."""
        if not self.shuffle:
            return torch.arange(len(self.labels))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.labels), generator=g)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select gathers 200 uint8 images ~5x faster than advanced indexing (images[idx])
        x = self.images.index_select(0, idx)
        x = x.float().mul_(self.scale) if x.dtype == torch.uint8 or _nonunit(self.scale) else x.float()
        if _nonzero(self.shift):
            x = x.sub_(self.shift)
        return x, self.labels.index_select(0, idx)

    def augmented_batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch`, augmented in [0, 1] before standardising."""
        x = self.images.index_select(0, idx).float()
        if self.base != 1.0:
            x = x.mul_(self.base)
        x = self.augment(x, generator)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x, self.labels.index_select(0, idx)

    def __iter__(self):
        order = self.order(self.sampler.epoch)
        bs = self.batch_size
        # skip what the checkpoint's epoch had served; a checkpoint written after an epoch's last
        # batch resumes at the next epoch (Lightning then sets that epoch), which starts at batch 0
        resume, self._resume = self._resume, None
        skip = resume[1] if resume is not None and resume[0] == self.sampler.epoch else 0
        self._served = skip
        for i in range(skip, len(self)):
            b = self.rank + i * self.world_size
            self._served = i + 1
            idx = order[b * bs : (b + 1) * bs]
            if self.augment is None:
                yield self.batch(idx)
            else:
                yield self.augmented_batch(idx, batch_generator(self.seed, self.sampler.epoch, b))

    # Lightning saves and restores these for mid-epoch resume (the "stateful dataloader" protocol).
    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch = state["epoch"]
        self._resume = (state["epoch"], state["served"])


def _per_channel(value, images: torch.Tensor):
    """``value`` as a float (a number) or a tensor broadcasting over channel (images) or feature
    (vectors) ``dim 1`` of a batch; ``None`` stays ``None``."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        return float(t)
    if t.numel() != images.shape[1]:
        raise DnnkitError(f"{t.numel()} normalisation values for samples of {images.shape[1]} channels or features")
    return t.view(1, -1, *([1] * (images.dim() - 2)))


def _nonunit(value) -> bool:
    return isinstance(value, torch.Tensor) or value != 1.0


def _nonzero(value) -> bool:
    return isinstance(value, torch.Tensor) or bool(value)
