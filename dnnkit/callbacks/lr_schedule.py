"""``LearningRateSchedule``: drive the learning rate of any module's optimizers from a schedule."""

from __future__ import annotations

import lightning as L
from typing_extensions import override

from dnnkit.schedules import Schedule, check_interval, check_schedule


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
        schedule: a :class:`dnnkit.schedules.Schedule` (``PiecewiseConstant``, ``Exponential``, ``Power``).
        interval: ``"step"`` counts optimizer steps, ``"epoch"`` counts epochs.

    Example::

        from dnnkit.schedules import Exponential
        trainer = L.Trainer(callbacks=[LearningRateSchedule(Exponential(s=20), interval="epoch")])
        trainer.fit(my_module, datamodule)   # my_module.configure_optimizers returns any optimizer
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
