"""Callbacks: each works on any LightningModule, keeps its state through ``ckpt_path`` resume."""

from dnnkit.callbacks.checkpoint import BestCheckpoint
from dnnkit.callbacks.compile import CompileModel
from dnnkit.callbacks.epoch_summary import EpochSummary
from dnnkit.callbacks.gradient_clipping import GradientClipping
from dnnkit.callbacks.gradient_health import GradientHealth
from dnnkit.callbacks.last_checkpoint import LastCheckpoint
from dnnkit.callbacks.layer_freezing import LayerFreezing
from dnnkit.callbacks.lr_schedule import LearningRateSchedule
from dnnkit.callbacks.non_finite import NonFiniteGuard
from dnnkit.callbacks.performance_scheduling import PerformanceScheduling
from dnnkit.callbacks.progress_bar import ProgressBar
from dnnkit.callbacks.rng_state import RNGState
from dnnkit.callbacks.threads import AutoThreads

__all__ = [
    "AutoThreads",
    "BestCheckpoint",
    "CompileModel",
    "EpochSummary",
    "GradientClipping",
    "GradientHealth",
    "LastCheckpoint",
    "LayerFreezing",
    "LearningRateSchedule",
    "NonFiniteGuard",
    "PerformanceScheduling",
    "ProgressBar",
    "RNGState",
]
