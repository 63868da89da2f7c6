"""Callbacks: each works on any LightningModule, keeps its state through ``ckpt_path`` resume."""

from dnnkit.callbacks.epoch_summary import EpochSummary

__all__ = ["EpochSummary"]
