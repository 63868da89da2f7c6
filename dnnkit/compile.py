"""``compile=true|auto|false``: the pure parts of dnnkit's compiled fast path (no Lightning).

* :func:`compile_choice`: the config value checked (one :class:`~dnnkit.errors.DnnkitError` line
  otherwise).
* :func:`compile_in_place`: ``torch.compile`` of a module's ``__call__`` *in place*, as
  ``nn.Module.compile()`` does, so the module keeps its identity, its parameters, its hooks and
  its ``state_dict`` keys (no ``_orig_mod.`` prefix). A call made while the module holds hooks
  that were not there when it was compiled runs eager (``GradientHealth``'s sampled steps): in
  torch 2.14 dynamo guards only on how many hooks a submodule has, so a graph traced with one
  hook closure replays that closure's side effects for the next one (a new hook's statistics
  were never recorded; tests/test_compile.py). Compiling is lazy: an error can come at the
  first compiled call (or at a recompile: a layer unfrozen, a new batch size), so the call itself
  is guarded (AOTAutograd is told to compile the backward graph then too, not at the first
  ``backward()``): a compile that fails runs that call eager and every later one too, with one warning
  (:class:`CompileFallback`) naming the reason. Only gradient-taking calls (training steps) run
  compiled: validation, test and predict loops are short, their own compile would cost more
  than it saves. A copy or a pickle of the module is eager (``copy.deepcopy`` for the export).
* :func:`decide` and :func:`break_even`: ``compile=auto`` compiles only when the steps left times
  the per-step gain outweigh the compile time; :data:`COMPILE_SECONDS` and :data:`STEP_GAIN` are
  the estimates, measured by ``python -m bench.compile`` (docs/RESULTS.md, section bench:compile).

Dynamo guards on what the graph depends on, so the other callbacks keep working without help: a
layer frozen or unfrozen (``requires_grad``), a module put in eval mode, a new batch size each
make it compile that case once and cache it (``torch._dynamo.config.recompile_limit`` cases per code object; past that, dynamo itself runs
the frame eager). Gradient clipping, ``NonFiniteGuard`` and the optimizer step run outside the
compiled call, on the gradients it produced.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
import torch._functorch.config
from torch import nn

from dnnkit.errors import DnnkitError

CHOICES = (True, False, "auto")

#: Seconds the first compiled training step costs above an eager one (Inductor, CPU), for the
#: mnist_bn network (784-300-200-10 with batch norm, batch 200): ``python -m bench.compile`` on
#: the 2-core dev machine (AMD EPYC), 2026-12-01: 12.9 s for the first compile in a process with
#: Inductor's on-disk cache as earlier runs left it (a cold cache took ~30 s there; a recompile
#: of the same graph in the process 0.4 s). ``compile=auto`` uses it for every network; a larger
#: network compiles longer, so ``auto`` leans towards eager there.
COMPILE_SECONDS = 12.9

#: The share of an eager training step a compiled one saves (CPU): ``python -m bench.compile``,
#: 2026-12-01, mnist_bn at batch 200: 0.918x the eager step (CPU 0.927x); the transfer recipe's
#: stage A at batch 32 gained nothing (1.05x), so this is the better case.
STEP_GAIN = 0.08


class CompileFallback(UserWarning):
    """A ``compile=true`` module that could not be compiled runs eager (the message says why)."""


def compile_choice(value) -> bool | str:
    """``compile``'s value: ``True``, ``False`` or ``"auto"`` (the strings ``"true"``/``"false"``
    as YAML would read them), else one :class:`~dnnkit.errors.DnnkitError` line.

    Example::

        >>> compile_choice("auto"), compile_choice(False), compile_choice("true")
        ('auto', False, True)
        >>> compile_choice("fast")
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: compile='fast' is not valid; valid: true, false, auto
    """
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        value = {"true": True, "false": False}.get(value.lower(), "auto")
    if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES):
        raise DnnkitError(f"compile={value!r} is not valid; valid: true, false, auto")
    return value


def is_compile_error(err: BaseException) -> bool:
    """Whether ``err`` comes from torch.compile's machinery (dynamo, a backend, Inductor), not
    from the model's own code."""
    from torch._dynamo.exc import TorchDynamoException

    if isinstance(err, TorchDynamoException):
        return True
    module = type(err).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch._functorch"))


def reason(err: BaseException) -> str:
    """One line naming a compile error: its type and the first line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = " ".join(lines[:2]) if lines and lines[0].endswith(":") else lines[0] if lines else ""  # "backend=... raised:" + why
    return f"{type(err).__name__}: {first[:300]}" if first else type(err).__name__


def hook_count(module: nn.Module) -> int:
    """How many forward (pre-)hooks and backward hooks ``module`` and its submodules hold."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
               for m in module.modules())


def _eager():
    """What a copied or unpickled :class:`CompiledCall` becomes: no compiled call (eager)."""
    return None


