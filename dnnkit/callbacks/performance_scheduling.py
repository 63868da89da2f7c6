"""``PerformanceScheduling``: cut the learning rate when a validation metric stops improving.

The book's performance scheduling (Keras ``ReduceLROnPlateau(factor=0.5, patience=5)``) as a
callback that works on any LightningModule and with any optimizer, including param groups
added after training started (unfreezing adds them; Lightning issue 8720 reports PyTorch's
``ReduceLROnPlateau`` failing there, since it fixes the number of groups when built).

Patience counts as in Keras: the rate is cut after ``patience`` evaluations in a row without
improvement (PyTorch's ``ReduceLROnPlateau`` waits for ``patience + 1``). Cooldown counts as in
PyTorch: the ``cooldown`` evaluations after a cut are not counted as bad, so the next cut comes
``cooldown + patience`` evaluations later at the earliest. Keras's ``cooldown=c`` leaves only
``c - 1`` evaluations uncounted (for c >= 1: it counts down before it checks).
"""

from __future__ import annotations

import logging
import math

import lightning as L
from typing_extensions import override

from dnnkit.errors import DnnkitError, choose, number

log = logging.getLogger(__name__)


class Plateau:
    """The counting, without Lightning: feed one value per evaluation to :meth:`update`; it
    returns True when the rate should be cut now.

    Example::

        >>> p = Plateau(mode="min", patience=2)
        >>> [p.update(v) for v in [1.0, 0.9, 0.95, 0.92, 0.91, 0.93]]
        [False, False, False, True, False, True]
        >>> p = Plateau(mode="min", patience=2, cooldown=2)  # 2 uncounted, then 2 bad: 4 after a cut
        >>> [p.update(1.0) for _ in range(8)]
        [False, False, True, False, False, False, True, False]
    """

    def __init__(
        self, mode: str = "min", patience: int = 5, threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0
    ) -> None:
        self.mode = choose("mode", mode, ["min", "max"])
        self.threshold_mode = choose("threshold_mode", threshold_mode, ["rel", "abs"])
        number("patience", patience, 1, integer=True)
        number("cooldown", cooldown, 0, integer=True)
        number("threshold", threshold, 0)
        self.patience, self.threshold, self.cooldown = patience, float(threshold), cooldown
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad = 0  # evaluations in a row without improvement (outside cooldown)
        self.cooldown_left = 0

    def improved(self, value: float) -> bool:
        """Better than the best by more than the threshold (relative or absolute), as in PyTorch."""
        if math.isinf(self.best):
            return not math.isnan(value)
        margin = self.threshold * abs(self.best) if self.threshold_mode == "rel" else self.threshold
        return value < self.best - margin if self.mode == "min" else value > self.best + margin

    def update(self, value: float) -> bool:
        if self.improved(value):
            self.best, self.num_bad = value, 0
        elif self.cooldown_left == 0:  # the `cooldown` evaluations after a cut don't count
            self.num_bad += 1
        self.cooldown_left = max(self.cooldown_left - 1, 0)
        if self.num_bad < self.patience:
            return False
        self.num_bad, self.cooldown_left = 0, self.cooldown
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "num_bad": self.num_bad, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.num_bad, self.cooldown_left = float(state["best"]), int(state["num_bad"]), int(state["cooldown_left"])


def reduce_lr(optimizers, factor: float, min_lr: float) -> list[list[float]]:
    """Multiply every param group's rate by ``factor``, not below ``min_lr``; ``(old, new)`` per group."""
    changes = []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            old = float(group["lr"])
            new = max(old * factor, min_lr) if old > min_lr else old
            group["lr"] = new
            changes.append([old, new])
    return changes


