"""``NonFiniteGuard``: stop (or skip the step) when the loss or a gradient becomes NaN or
infinite, and never write a checkpoint whose weights are not finite.

A diverging run otherwise trains on for hours on NaN weights, and its ``last.ckpt`` is
overwritten with them. The guard looks at each training step once, in
``on_before_optimizer_step``, before the optimizer turns the gradients into weights: at the
loss, and with ``action="skip"`` (or ``check_gradients=True``) at the gradients too (already
all-reduced under DDP, unscaled under AMP), in one pass with one host synchronisation.
Weights that went non-finite (a finite gradient times a huge learning rate, or an unchecked
non-finite gradient) make the next step's loss non-finite; the guard then names the layer
whose weights went bad and the step that made them so. ``check_weights=True`` checks the
weights after every step instead (one more pass over them). A checkpoint with non-finite
weights is never written. Looking at the loss alone costs next to nothing; a pass over the
gradients costs ~2% of the mnist_bn MLP's step on a 2-core CPU.

With ``action="stop"`` the first bad step raises :class:`~dnnkit.errors.DnnkitError` naming the
step, the loss, the first layer (in the model's order) whose gradients are not finite, and the
usual remedies; ``python -m dnnkit.train`` prints it and exits with status 2. The checkpoints
written before that step stay as they were. With ``action="skip"`` the step's gradients are
dropped (the optimizer then leaves every parameter and its state untouched) and training goes
on; more than ``max_skips`` skipped steps in a row stop the run as above, and so do non-finite
weights, which skipping cannot repair.

Under DDP every rank reaches the same decision: a rank's bad flag is reduced over all ranks
before anyone acts on it. Under 16-bit mixed precision the GradScaler already skips steps with
infinite gradients (they are part of how it finds its scale), so only loss and weights are
checked there.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from typing_extensions import override

from dnnkit.errors import DnnkitError, choose, number
from dnnkit.nn import health

REMEDIES = health.REMEDIES["exploding"]  # the text GradientHealth gives for exploding gradients


def all_finite(tensors) -> bool:
    """True when no tensor holds a NaN or an infinity: one cheap pass (a sum per tensor, one
    host sync), ~15x faster than ``isfinite().all()`` per tensor. A sum can also overflow on
    huge finite values; callers confirm a ``False`` with :func:`first_non_finite`.

    Example::

        >>> all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
        False
    """
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors if t is not None]
    return not sums or bool(torch.stack(sums).isfinite().all())


def first_non_finite(named_tensors) -> str | None:
    """Name of the first tensor that holds a NaN or an infinity, else ``None``.

    Example::

        >>> first_non_finite([("a", torch.ones(2)), ("b", torch.tensor([1.0, float("nan")]))])
        'b'
    """
    for name, t in named_tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            return name
    return None


def layer_of(param_name: str) -> str:
    """``model.hidden2.linear.weight`` -> ``model.hidden2.linear``."""
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


class NonFiniteGuard(L.Callback):
    """Stop or skip training steps whose loss or gradients are not finite.

    Args:
        action: ``"stop"`` raises a :class:`DnnkitError` at the first bad step; ``"skip"`` drops
            the step's gradients so the optimizer does nothing, and carries on.
        max_skips: with ``"skip"``, stop anyway after this many bad steps in a row.
        check_gradients: check the gradients before every optimizer step (``None``: with
            ``action="skip"`` only, which must drop bad gradients before they reach the weights).
        check_weights: also check the weights after every step (one more pass over them);
            otherwise they are checked when a loss or gradient is not finite.

    Example::

        trainer = Trainer(callbacks=[NonFiniteGuard()])    # any LightningModule
        trainer.fit(model, dm)   # DnnkitError: step 17: the loss is nan; gradients first non-finite in ...
    """

    def __init__(
        self, action: str = "stop", max_skips: int = 10, check_gradients: bool | None = None, check_weights: bool = False
    ) -> None:
        self.action = choose("non-finite action", action, ["stop", "skip"])
        number("max_skips", max_skips, 1, integer=True)
        self.max_skips = max_skips
        self.check_gradients = action == "skip" if check_gradients is None else check_gradients
        self.check_weights = check_weights
        self.skipped = 0  # bad steps skipped in total
        self._in_a_row = 0
        self._loss: torch.Tensor | None = None
        self._params: list[tuple[str, torch.nn.Parameter]] = []  # named parameters, listed once per fit
        self._scaler = None  # the AMP GradScaler, if any

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _any_rank(trainer: L.Trainer, flag: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def _fail(self, trainer: L.Trainer, what: str, step: int | None = None) -> None:
        step = trainer.global_step if step is None else step  # 0-based index of the bad optimizer step
        raise DnnkitError(
            f"training diverged at step {step} (epoch {trainer.current_epoch}): {what}; "
            f"the checkpoints written before this step are kept. Remedies: {REMEDIES}"
        )

    @staticmethod
    def _bad(named) -> str | None:
        named = [(n, t) for n, t in named if t is not None]
        return None if all_finite(t for _, t in named) else first_non_finite(named)

    def _finite_loss(self) -> bool:
        loss = self._loss  # a scalar is read as a number: `isfinite` on a tensor takes several ops
        return loss is None or (math.isfinite(loss.item()) if loss.numel() == 1 else bool(loss.isfinite().all()))

    def _loss_value(self) -> float:
        return float(self._loss) if self._loss is not None else math.nan

    # ------------------------------------------------------------------ hooks

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # `named_parameters()` walks the module tree (~50 us for a small MLP): once per fit, not
        # every step (the optimizer holds these same tensors for the whole fit). Not at epoch
        # start: Lightning skips `on_train_epoch_start` when it resumes mid-epoch.
        self._params = list(pl_module.named_parameters())
        self._scaler = getattr(trainer.precision_plugin, "scaler", None)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._loss = None  # a step whose training_step returned None has no loss: not the last one's

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        scaler = self._scaler
        if scaler is None and self.check_gradients:
            first = self._bad([("loss", self._loss), *((n, p.grad) for n, p in self._params)])
        else:  # the loss alone
            first = None if self._finite_loss() else "loss"
        if not self._any_rank(trainer, first is not None):
            self._in_a_row = 0
            return
        weights = first_non_finite(self._params)
        if self._any_rank(trainer, weights is not None):  # the previous step made them so; skipping can't repair that
            self._weights_fail(trainer, weights)
        layer = None if scaler is not None else first_non_finite((n, p.grad) for n, p in self._params)
        where = f"gradients first non-finite in layer {layer_of(layer)!r} ({layer})" if layer else (
            "gradients finite on this rank" if scaler is None else "gradients left to the AMP GradScaler"
        )
        what = f"the loss is {self._loss_value()} and {where}"
        if self.action == "stop":
            self._fail(trainer, what)
        self._in_a_row += 1
        self.skipped += 1
        if self._in_a_row > self.max_skips:
            self._fail(trainer, f"{self._in_a_row} bad steps in a row (max_skips={self.max_skips}); last: {what}")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers leave parameters without a gradient (and their state) alone
        pl_module.print(f"NonFiniteGuard: step {trainer.global_step} skipped: {what}")

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.check_weights:
            name = self._bad(self._params)
            if self._any_rank(trainer, name is not None):
                self._weights_fail(trainer, name)

    def _weights_fail(self, trainer: L.Trainer, name: str | None) -> None:
        layer = layer_of(name) if name else "?"
        what = f"the weights of layer {layer!r} are no longer finite after the optimizer step (loss {self._loss_value()})"
        self._fail(trainer, what, step=max(trainer.global_step - 1, 0))  # the step that made them so

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # raising here keeps the file from being written: last.ckpt keeps the last good weights
        name = first_non_finite(checkpoint.get("state_dict", {}).items())
        if name is not None:  # the last optimizer step made them so
            self._fail(trainer, f"refusing to write a checkpoint with non-finite weights ({name})", step=max(trainer.global_step - 1, 0))

    @override
    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self._in_a_row}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self._in_a_row = state_dict.get("in_a_row", 0)
