"""``NonFiniteGuard``: stop (or skip the step) when the loss or a gradient becomes NaN or
infinite, and never write a checkpoint whose weights or buffers are not finite.

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
dropped (the optimizer then leaves every parameter and its state untouched) and every buffer is
put back as it was before the step's forward pass: a NaN batch has already moved batch norm's
running statistics by the time its loss is seen, and NaN statistics (finite weights, a model
that predicts one class) would otherwise go unnoticed. The guard keeps a copy of the buffers
from the start of each step for this, in one flat tensor (nine tensors, ~1,000 numbers in the
mnist_bn MLP: ~8 us to take, as much to put back), and checks the floating-point buffers in the
same pass as the gradients (~16 us more), so a buffer made non-finite by a finite loss (batch
norm's variance overflowing) drops the step too; together ~0.4% of that MLP's step on a 2-core
CPU. More than ``max_skips`` skipped steps in a row stop the run as above, and so do non-finite
weights or buffers from an earlier step, which skipping cannot repair. With ``action="stop"`` a
non-finite buffer is named like a non-finite weight (in the gradient pass with
``check_gradients``, after every step with ``check_weights``, at a bad step, and in a checkpoint).

Under DDP every rank reaches the same decision: a rank's bad flag is reduced over all ranks
before anyone acts on it. Under 16-bit mixed precision the GradScaler already skips steps with
infinite gradients (they are part of how it finds its scale), so only loss, weights and buffers
are checked there.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
from typing_extensions import override

from dnnkit.errors import DnnkitError, choose, number
from dnnkit.nn import health

log = logging.getLogger(__name__)

REMEDIES = health.REMEDIES["exploding"]  # the text GradientHealth gives for exploding gradients
_BUFFERS = "<buffers>"  # the name of a flat copy of the buffers in a check


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


def copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``targets[i].copy_(sources[i])`` for every ``i``, in one fused call where torch has one
    (on the CPU still a loop, but in C++: ~8 us for the mnist_bn MLP's nine buffers).

    Example::

        >>> a, b = [torch.zeros(2), torch.zeros((), dtype=torch.int64)], [torch.ones(2), torch.tensor(3)]
        >>> copy_into(a, b); a
        [tensor([1., 1.]), tensor(3)]
    """
    with torch.no_grad():
        if hasattr(torch, "_foreach_copy_"):
            torch._foreach_copy_(targets, sources)
        else:  # pragma: no cover - torch < 2.1
            for target, source in zip(targets, sources):
                target.copy_(source)


