"""``AutoThreads``: torch's intra-op thread count for a fit, chosen from its own timed steps
(``threads=auto``) or fixed (``threads=N``); see :mod:`dnnkit.threads` for how it chooses.

With ``threads="auto"`` each training step is timed from one ``on_train_batch_start`` to the
next (the step, the batch-end hooks and fetching the next batch, all run with one count; the
first step of each epoch is not timed, since validation ran before it) and fed to a
:class:`~dnnkit.threads.ThreadChooser`, which probes the candidate counts at the start of the
fit and again when the step time jumps. Every change is one log line
(``threads=auto: 1 thread (probed: 1 -> 3.1 ms/step, 2 -> 7.4 ms/step)``) and the count in use
at each epoch's end is logged as the metric ``threads`` (``metrics.csv``). On a GPU it leaves
the count alone (the step waits for the device, not for CPU threads).

``torch.set_num_threads`` is process-global. The callback sets the count when its trainer
starts a fit, test, validation or prediction (a test after the fit runs with the count the fit
chose) and puts back the count it found when the trainer is done (``teardown``, and on an
exception), so a process that goes on after the trainer keeps its own setting.

Works in any Trainer::

    trainer = L.Trainer(callbacks=[AutoThreads()])        # or AutoThreads(1): a fixed count
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from typing_extensions import override

from dnnkit.threads import ThreadChooser, candidates, check_threads, usable_cores

log = logging.getLogger(__name__)


def _per_step(medians: dict[int, float]) -> str:
    return ", ".join(f"{n} -> {1000 * s:.1f} ms/step" for n, s in sorted(medians.items()))


class AutoThreads(L.Callback):
    """Set torch's intra-op threads for a trainer: ``"auto"`` (timed probes), an integer, or
    ``None`` (leave torch's count alone). The other arguments tune the chooser
    (:class:`~dnnkit.threads.ThreadChooser`); ``counts`` replaces the candidate counts
    (default :func:`~dnnkit.threads.candidates` of the usable cores); ``log_metric`` logs
    ``threads`` once an epoch."""

    def __init__(self, threads: int | str | None = "auto", *, counts: list[int] | None = None, warmup: int = 1,
                 probe_steps: int = 5, window: int = 20, rise: float = 1.5, margin: float = 0.03, give_up: float = 2.0,
                 budget: float = 0.02, recheck_every: int | None = 2000, log_metric: bool = True) -> None:
        self.threads = check_threads(threads)
        self.options = {"warmup": warmup, "probe_steps": probe_steps, "window": window, "rise": rise, "margin": margin,
                        "give_up": give_up, "budget": budget, "recheck_every": recheck_every}
        self.counts = list(counts) if counts is not None else candidates(usable_cores())
        self.chooser = ThreadChooser(self.counts, **self.options)  # checks the options now, not at the first step
        self.log_metric = log_metric
        self.history: list[tuple[int, int]] = []  # (global step, count) at each change of the count
        self._before: int | None = None
        self._last: float | None = None
        self._active = False
        self._changes = 0  # the chooser's changes at the last log line
        self.clock = time.perf_counter  # seconds; a test may give it a fake clock

    # ------------------------------------------------------------------ the count, set and restored

    def _set(self, n: int, step: int | None = None) -> None:
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        if step is not None and (not self.history or self.history[-1][1] != n):
            self.history.append((step, n))

    def _restore(self) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None

    @property
    def chosen(self) -> int | None:
        """The count for this process: the fixed one, or the chooser's last choice."""
        return self.threads if isinstance(self.threads, int) else self.chooser.choice

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.threads is None:
            return
        self._before = torch.get_num_threads()
        if self.chosen is not None:
            self._set(self.chosen)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = False
        self._restore()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._active = False
        self._restore()

    # ------------------------------------------------------------------ timing the steps

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = self.threads == "auto" and pl_module.device.type == "cpu"
        if self.threads == "auto" and not self._active:
            log.info("threads=auto: training on %s, torch's %d CPU threads left as they are", pl_module.device,
                     torch.get_num_threads())
        if self._active:
            self.chooser, self._changes = ThreadChooser(self.counts, **self.options), 0
            self._set(self.chooser.threads, trainer.global_step)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None  # validation ran since the last step: the epoch's first step is not timed

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self._active:
            return
        now = self.clock()
        if self._last is not None:
            probes = self.chooser.probes
            n = self.chooser.observe(now - self._last)
            if self.chooser.probes != probes:
                self._report()
            self._set(n, trainer.global_step)
        self._last = self.clock()  # the chooser's own work is not the next step's

    def _report(self) -> None:
        c = self.chooser
        what = "kept" if c.probes > 1 and c.changes == self._changes else "chose"
        self._changes = c.changes
        log.info("threads=auto: %s %d thread%s (probe %d: %s)", what, c.choice, "" if c.choice == 1 else "s", c.probes,
                 _per_step(c.last_probe))

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.log_metric and self.threads is not None:
            pl_module.log("threads", float(torch.get_num_threads()), on_step=False, on_epoch=True, batch_size=1)
