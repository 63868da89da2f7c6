"""Learning-rate schedules: one implementation of each formula, used two ways.

The formulas (Hands-On ML, ch. 11), with ``t`` counting optimizer steps or epochs, as the
``interval`` says:

==================  ================================================================
piecewise constant  ``values[i]`` while ``t < boundaries[i]``; ``values[-1]`` after the last
exponential         ``lr0 * 0.1 ** (t / s)``: ten times smaller every ``s``
power               ``lr0 * (1 + t / s) ** -c``: halves at ``t = s`` (c = 1), then slower
warm-up cosine      ``lr0 * t / W`` for ``t < W``, then a cosine from ``lr0`` to ``min_lr`` at ``t = total``
==================  ================================================================

``lr0`` is, unless given, the learning rate each param group had when training started, so
groups with different rates keep their ratio (piecewise values are absolute, as in the book
and TF's ``PiecewiseConstantDecay``).

Two ways to use a schedule, both computing the rate from the same :class:`Schedule` object:

- :func:`scheduled_lr` builds a :class:`ScheduledLR` (a ``torch.optim.lr_scheduler.LRScheduler``)
  wrapped in Lightning's scheduler dict, for ``configure_optimizers`` (``conf/scheduler/``);
- :class:`dnnkit.callbacks.LearningRateSchedule` writes the rate into any module's optimizer
  (``conf/callbacks/lr_schedule.yaml``), for modules that configure their own optimizer.

With ``interval="step"`` the rate used by optimizer step ``k`` (0-based) is ``schedule(k)``;
with ``interval="epoch"``, every step of epoch ``e`` (0-based) uses ``schedule(e)``. Lightning
steps schedulers per epoch unless told otherwise; Keras's ``LearningRateScheduler(fn)`` calls
``fn(epoch)`` and the book's ``ExponentialDecay(decay_steps=s)`` counts steps.

:func:`lightning_scheduler` turns any scheduler factory (``scheduler=`` configs: ``ScheduledLR``,
PyTorch's own, ``OneCycleLR``) into Lightning's scheduler dict: ``interval``, ``frequency`` and
``monitor`` given to a scheduler that takes no such argument go to the dict
(``+scheduler.interval=step`` on ``CosineAnnealingLR``), and a length left ``null``
(``OneCycleLR``'s ``total_steps``, ``WarmupCosine``'s ``total``) is the fit's number of scheduler
steps (``trainer.estimated_stepping_batches`` or ``max_epochs``).
"""

from __future__ import annotations

import bisect
import copy
import functools
import inspect
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from dnnkit.errors import DnnkitError, choose, number

INTERVALS = ("step", "epoch")


# ----------------------------------------------------------------------------- the formulas


def piecewise_constant_lr(t: float, boundaries: Sequence[float], values: Sequence[float]) -> float:
    """``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    Example::

        >>> piecewise_constant_lr(7, [5, 15], [0.01, 0.005, 0.001])
        0.005
    """
    return values[bisect.bisect_right(boundaries, t)]


def exponential_lr(t: float, lr0: float, s: float) -> float:
    """``lr0 * 0.1 ** (t / s)``.

    Example::

        >>> round(exponential_lr(20, 0.01, 20), 12)
        0.001
    """
    return lr0 * 0.1 ** (t / s)


def power_lr(t: float, lr0: float, s: float, c: float = 1.0) -> float:
    """``lr0 * (1 + t / s) ** -c``.

    Example::

        >>> power_lr(10, 0.01, 10)
        0.005
    """
    return lr0 * (1 + t / s) ** (-c)


# ----------------------------------------------------------------------------- schedule objects


def _positive(name: str, value) -> float:
    return float(number(name, value, 0, low_open=True))


