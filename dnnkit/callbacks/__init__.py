"""Callbacks: each works on any LightningModule, keeps its state through ``ckpt_path`` resume."""

from dnnkit.callbacks.epoch_summary import EpochSummary
from dnnkit.callbacks.last_checkpoint import LastCheckpoint
from dnnkit.callbacks.non_finite import NonFiniteGuard
from dnnkit.callbacks.rng_state import RNGState

__all__ = ["EpochSummary", "LastCheckpoint", "NonFiniteGuard", "RNGState"]
