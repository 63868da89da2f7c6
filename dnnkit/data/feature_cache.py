"""Caching the frozen layers (Hands-On ML 1st ed., ch. 11): when the frozen layers form the
bottom of the network, their outputs never change, so compute them once per image and train
the upper layers on those outputs.

:class:`CachedDataModule` wraps a DataModule whose loaders are :class:`TensorLoader` s: the
first time a split is asked for it runs ``bottom`` over that split once (in order, in chunks)
and from then on serves the outputs through a :class:`FeatureLoader` that keeps the original
loader's batch size, seed and shuffle order, so a cached run sees the same batches in the same
order as an uncached one and reaches the same accuracy. An augmented training split
(``data.augment``) changes every batch, so it cannot be cached: :class:`CachedDataModule` refuses
it, and :meth:`dnnkit.callbacks.LayerFreezing.cached_datamodule` does not cache (and says why). The model must skip the cached layers
meanwhile (:func:`dnnkit.nn.freeze.skip`); :class:`dnnkit.callbacks.LayerFreezing` sets both up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning as L
import torch
from typing_extensions import override

from dnnkit.data.loader import TensorLoader
from dnnkit.errors import DnnkitError

log = logging.getLogger(__name__)


class FeatureLoader(TensorLoader):
    """A :class:`TensorLoader` over float features: batches are ``features[idx]`` as they are.

    Example::

        >>> raw = TensorLoader(torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10), 4, shuffle=True)
        >>> feats = FeatureLoader(torch.randn(10, 50), raw)
        >>> [tuple(x.shape) for x, _ in feats]
        [(4, 50), (4, 50), (2, 50)]
    """

    def __init__(self, features: torch.Tensor, like: TensorLoader) -> None:
        super().__init__(
            like.images, like.labels, like.batch_size, like.shuffle, like.seed, like.drop_last,
            rank=like.rank, world_size=like.world_size,
        )
        if len(features) != len(like.labels):
            raise DnnkitError(f"{len(features)} cached outputs for {len(like.labels)} samples")
        self.images = features

    @override
    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]


@torch.no_grad()
def compute_features(bottom: Callable[[torch.Tensor], torch.Tensor], loader: TensorLoader, chunk: int = 2000) -> torch.Tensor:
    """``bottom`` applied to every sample of ``loader`` in index order (not shuffled)."""
    n = len(loader.labels)
    return torch.cat([bottom(loader.batch(torch.arange(i, min(n, i + chunk)))[0]) for i in range(0, n, chunk)])


class CachedDataModule(L.LightningDataModule):
    """``datamodule`` with each split's samples replaced by ``bottom``'s outputs, computed once.

    Args:
        datamodule: a DataModule whose loaders are :class:`TensorLoader` s (dnnkit's are).
        bottom: maps an input batch to the frozen layers' output (no gradients).

    ``build_seconds`` sums the one-off cost of computing the cached outputs.
    """

    def __init__(self, datamodule: L.LightningDataModule, bottom: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.datamodule, self.bottom = datamodule, bottom
        self.features: dict[str, torch.Tensor] = {}
        self.build_seconds = 0.0

    @override
    def setup(self, stage: str | None = None) -> None:
        self.datamodule.trainer = self.trainer  # the inner loaders read rank / world size from it
        self.datamodule.setup(stage)

    def _cached(self, split: str, make: Callable[[], TensorLoader]) -> FeatureLoader:
        loader = make()
        if not isinstance(loader, TensorLoader):
            raise DnnkitError(f"caching frozen layers needs TensorLoader batches, {split} gives {type(loader).__name__}")
        if getattr(loader, "augment", None) is not None:
            raise DnnkitError(
                f"cannot cache the frozen layers' outputs of the {split} split: it is augmented ({loader.augment!r}), so its "
                "images change every batch; set data.augment=null or callbacks.layer_freezing.cache=false"
            )
        if split not in self.features:
            start = time.perf_counter()
            self.features[split] = compute_features(self.bottom, loader)
            seconds = time.perf_counter() - start
            self.build_seconds += seconds
            log.info("cached %s outputs of the frozen layers: %s in %.2f s", split, tuple(self.features[split].shape), seconds)
        return FeatureLoader(self.features[split], loader)

    @override
    def train_dataloader(self) -> FeatureLoader:
        return self._cached("train", self.datamodule.train_dataloader)

    @override
    def val_dataloader(self) -> FeatureLoader:
        return self._cached("val", self.datamodule.val_dataloader)

    @override
    def test_dataloader(self) -> FeatureLoader:
        return self._cached("test", self.datamodule.test_dataloader)
