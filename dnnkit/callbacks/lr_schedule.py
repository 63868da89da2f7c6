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
