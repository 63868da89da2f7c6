"""Callbacks: each works on any LightningModule, keeps its state through ``ckpt_path`` resume."""

from dnnkit.callbacks.epoch_summary import EpochSummary
from dnnkit.callbacks.layer_freezing import LayerFreezing
from dnnkit.callbacks.lr_schedule import LearningRateSchedule
from dnnkit.callbacks.performance_scheduling import PerformanceScheduling

__all__ = ["EpochSummary", "LayerFreezing", "LearningRateSchedule", "PerformanceScheduling"]
