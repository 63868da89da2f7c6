"""Timing helpers shared by the benchmarks: a callback that stamps epoch boundaries, medians.

``EpochTimer`` lives in its own module (not in ``bench/speed.py``) so that Hydra, which
instantiates it from ``_target_: bench.timing.EpochTimer``, and ``python -m bench.speed``
see the same class and the same :data:`EpochTimer.last`.
"""

from __future__ import annotations

import statistics
import time

import lightning as L


class EpochTimer(L.Callback):
    """Epoch times from one epoch start to the next (the last to the end of training), so each
    epoch includes its validation, logging, checkpointing and progress-bar work. Wall-clock
    seconds and this process's CPU seconds (``time.process_time``): on a shared CPU the second
    does not count the time spent waiting for a core, so it is the steadier measure of work.

    Example::

        timer = EpochTimer()
        L.Trainer(max_epochs=3, callbacks=[timer]).fit(model, dm)
        timer.epoch_seconds   # [s, s, s]
        timer.epoch_cpu_seconds
    """

    last: "EpochTimer | None" = None  # the most recently built timer (for configs built by Hydra)

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []
        self.end: tuple[float, float] | None = None
        EpochTimer.last = self

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.stamps.append(now())

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = now()

    def _spans(self, i: int) -> list[float]:
        bounds = self.stamps + ([self.end] if self.end is not None else [])
        return [b[i] - a[i] for a, b in zip(bounds, bounds[1:])]

    @property
    def epoch_seconds(self) -> list[float]:
        return self._spans(0)

    @property
    def epoch_cpu_seconds(self) -> list[float]:
        return self._spans(1)


def now() -> tuple[float, float]:
    """(wall-clock, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