class CompiledCall:
    """The compiled ``__call__`` :func:`compile_in_place` puts on a module (see the module docstring).

    Attributes:
        failed: the one-line reason compiling failed (the module then runs eager), else ``None``.
        calls: calls that ran compiled.
    """

    def __init__(self, module: nn.Module, options: dict, name: str) -> None:
        self.module, self.name = module, name
        self.failed: str | None = None
        self.calls = self.eager_calls = 0
        self.hooks = hook_count(module)  # hooks added later (GradientHealth's sampled steps): those calls run eager
        try:
            self.compiled = torch.compile(module._call_impl, **options)
        except Exception as err:  # noqa: BLE001 - e.g. an unknown backend: eager, with the reason
            self.compiled = None
            self.fall_back(err)

    def __call__(self, *args, **kwargs):
        if self.failed is not None or not torch.is_grad_enabled() or hook_count(self.module) != self.hooks:
            self.eager_calls += 1
            return self.module._call_impl(*args, **kwargs)
        try:
            # AOTAutograd compiles the backward with the forward, so that a backward that cannot
            # compile fails here, not later in loss.backward() (by default it waits for the first
            # backward); set for this call only, torch's own setting is left as it was
            with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                out = self.compiled(*args, **kwargs)
        except Exception as err:
            if self.calls and not is_compile_error(err):
                raise  # the model's own error, after compiled calls worked: as eager would raise it
            out = self.module._call_impl(*args, **kwargs)  # eager; a bug of the model's raises here, as without compile
            self.fall_back(err)
            return out
        self.calls += 1
        return out

    def fall_back(self, err: BaseException) -> None:
        self.failed = reason(err)
        warnings.warn(f"compile: {self.name} runs eager, torch.compile failed: {self.failed}", CompileFallback, stacklevel=3)

    def __reduce__(self):  # copy.deepcopy (the export) and pickle give an eager module
        return _eager, ()


def compile_in_place(module: nn.Module, name: str | None = None, **options) -> CompiledCall:
    """Compile ``module``'s ``__call__`` in place (``options`` go to ``torch.compile``: backend,
    mode, dynamic, fullgraph); return the :class:`CompiledCall`. :func:`uncompile` undoes it.

    Example::

        >>> net = nn.Linear(4, 2)
        >>> call = compile_in_place(net, backend="eager")
        >>> net._compiled_call_impl is call, list(net.state_dict())
        (True, ['weight', 'bias'])
        >>> uncompile(net); net._compiled_call_impl is None
        True
    """
    call = CompiledCall(module, options, name or type(module).__name__)
    module._compiled_call_impl = call
    return call


def uncompile(module: nn.Module) -> None:
    """Make ``module`` eager again (after :func:`compile_in_place` or ``module.compile()``)."""
    module._compiled_call_impl = None


def compiled(module: nn.Module) -> CompiledCall | None:
    """The :class:`CompiledCall` on ``module``, or ``None``."""
    call = getattr(module, "_compiled_call_impl", None)
    return call if isinstance(call, CompiledCall) else None


def decide(steps: float, step_seconds: float, compile_seconds: float = COMPILE_SECONDS,
           gain: float = STEP_GAIN) -> tuple[bool, str]:
    """``compile=auto``: compile when ``steps`` (left to run) x ``step_seconds`` (an eager step)
    x ``gain`` (the share a compiled step saves) exceeds ``compile_seconds``; and the sentence to log.

    Example::

        >>> decide(10_000, 0.02, compile_seconds=6.0, gain=0.1)[0], decide(100, 0.02, compile_seconds=6.0, gain=0.1)[0]
        (True, False)
        >>> decide(100, 0.02, compile_seconds=6.0, gain=0.1)[1]
        'compile=auto: eager: 100 steps x 20.0 ms x 10% gain = 0.2 s saved < 6.0 s to compile (break-even 3,000 steps)'
    """
    saved = steps * step_seconds * gain
    worth = saved > compile_seconds
    even = break_even(compile_seconds, step_seconds, step_seconds * (1 - gain))
    steps_text = "unlimited" if math.isinf(steps) else f"{steps:,.0f}"
    even_text = "never" if math.isinf(even) else f"{even:,.0f} steps"
    return worth, (f"compile=auto: {'compiling' if worth else 'eager'}: {steps_text} steps x {step_seconds * 1e3:.1f} ms x "
                   f"{gain:.0%} gain = {saved:.1f} s saved {'>' if worth else '<'} {compile_seconds:.1f} s to compile "
                   f"(break-even {even_text})")


def break_even(compile_seconds: float, eager_step: float, compiled_step: float) -> float:
    """Steps after which a compile of ``compile_seconds`` has paid for itself (``inf``: never).

    Example::

        >>> break_even(6.0, 0.010, 0.009), break_even(6.0, 0.010, 0.011)
        (6000.0, inf)
    """
    gain = eager_step - compiled_step
    return round(compile_seconds / gain, 6) if gain > 0 else math.inf


class StepTimer:
    """Wall-clock seconds of steps: :meth:`start` and :meth:`stop` around each; :meth:`median`
    of those after the first ``skip`` (warm-up)."""

    def __init__(self, skip: int = 1) -> None:
        self.skip, self.seconds, self._t = skip, [], None

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self) -> None:
        if self._t is not None:
            self.seconds.append(time.perf_counter() - self._t)
            self._t = None

    @property
    def count(self) -> int:
        return max(0, len(self.seconds) - self.skip)

    def median(self) -> float:
        timed = sorted(self.seconds[self.skip:])
        return timed[len(timed) // 2] if timed else math.nan
