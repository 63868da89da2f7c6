"""Learning-rate schedules: one implementation of each formula, used two ways.

The formulas (Hands-On ML, ch. 11), with ``t`` counting optimizer steps or epochs, as the
``interval`` says:

==================  ================================================================
piecewise constant  ``values[i]`` while ``t < boundaries[i]``; ``values[-1]`` after the last
exponential         ``lr0 * 0.1 ** (t / s)``: ten times smaller every ``s``
power               ``lr0 * (1 + t / s) ** -c``: halves at ``t = s`` (c = 1), then slower
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
"""

from __future__ import annotations

import bisect
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


def check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise DnnkitError(
            f"schedule must be a dnnkit.schedules schedule (PiecewiseConstant, Exponential, Power), got {schedule!r}"
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