class Schedule:
    """A learning rate as a function of ``t``: ``schedule(t, lr0) -> lr``."""

    lr0: float | None = None

    def __call__(self, t: float, lr0: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class PiecewiseConstant(Schedule):
    """``values[i]`` while ``t < boundaries[i]``, ``values[-1]`` after the last boundary.

    It switches to ``values[i + 1]`` at ``t = boundaries[i]``, as the book's
    ``piecewise_constant_fn(epoch)`` does (``0.01 if epoch < 5``, ...). TF's and Keras's
    ``PiecewiseConstantDecay`` keep ``values[i]`` while ``step <= boundaries[i]``, so they
    switch one step (or epoch) later; add 1 to every boundary to get their switching points.

    Example::

        >>> sched = PiecewiseConstant(boundaries=[5, 15], values=[0.01, 0.005, 0.001])
        >>> [sched(t, lr0=0.01) for t in (0, 4, 5, 14, 15, 99)]  # Keras: 0.01 at t = 5, 0.005 at 15
        [0.01, 0.01, 0.005, 0.005, 0.001, 0.001]
    """

    def __init__(self, boundaries: Sequence[float], values: Sequence[float]) -> None:
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise DnnkitError(
                f"piecewise constant needs one more value than boundaries, got boundaries={boundaries!r} and values={values!r}"
            )
        if any(b >= a for a, b in zip(boundaries[1:], boundaries)):
            raise DnnkitError(f"boundaries must increase strictly, got {boundaries!r}")
        for v in values:
            _positive("every value", v)
        self.boundaries, self.values = boundaries, values

    def __call__(self, t: float, lr0: float) -> float:
        return piecewise_constant_lr(t, self.boundaries, self.values)


class Exponential(Schedule):
    """``lr0 * 0.1 ** (t / s)``; ``lr0`` defaults to the optimizer's starting rate.

    Example::

        >>> round(Exponential(s=20)(40, lr0=0.01), 12)  # two decades down
        0.0001
    """

    def __init__(self, s: float, lr0: float | None = None) -> None:
        self.s = _positive("s", s)
        self.lr0 = None if lr0 is None else _positive("lr0", lr0)

    def __call__(self, t: float, lr0: float) -> float:
        return exponential_lr(t, self.lr0 if self.lr0 is not None else lr0, self.s)


class Power(Schedule):
    """``lr0 * (1 + t / s) ** -c``; ``lr0`` defaults to the optimizer's starting rate.

    Example::

        >>> Power(s=100, c=1)(300, lr0=0.01)
        0.0025
    """

    def __init__(self, s: float, c: float = 1.0, lr0: float | None = None) -> None:
        self.s = _positive("s", s)
        self.c = _positive("c", c)
        self.lr0 = None if lr0 is None else _positive("lr0", lr0)

    def __call__(self, t: float, lr0: float) -> float:
        return power_lr(t, self.lr0 if self.lr0 is not None else lr0, self.s, self.c)


class WarmupCosine(Schedule):
    """A linear warm-up from 0 to ``lr0`` over the first ``warmup_share`` of ``total`` steps
    (``W = round(warmup_share * total)``: ``lr0 * t / W``), then a cosine from ``lr0`` down to
    ``min_lr`` at ``t = total`` (Hugging Face's ``get_cosine_schedule_with_warmup``, with a floor).
    ``total: None`` is filled in with the fit's length by :func:`lightning_scheduler`.

    Example::

        >>> sched = WarmupCosine(warmup_share=0.1, total=100)
        >>> [round(sched(t, lr0=0.1), 4) for t in (0, 5, 10, 55, 100)]
        [0.0, 0.05, 0.1, 0.05, 0.0]
    """

    def __init__(self, warmup_share: float = 0.05, total: int | None = None, min_lr: float = 0.0, lr0: float | None = None) -> None:
        self.warmup_share = float(number("warmup_share", warmup_share, 0, 1, high_open=True))
        self.total = None if total is None else int(number("total", total, 1, integer=True))
        self.min_lr = float(number("min_lr", min_lr, 0))
        self.lr0 = None if lr0 is None else _positive("lr0", lr0)

    def __call__(self, t: float, lr0: float) -> float:
        if self.total is None:
            raise DnnkitError("WarmupCosine needs total (the number of scheduler steps); give schedule.total")
        lr0 = self.lr0 if self.lr0 is not None else lr0
        warmup = round(self.warmup_share * self.total)
        if t < warmup:
            return lr0 * t / warmup
        progress = min(1.0, (t - warmup) / max(1, self.total - warmup))
        return self.min_lr + (lr0 - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise DnnkitError(
            f"schedule must be a dnnkit.schedules schedule (PiecewiseConstant, Exponential, Power, WarmupCosine), got {schedule!r}"
        )
    return schedule


def check_interval(interval: str) -> str:
    return choose("interval", interval, INTERVALS)


# ----------------------------------------------------------------------------- as an LRScheduler


class ScheduledLR(LRScheduler):
    """A PyTorch scheduler that sets each group's rate to ``schedule(t, base_lr)``, where ``t``
    is the number of times :meth:`step` has been called (Lightning calls it per ``interval``).

    The schedule object is rebuilt from the config on resume, not saved in the checkpoint
    (as ``LambdaLR`` does with its functions), so checkpoints load with ``weights_only=True``.

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
        >>> sched = ScheduledLR(opt, Power(s=2))
        >>> for _ in range(2): opt.step(); sched.step()
        >>> opt.param_groups[0]["lr"]
        0.005
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, last_epoch: int = -1) -> None:
        self.schedule = check_schedule(schedule)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [self.schedule(self.last_epoch, base) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}


def scheduled_lr(optimizer: torch.optim.Optimizer, schedule: Schedule, interval: str = "epoch", frequency: int = 1) -> dict:
    """Lightning's scheduler dict around :class:`ScheduledLR`: what ``configure_optimizers`` returns
    as ``"lr_scheduler"``, and what ``conf/scheduler/*.yaml`` build (``_partial_: true``).

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
        >>> cfg = scheduled_lr(opt, Exponential(s=1000), interval="step")
        >>> cfg["interval"], type(cfg["scheduler"]).__name__
        ('step', 'ScheduledLR')
    """
    check_interval(interval)
    number("frequency", frequency, 1, integer=True)
    return {"scheduler": ScheduledLR(optimizer, schedule), "interval": interval, "frequency": frequency}


# ----------------------------------------------------------------------------- any scheduler, for Lightning

LIGHTNING_KEYS = ("interval", "frequency", "monitor", "strict", "name")  # Lightning's scheduler dict keys
PLACEHOLDER_STEPS = 1000  # a length for schedulers built without a trainer (the preflight's check)


def _takes(func) -> set[str] | None:
    """The keyword arguments ``func`` takes (None: any, it has ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def scheduler_steps(trainer, interval: str, frequency: int = 1) -> int:
    """How many times Lightning steps a scheduler in ``trainer``'s fit: once per optimizer step
    (``trainer.estimated_stepping_batches``) or per epoch, every ``frequency``-th; without a
    trainer, :data:`PLACEHOLDER_STEPS`."""
    if trainer is None:
        return PLACEHOLDER_STEPS
    n = trainer.estimated_stepping_batches if interval == "step" else trainer.max_epochs
    if n is None or not math.isfinite(n) or n < 1:
        raise DnnkitError(
            f"the scheduler's length (interval: {interval}) follows from the fit, which has no end: set trainer.max_epochs "
            "or trainer.max_steps, or give the scheduler's own (scheduler.total_steps, scheduler.schedule.total)"
        )
    return max(1, math.ceil(int(n) / frequency))


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Momentum that 1cycle can cycle: Adam's beta1, or SGD's (RMSprop's) momentum when it is on."""
    return "betas" in optimizer.defaults or any(float(g.get("momentum") or 0) > 0 for g in optimizer.param_groups)


def _one_cycle(keywords: dict, optimizer: torch.optim.Optimizer, steps) -> dict:
    """``OneCycleLR``'s nulls filled in: ``max_lr`` the optimizer's rate per group, ``total_steps``
    the fit's, ``cycle_momentum: auto`` on where the optimizer has momentum; ``pct_start`` checked."""
    if keywords.get("max_lr") is None:
        keywords["max_lr"] = [float(g["lr"]) for g in optimizer.param_groups]
    if keywords.get("total_steps") is None and keywords.get("epochs") is None:
        keywords["total_steps"] = steps()
    if "pct_start" in keywords:  # torch wants a float in [0, 1]; a share of 0 or 1 leaves a phase empty
        keywords["pct_start"] = float(number("scheduler.pct_start (the warm-up share)", keywords["pct_start"], 0, 1,
                                             low_open=True, high_open=True))
    if keywords.get("cycle_momentum", "auto") == "auto":
        keywords["cycle_momentum"] = _has_momentum(optimizer)
    return keywords


def lightning_scheduler(factory, optimizer: torch.optim.Optimizer, trainer=None) -> dict:
    """Lightning's scheduler dict (what ``configure_optimizers`` returns as ``"lr_scheduler"``)
    from ``factory(optimizer)``, which returns a scheduler or such a dict; see the module docstring.

    Example::

        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=100, interval="step")
        >>> cfg = lightning_scheduler(cosine, opt)
        >>> cfg["interval"], type(cfg["scheduler"]).__name__
        ('step', 'CosineAnnealingLR')
    """
    options: dict = {}
    if isinstance(factory, functools.partial):
        takes, keywords = _takes(factory.func), dict(factory.keywords)
        for key in LIGHTNING_KEYS:
            if key in keywords and takes is not None and key not in takes:
                options[key] = keywords.pop(key)
        interval = check_interval(options.get("interval", keywords.get("interval", "epoch")))
        frequency = number("scheduler.frequency", options.get("frequency", keywords.get("frequency", 1)), 1, integer=True)

        def steps() -> int:
            return scheduler_steps(trainer, interval, frequency)

        if factory.func is torch.optim.lr_scheduler.OneCycleLR:
            keywords = _one_cycle(keywords, optimizer, steps)
        schedule = keywords.get("schedule")
        if isinstance(schedule, Schedule) and hasattr(schedule, "total") and schedule.total is None:
            keywords["schedule"] = copy.copy(schedule)
            keywords["schedule"].total = steps()
        factory = functools.partial(factory.func, *factory.args, **keywords)
    scheduler = factory(optimizer)
    config = dict(scheduler) if isinstance(scheduler, dict) else {"scheduler": scheduler, "interval": "epoch"}
    config.update(options)
    check_interval(config.get("interval", "epoch"))
    number("scheduler.frequency", config.get("frequency", 1), 1, integer=True)
    return config
