"""Callbacks: each works on any LightningModule, keeps its state through ``ckpt_path`` resume."""

from dnnkit.callbacks.epoch_summary import EpochSummary
from dnnkit.callbacks.gradient_clipping import GradientClipping
from dnnkit.callbacks.gradient_health import GradientHealth

__all__ = ["EpochSummary", "GradientClipping", "GradientHealth"]