class PerformanceScheduling(L.Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` evaluations (validation runs), e.g. the book's ``factor=0.5, patience=5``.

    Reads ``trainer.callback_metrics`` after each validation run (not the sanity check); log the
    monitored metric with ``sync_dist=True`` under DDP, and the value rank 0 sees is broadcast
    so that every process takes the same decision. Every param group of every optimizer is
    cut, those added during training too. Logs ``lr`` (first group; ``lr/groupN`` for others)
    each epoch and ``lr/reductions``, and writes a line to the log at each cut. Its counters
    are saved in checkpoints, so a fit resumed mid-plateau continues the count. Don't combine it
    with a scheduler that sets the rate itself every step or epoch: that would undo the cuts.

    Args:
        monitor: any logged key, e.g. ``val/loss`` or ``val/acc``.
        mode: ``min`` (loss) or ``max`` (accuracy).
        factor: multiplies the rate at each cut, in (0, 1).
        patience: evaluations without improvement before a cut.
        threshold: improvement smaller than this does not count (relative to the best
            value with ``threshold_mode="rel"``, absolute with ``"abs"``).
        cooldown: evaluations after a cut that are not counted as bad (PyTorch's meaning; Keras's
            ``cooldown=c`` skips ``c - 1``). An improvement during them still sets a new best.
        min_lr: no group's rate is cut below this.

    Example::

        >>> import functools, tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> cut = PerformanceScheduling("val/loss", factor=0.5, patience=2)
        >>> trainer = L.Trainer(max_epochs=4, callbacks=[cut], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())
        >>> stuck = functools.partial(torch.optim.SGD, lr=1e-9)   # val/loss cannot improve by the threshold
        >>> trainer.fit(Classifier(MLP(784, [8], 10), optimizer=stuck), TensorLoader(x, y, 16), TensorLoader(x, y, 64))
        ... # doctest: +ELLIPSIS
        PerformanceScheduling: val/loss has not improved on ... for 2 evaluations; lr 1e-09 -> 5e-10
        >>> [r["epoch"] for r in cut.reductions], trainer.optimizers[0].param_groups[0]["lr"]
        ([2], 5e-10)
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        mode: str = "min",
        factor: float = 0.5,
        patience: int = 5,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise DnnkitError(f"monitor must be a logged metric key such as 'val/loss', got {monitor!r}")
        number("factor", factor, 0, 1, low_open=True, high_open=True)
        number("min_lr", min_lr, 0)
        self.monitor, self.factor, self.min_lr = monitor, float(factor), float(min_lr)
        self.plateau = Plateau(mode, patience, threshold, threshold_mode, cooldown)
        self.evaluations = 0
        self.reductions: list[dict] = []  # {"evaluation", "step", "epoch", "lr": [(old, new), ...]}

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = sorted(trainer.callback_metrics)
            raise DnnkitError(
                f"PerformanceScheduling monitors {self.monitor!r}, which was never logged; logged keys: "
                + (", ".join(logged) if logged else "none (log one with self.log in validation_step)")
            )
        # DDP: every rank takes rank 0's value, so the cut happens everywhere or nowhere
        value = float(trainer.strategy.broadcast(float(value), src=0))
        self.evaluations += 1
        if self.plateau.update(value):
            changes = reduce_lr(trainer.optimizers, self.factor, self.min_lr)
            self.reductions.append(
                {"evaluation": self.evaluations, "step": trainer.global_step, "epoch": trainer.current_epoch, "lr": changes}
            )
            if trainer.is_global_zero:
                log.info(
                    "PerformanceScheduling: %s has not improved on %.6g for %d evaluations; lr %s",
                    self.monitor, self.plateau.best, self.plateau.patience,
                    ", ".join(f"{old:.3g} -> {new:.3g}" for old, new in changes),
                )

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        metrics = {("lr" if i == 0 else f"lr/group{i}"): float(lr) for i, lr in enumerate(lrs)}
        metrics["lr/reductions"] = float(len(self.reductions))
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=False, on_epoch=True)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.evaluations == 0 and trainer.is_global_zero:
            log.warning("PerformanceScheduling never ran: no validation happened during fit (it acts after each validation run)")

    @override
    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict(), "evaluations": self.evaluations, "reductions": self.reductions}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.plateau.load_state_dict(state_dict["plateau"])
        self.evaluations = int(state_dict.get("evaluations", 0))
        self.reductions = list(state_dict.get("reductions", []))
