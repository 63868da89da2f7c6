"""Diagnose vanishing and exploding gradients and dying or saturated units, per named layer.

Every ``every_n_steps`` optimizer steps :class:`GradientHealth` records for each watched layer
the gradient norm, the update-to-weight ratio ``||W_after - W_before|| / ||W_before||`` of that
step, and the statistics of the layer's activation (mean, std, the share of saturated units
for sigmoid/tanh, the share of dead units for the ReLU family), read by forward hooks that
exist only during sampled steps. At the end of fit it prints a one-screen summary with a
diagnosis in plain words (:func:`~dnnkit.nn.health.diagnose`), and saves ``gradient_health.png``
(per-layer gradient norms and update ratios over training) and ``gradient_health.json`` in the
run folder.

The statistics, the diagnosis and its thresholds are plain PyTorch in :mod:`dnnkit.nn.health`
(usable without a Trainer), the plot is :func:`dnnkit.plots.save_health_plot`; this callback
holds the hooks, the sampling and the history. Which layers and which activations: see
:func:`~dnnkit.nn.health.find_layers` and :func:`~dnnkit.nn.health.find_activations`.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from typing_extensions import override

from dnnkit.errors import number
from dnnkit.io import atomic_write
from dnnkit.nn.health import (
    REMEDIES,
    Finding,
    Thresholds,
    activation_stats,
    diagnose,
    find_activations,
    find_layers,
    layer_grad_norms,
    no_grad_layers,
    record_metrics,
    short_names,
    snapshot,
    summary,
    update_ratios,
)
from dnnkit.plots import save_health_plot

log = logging.getLogger(__name__)

__all__ = [  # the helpers stay importable from here, where they lived before dnnkit.nn.health
    "REMEDIES",
    "Finding",
    "GradientHealth",
    "Thresholds",
    "activation_stats",
    "diagnose",
    "find_activations",
    "find_layers",
    "short_names",
    "summary",
]


class GradientHealth(L.Callback):
    """Watch per-layer gradients and activations during training and diagnose them at the end.

    Works on any LightningModule (see the module docstring for which layers it watches). It
    logs, at the end of each epoch, the means over that epoch's samples of ``grad/<layer>`` (gradient norm),
    ``grad/<layer>_over_top`` (that norm over the top layer's), ``update/<layer>`` (update to
    weight ratio) and ``act/<layer>_saturated`` / ``act/<layer>_dead``, so a recipe's table can
    show them (``report.metrics``). Its history is saved in checkpoints: a resumed run keeps
    the whole picture. Under DDP, gradients are the same on every process after the all-reduce;
    activations are those of process 0, which prints and saves the report.

    Args:
        every_n_steps: sample every this many optimizer steps (and the first).
        layers: a regex selecting the layers to watch (``"hidden[1-5]|output"``); ``None``:
            ``hidden1..N``/``output``, else all Linear/Conv layers.
        vanishing_ratio, sustained, explode_growth, dead_share, saturated_share: the
            thresholds of the diagnosis (:class:`~dnnkit.nn.health.Thresholds`).
        log_metrics: log the per-layer metrics (the history is kept either way).
        plot: save ``gradient_health.png`` at the end of fit.
        verbose: print the summary at the end of fit.

    Example::

        >>> health = GradientHealth(every_n_steps=25)
        >>> trainer = L.Trainer(callbacks=[health], max_epochs=3)     # doctest: +SKIP
        >>> trainer.fit(model, datamodule)                            # doctest: +SKIP
        >>> [f.problem for f in health.findings]                      # doctest: +SKIP
        ['vanishing']
    """

    def __init__(
        self,
        every_n_steps: int = 25,
        layers: str | None = None,
        vanishing_ratio: float = 1e-2,
        sustained: float = 0.75,
        explode_growth: float = 100.0,
        dead_share: float = 0.5,
        saturated_share: float = 0.5,
        log_metrics: bool = True,
        plot: bool = True,
        verbose: bool = True,
    ) -> None:
        number("GradientHealth every_n_steps", every_n_steps, 1, integer=True)
        self.thresholds = Thresholds(vanishing_ratio=vanishing_ratio, sustained=sustained, explode_growth=explode_growth,
                                     dead_share=dead_share, saturated_share=saturated_share)
        if layers is not None:
            from dnnkit.nn.select import compile_pattern

            compile_pattern(layers)
        self.every_n_steps = every_n_steps
        self.layers = layers
        self.log_metrics, self.plot, self.verbose = log_metrics, plot, verbose
        self.history: list[dict] = []
        self.findings: list[Finding] = []
        self._watched: dict[str, nn.Module] = {}
        self._names: dict[str, str] = {}
        self._activations: dict[str, nn.Module] = {}
        self._hooks: list = []
        self._act: dict[str, dict[str, torch.Tensor]] = {}
        self._grad: dict[str, float] | None = None
        self._no_grad: list[str] = []
        self._before: dict[str, list[torch.Tensor]] = {}
        self._epoch: dict[str, list[float]] = {}
        self._sample = False

    # -- setup
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._watched = find_layers(pl_module, self.layers)
        self._names = short_names(list(self._watched))
        self._activations = find_activations(pl_module, self._watched)

    # -- activations: hooks only during sampled steps
    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._sample = trainer.global_step % self.every_n_steps == 0  # global_step is not free: read it once
        if not self._sample or self._hooks:
            return
        for name, layer in self._watched.items():
            act = self._activations.get(name)
            target = act if act is not None else layer
            self._hooks.append(target.register_forward_hook(self._hook(name, act)))

    def _hook(self, name: str, act: nn.Module | None):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                self._act[name] = activation_stats(output, act)
        return hook

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- gradients and the weights before the step
    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self._sample:
            return
        self._grad = layer_grad_norms(self._watched)
        self._no_grad = no_grad_layers(self._watched)
        self._before = snapshot(self._watched)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._remove_hooks()
        if self._grad is None:  # not sampled, or gradient accumulation has not stepped yet
            return
        update = update_ratios(self._watched, self._before)
        act = {n: {k: float(v) for k, v in s.items()} for n, s in self._act.items()}
        record = {
            "step": trainer.global_step,
            "grad": {self._names[n]: v for n, v in self._grad.items()},
            "update": {self._names[n]: v for n, v in update.items()},
            "act": {self._names[n]: v for n, v in act.items()},
            "no_grad": [self._names[n] for n in self._no_grad],
        }
        self.history.append(record)
        self._grad, self._before, self._act = None, {}, {}
        if self.log_metrics:
            for key, value in self.metrics(record).items():
                self._epoch.setdefault(key, []).append(value)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # one log call per epoch: Lightning's log costs ~1 ms per key, too much at every sample
        if self.log_metrics and self._epoch:
            pl_module.log_dict({k: statistics.fmean(v) for k, v in self._epoch.items()}, on_step=False, on_epoch=True)
        self._epoch = {}

    #: The logged keys of one sample: ``grad/hidden1``, ``grad/hidden1_over_top``, ...
    metrics = staticmethod(record_metrics)

    # -- the report
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        self.findings = diagnose(self.history, self.thresholds)
        self._report(trainer)

    @rank_zero_only
    def _report(self, trainer: L.Trainer) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir) if trainer.logger else Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / "gradient_health.json", json.dumps(
            {"every_n_steps": self.every_n_steps, "findings": [asdict(f) for f in self.findings], "history": self.history}, indent=1))
        if self.plot and self.history:
            save_health_plot(self.history, folder / "gradient_health.png", self.findings)
        if self.verbose:
            log.info("%s", summary(self.history, self.findings, self.every_n_steps))  # rank 0 only (_report)

    @override
    def state_dict(self) -> dict:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
