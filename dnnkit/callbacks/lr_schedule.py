"""``LearningRateSchedule``: drive the learning rate of any module's optimizers from a schedule;
``LearningRateLog``: log it, per step and per epoch."""

from __future__ import annotations

import copy

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from typing_extensions import override

from dnnkit.schedules import Schedule, check_interval, check_schedule, scheduler_steps


class LearningRateSchedule(L.Callback):
    """Write ``schedule(t, lr0)`` into every param group of every optimizer before each
    optimizer step (``interval="step"``, ``t = trainer.global_step``) or at the start of each
    epoch (``interval="epoch"``, ``t = trainer.current_epoch``).

    For a LightningModule that configures its own optimizer and knows nothing of dnnkit; the
    formulas are those of :mod:`dnnkit.schedules`, so the rates equal those of the scheduler
    form (``conf/scheduler/``) step for step. Don't combine it with a scheduler that also sets
    the rate. ``lr0`` is each group's rate when the callback first sees it (a group added
    later, e.g. by unfreezing, starts from its own rate at that moment) and is saved in the
    checkpoint, so a resumed fit continues the same curve.

    Args:
        schedule: a :class:`dnnkit.schedules.Schedule` (``PiecewiseConstant``, ``Exponential``, ``Power``,
            ``WarmupCosine``, whose ``total: None`` becomes the fit's number of steps or epochs).
        interval: ``"step"`` counts optimizer steps, ``"epoch"`` counts epochs.

    Example::

        >>> import functools, tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> from dnnkit.schedules import Exponential
        >>> trainer = L.Trainer(max_epochs=3, callbacks=[LearningRateSchedule(Exponential(s=2), interval="epoch")], logger=False,
        ...                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        ...                     default_root_dir=tempfile.mkdtemp())
        >>> adam = functools.partial(torch.optim.Adam, lr=0.01)   # the module's own optimizer, any kind
        >>> trainer.fit(Classifier(MLP(784, [8], 10), optimizer=adam), TensorLoader(x, y, 16))
        >>> trainer.optimizers[0].param_groups[0]["lr"]          # 0.01 * 0.1 ** (2 / 2) in the third epoch
        0.001
    """

    def __init__(self, schedule: Schedule, interval: str = "step") -> None:
        self.schedule = check_schedule(schedule)
        self.interval = check_interval(interval)
        self.base_lrs: list[list[float]] = []  # per optimizer, per param group

    def _apply(self, trainer: L.Trainer, t: int) -> None:
        for i, optimizer in enumerate(trainer.optimizers):
            if i == len(self.base_lrs):
                self.base_lrs.append([])
            bases = self.base_lrs[i]
            for j, group in enumerate(optimizer.param_groups):
                if j == len(bases):
                    bases.append(float(group["lr"]))
                group["lr"] = self.schedule(t, bases[j])

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(self.schedule, "total", 0) is None:  # WarmupCosine(total=None): the fit's length
            self.schedule = copy.copy(self.schedule)
            self.schedule.total = scheduler_steps(trainer, self.interval)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(trainer, trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.interval == "step":
            # global_step counts optimizer steps taken; with gradient accumulation it stays
            # put until the next step, so every micro-batch sees that step's rate
            self._apply(trainer, trainer.global_step)

    @override
    def state_dict(self) -> dict:
        return {"base_lrs": [list(b) for b in self.base_lrs]}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.base_lrs = [list(b) for b in state_dict.get("base_lrs", [])]


class LearningRateLog(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (every optimizer's and param group's rate, and momentum
    or Adam's beta1 with ``log_momentum``, to the loggers: ``lr-SGD``, ``lr-SGD-momentum`` ... in
    ``metrics.csv`` at every logged step), plus ``epoch_key``: the mean rate of the epoch's
    training batches (first optimizer, first param group), logged with ``self.log`` so that it is in
    the epoch history (:class:`~dnnkit.callbacks.EpochSummary`), ``results.json`` and the plots.
    Works without a logger too (then only ``epoch_key``), and keeps its sums through a mid-epoch resume.

    Example::

        >>> import functools, tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> step = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5, interval="step")
        >>> net = Classifier(MLP(784, [8], 10), optimizer=functools.partial(torch.optim.SGD, lr=0.1), scheduler=step)
        >>> trainer = L.Trainer(max_epochs=1, callbacks=[LearningRateLog()], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(net, TensorLoader(x, y, 16))                   # 4 steps at 0.1, 0.1, 0.05, 0.05
        >>> round(float(trainer.callback_metrics["lr/epoch"]), 6)
        0.075
    """

    logged_keys = ("lr/epoch",)  # with the default epoch_key: what the preflight may accept as a monitor

    def __init__(self, logging_interval: str | None = "step", log_momentum: bool = True, log_weight_decay: bool = False,
                 epoch_key: str = "lr/epoch") -> None:
        super().__init__(logging_interval=logging_interval, log_momentum=log_momentum, log_weight_decay=log_weight_decay)
        self.epoch_key = epoch_key
        self._sum, self._n = 0.0, 0

    @override
    def on_train_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
        if not trainer.fit_loop.epoch_loop.restarting:  # a mid-epoch resume keeps the epoch's sums
            self._sum, self._n = 0.0, 0

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if trainer.optimizers:
            self._sum += float(trainer.optimizers[0].param_groups[0]["lr"])
            self._n += 1

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # logged at the epoch's last batch, before the epoch-end callbacks (EpochSummary) read the metrics
        last = trainer.is_last_batch or 0 <= trainer.max_steps <= trainer.global_step
        if last and self._n:
            pl_module.log(self.epoch_key, self._sum / self._n, on_step=False, on_epoch=True, batch_size=1)

    @override
    def state_dict(self) -> dict:
        return {"sum": self._sum, "n": self._n}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._sum, self._n = float(state_dict.get("sum", 0.0)), int(state_dict.get("n", 0))