class FlatCopy:
    """A copy of ``tensors`` kept in one flat tensor per dtype and device: taking it or putting
    it back is one fused copy, and checking it one sum per flat tensor instead of one per tensor
    (batch norm's buffers are many small tensors: per-tensor calls would dominate).

    Example::

        >>> buffers = [torch.zeros(3), torch.ones(2), torch.tensor(0)]
        >>> copy = FlatCopy(buffers); copy.take()
        >>> _ = buffers[0].fill_(float("nan")); _ = buffers[2].add_(1); copy.restore(); buffers
        [tensor([0., 0., 0.]), tensor([1., 1.]), tensor(0)]
    """

    def __init__(self, tensors) -> None:
        self.tensors = list(tensors)
        sizes: dict[tuple[torch.dtype, torch.device], int] = {}
        for t in self.tensors:
            sizes[(t.dtype, t.device)] = sizes.get((t.dtype, t.device), 0) + t.numel()
        self.flats = {key: torch.empty(n, dtype=key[0], device=key[1]) for key, n in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        self.views = []
        for t in self.tensors:
            key, start = (t.dtype, t.device), offsets[(t.dtype, t.device)]
            self.views.append(self.flats[key][start : start + t.numel()].view(t.shape))
            offsets[key] = start + t.numel()

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def take(self) -> None:
        copy_into(self.views, self.tensors)

    def restore(self) -> None:
        copy_into(self.tensors, self.views)

    def floating(self) -> list[torch.Tensor]:
        """The flat tensors that can hold a NaN or an infinity."""
        return [flat for (dtype, _), flat in self.flats.items() if dtype.is_floating_point or dtype.is_complex]


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

        >>> import functools, tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> trainer = L.Trainer(max_epochs=2, callbacks=[NonFiniteGuard()], logger=False, enable_progress_bar=False,  # any LightningModule
        ...                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())
        >>> too_fast = functools.partial(torch.optim.SGD, lr=float("inf"))
        >>> trainer.fit(Classifier(MLP(784, [8], 10), optimizer=too_fast), TensorLoader(x, y, 16))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        dnnkit.errors.DnnkitError: training diverged at step 0 (epoch 0): the weights of layer 'model.hidden1.linear' are no ...
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
        self._buffers: list[tuple[str, torch.Tensor]] = []  # named buffers, listed once per fit
        self._checked: list[tuple[str, torch.Tensor]] = []  # the floating-point ones: those that can go non-finite
        self._saved: FlatCopy | None = None  # with "skip": the buffers as they were before this step's forward
        self._probe: FlatCopy | None = None  # the floating-point buffers now, to check them in one sum
        self._snapshot_due = True  # the next batch starts an optimizer step (its first accumulated batch)
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

    def _bad(self, named) -> str | None:
        named = [(n, t) for n, t in named if t is not None]
        first = None if all_finite(t for _, t in named) else first_non_finite(named)
        if first == _BUFFERS:  # a flat copy: name the buffer
            return first_non_finite(self._checked) or first
        return first

    def _buffers_now(self) -> list[tuple[str, torch.Tensor]]:
        """The floating-point buffers as they are now, in one flat tensor per dtype: one sum checks them all."""
        if not self._probe:
            return []
        self._probe.take()
        return [(_BUFFERS, flat) for flat in self._probe.floating()]

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
        # Buffers too: a NaN batch's forward pass moves batch norm's running statistics before
        # any gradient exists, so dropping the step's gradients alone would leave them NaN. With
        # "skip" a copy of every buffer is kept from before each step's forward pass and put back
        # when the step is dropped; "stop" never needs one.
        self._buffers = list(pl_module.named_buffers())
        self._checked = [(n, b) for n, b in self._buffers if b.is_floating_point() or b.is_complex()]
        self._saved = FlatCopy(b for _, b in self._buffers) if self.action == "skip" and self._buffers else None
        self._probe = FlatCopy(b for _, b in self._checked) if self._checked else None
        self._snapshot_due = True
        self._scaler = getattr(trainer.precision_plugin, "scaler", None)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._loss = None  # a step whose training_step returned None has no loss: not the last one's
        if self._saved and self._snapshot_due:  # before the forward pass; once per step under gradient accumulation
            self._saved.take()
            self._snapshot_due = False

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self._snapshot_due = True  # this step's forward passes are done: the next batch starts the next step
        scaler = self._scaler
        grads = scaler is None and self.check_gradients
        if grads or self._saved:  # one pass: loss, gradients and (restorable with "skip") buffers
            first = self._bad([("loss", self._loss), *((n, p.grad) for n, p in self._params if grads), *self._buffers_now()])
        else:  # the loss alone
            first = None if self._finite_loss() else "loss"
        if not self._any_rank(trainer, first is not None):
            self._in_a_row = 0
            return
        weights = first_non_finite(self._params)
        if self._any_rank(trainer, weights is not None):  # the previous step made them so; skipping can't repair that
            self._state_fail(trainer, weights)
        layer = None if scaler is not None else first_non_finite((n, p.grad) for n, p in self._params)
        where = f"gradients first non-finite in layer {layer_of(layer)!r} ({layer})" if layer else (
            "gradients finite on this rank" if scaler is None else "gradients left to the AMP GradScaler"
        )
        what = f"the loss is {self._loss_value()} and {where}"
        buffer = first_non_finite(self._checked)  # most likely moved by this step's forward pass (a NaN batch)
        if buffer is not None:
            what += f"; buffer {buffer!r} non-finite"
        if self.action == "stop":
            self._fail(trainer, what)
        self._in_a_row += 1
        self.skipped += 1
        if self._in_a_row > self.max_skips:
            self._fail(trainer, f"{self._in_a_row} bad steps in a row (max_skips={self.max_skips}); last: {what}")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers leave parameters without a gradient (and their state) alone
        if self._saved:  # and the buffers as they were before this step's forward pass
            self._saved.restore()
            if buffer is not None:
                what += " (restored)"
            stale = first_non_finite(self._checked)
            if self._any_rank(trainer, stale is not None):  # non-finite before this step: skipping can't repair that
                self._state_fail(trainer, stale)
        if trainer.is_global_zero:
            log.warning("%s", f"NonFiniteGuard: step {trainer.global_step} skipped: {what}")

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.check_weights:
            name = self._bad([*self._params, *self._buffers_now()])
            if self._any_rank(trainer, name is not None):
                self._state_fail(trainer, name)

    def _state_fail(self, trainer: L.Trainer, name: str | None) -> None:
        """Weights or buffers that a step made non-finite: a buffer is named like a layer's weights."""
        if name is not None and any(name == n for n, _ in self._buffers):
            what = f"the buffer {name!r} of layer {layer_of(name)!r} is no longer finite after the step"
        else:  # None: non-finite on another rank only
            what = f"the weights of layer {layer_of(name) if name else '?'!r} are no longer finite after the optimizer step"
        self._fail(trainer, f"{what} (loss {self._loss_value()})", step=max(trainer.global_step - 1, 0))  # the step that made them so

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # raising here keeps the file from being written: last.ckpt keeps the last good weights
        name = first_non_finite(checkpoint.get("state_dict", {}).items())
        if name is not None:  # the last optimizer step made them so
            kind = "a non-finite buffer" if any(name == n for n, _ in pl_module.named_buffers()) else "non-finite weights"
            self._fail(trainer, f"refusing to write a checkpoint with {kind} ({name})", step=max(trainer.global_step - 1, 0))

    @override
    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self._in_a_row}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self._in_a_row = state_dict.get("in_a_row", 0)
