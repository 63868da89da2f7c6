"""``CompileModel``: train on a ``torch.compile``-d network (``compile=true|auto`` in the recipes).

A thin callback over :mod:`dnnkit.compile`: at ``setup("fit")`` it compiles the LightningModule's
``model`` (the module itself when it has none) in place, so parameters, hooks, the optimizer's
references and the ``state_dict`` keys stay as they are; at the end of fit it makes it eager
again, so testing, exporting (``model.pt``/``model.pt2``) and a later fit start from a plain
module. Only training steps run compiled (:func:`dnnkit.compile.compile_in_place`).

``compile="auto"`` times the first ``probe_steps`` training steps eager and compiles only when
the steps left x that step time x :data:`~dnnkit.compile.STEP_GAIN` exceed
:data:`~dnnkit.compile.COMPILE_SECONDS`; the decision and its figures are logged. A network that
cannot be compiled trains eager with one :class:`~dnnkit.compile.CompileFallback` warning.

In your own Trainer::

    trainer = L.Trainer(callbacks=[CompileModel()])         # or CompileModel("auto")
"""

from __future__ import annotations

import logging
import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from typing_extensions import override

from dnnkit.compile import COMPILE_SECONDS, STEP_GAIN, StepTimer, compile_choice, compile_in_place, decide, uncompile
from dnnkit.errors import number

log = logging.getLogger(__name__)


def target(pl_module: L.LightningModule) -> tuple[nn.Module, str]:
    """The network a module's steps call (``pl_module.model``, else ``pl_module``) and its name."""
    model = getattr(pl_module, "model", None)
    if isinstance(model, nn.Module):
        return model, f"{type(pl_module).__name__}.model ({type(model).__name__})"
    return pl_module, type(pl_module).__name__


class CompileModel(L.Callback):
    """Compile the network's training steps with ``torch.compile`` (see the module docstring).

    Args:
        compile: ``True``, ``"auto"`` (compile only runs long enough to gain) or ``False`` (nothing).
        backend, mode, dynamic, fullgraph: passed to ``torch.compile``.
        probe_steps: ``auto``: eager steps timed before deciding (the first is a warm-up).
        compile_seconds, gain: ``auto``'s estimates of the compile time and of the share of a
            step a compiled one saves (default: :mod:`dnnkit.compile`'s measured constants).
        verbose: log what it compiled and ``auto``'s decision.

    Example::

        >>> cb = CompileModel("auto")
        >>> cb.compile, cb.decision is None
        ('auto', True)
    """

    def __init__(self, compile: bool | str = True, backend: str = "inductor", mode: str | None = None,
                 dynamic: bool | None = None, fullgraph: bool = False, probe_steps: int = 10,
                 compile_seconds: float = COMPILE_SECONDS, gain: float = STEP_GAIN, verbose: bool = True) -> None:
        self.compile = compile_choice(compile)
        number("CompileModel probe_steps", probe_steps, 2, integer=True)
        number("CompileModel compile_seconds", compile_seconds, 0)
        number("CompileModel gain", gain, 0, 1)
        self.options = {"backend": backend, "mode": mode, "dynamic": dynamic, "fullgraph": fullgraph}
        self.probe_steps, self.compile_seconds, self.gain, self.verbose = probe_steps, compile_seconds, gain, verbose
        self.decision: str | None = None  # auto's logged sentence
        self._timer: StepTimer | None = None
        self._model: nn.Module | None = None
        #: the last fit's :class:`~dnnkit.compile.CompiledCall` (``calls``, ``failed``), ``None`` if it ran eager
        self.call = None

    def _compile(self, pl_module: L.LightningModule) -> None:
        model, name = target(pl_module)
        self._model = model
        self.call = compile_in_place(model, name, **{k: v for k, v in self.options.items() if v is not None})
        self._print(f"compile: {name} compiled ({self.options['backend']}); its first training step compiles it")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.compile is False:
            return
        self.decision, self._timer, self.call = None, None, None
        if self.compile is True:
            self._compile(pl_module)
        else:
            self._timer = StepTimer(skip=1)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._timer is not None:
            self._timer.start()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        timer = self._timer
        if timer is None:
            return
        timer.stop()
        if timer.count < self.probe_steps - 1:
            return
        self._timer = None
        total = trainer.estimated_stepping_batches
        left = math.inf if total is None or math.isinf(total) else max(0, total - trainer.global_step)
        worth, self.decision = decide(left, timer.median(), self.compile_seconds, self.gain)
        self._print(self.decision)
        if worth:
            self._compile(pl_module)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._model is not None:
            uncompile(self._model)  # testing and exporting start from a plain module
            self._model = None
        self._timer = None

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning calls no teardown after an exception

    @rank_zero_only
    def _print(self, message: str) -> None:
        if self.verbose:
            log.info("%s", message)
