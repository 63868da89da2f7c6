"""How many intra-op threads torch should use, chosen from timed steps (``threads=auto``).

torch's default intra-op thread count is the number of cores. On a machine that another busy
process shares, that default collapses: OpenMP's threads wait for each other at every
operation, and a thread whose core is taken holds up the rest (the ``mnist_bn`` MLP's raw loop
took 2.3-4x its 1-thread time at 2 threads on 2 cores beside one busy process). No fixed count
is right everywhere, so :class:`ThreadChooser` measures:

1. **probe**: for each candidate count (:func:`candidates`: 1, 2, 4, ... and the cores), one
   warm-up step (not counted) and ``probe_steps`` timed steps; the fastest median wins. A count
   whose every timed step so far took more than ``give_up`` times the best median so far is
   dropped at once (beside a busy process, 2 threads can take 10x as long as 1: a probe of
   them must not cost more than a step or two);
2. **watch**: the running median of the last ``window`` steps against the winner's probe median;
   when it rises above ``rise`` times that (the machine got busy) or falls below it by the same
   factor (it got quiet), or every ``recheck_every`` steps, probe again;
3. **hysteresis**: a re-probe keeps the current count unless another is faster by more than
   ``margin``; after a re-probe that changed nothing the next one waits twice as long (up to
   ``recheck_every`` steps), so a machine whose load comes and goes does not make it flap; and
   the next probe never comes before the last one's cost (its steps' time above the chosen
   count's) is under ``budget`` (2%) of the time run since.

The chooser is pure (fed step durations, it answers the count for the next step);
:class:`dnnkit.callbacks.AutoThreads` feeds it a fit's steps and calls ``torch.set_num_threads``.
``torch.set_num_threads`` is process-global: it changes the count for every model in the process.

Example (durations made up: 1 thread is 10 ms a step, 2 threads 20 ms)::

    >>> chooser = ThreadChooser([1, 2], warmup=1, probe_steps=3)
    >>> ms = {1: 0.010, 2: 0.020}
    >>> for _ in range(8):
    ...     n = chooser.observe(ms[chooser.threads])
    >>> chooser.choice, chooser.probing, chooser.last_probe
    (1, False, {1: 0.01, 2: 0.02})
"""

from __future__ import annotations

import os
import statistics
from collections import deque

from dnnkit.errors import DnnkitError


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else all)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def candidates(cores: int) -> list[int]:
    """The counts a probe tries: powers of two below ``cores``, and ``cores``.

    Example::

        >>> candidates(1), candidates(2), candidates(6), candidates(16)
        ([1], [1, 2], [1, 2, 4, 6], [1, 2, 4, 8, 16])
    """
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return [*out, cores]


def check_threads(value, cores: int | None = None):
    """``value`` if it is a valid ``threads`` setting: ``auto``, null (torch's own count), or an
    integer from 1 to the usable cores; else one :class:`~dnnkit.errors.DnnkitError`.

    Example::

        >>> check_threads("auto"), check_threads(2, cores=4), check_threads(None)
        ('auto', 2, None)
        >>> check_threads(0, cores=4)
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: threads must be auto, null (torch's default) or an integer in [1, 4] (the usable cores), got 0
    """
    if value is None or value == "auto":
        return value
    cores = usable_cores() if cores is None else cores
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cores:
        raise DnnkitError(
            f"threads must be auto, null (torch's default) or an integer in [1, {cores}] (the usable cores), got {value!r}"
        )
    return value


def _positive(name: str, value, integer: bool = True, low: float = 1):
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and value >= low
    if not ok:
        raise DnnkitError(f"{name} must be {'an integer' if integer else 'a number'} >= {low}, got {value!r}")
    return value


class ThreadChooser:
    """Fed the duration of each step (run with :attr:`threads` threads), answers the count the
    next step should run with. See the module's docstring for the probe, watch and hysteresis.

    * :attr:`threads`: the count to run the next step with;
    * :attr:`choice`: the count the last probe chose (None before the first probe ends);
    * :attr:`last_probe`: that probe's median seconds per step, by count;
    * :attr:`probes`: probes finished; :attr:`changes`: probes that changed the choice.

    Example: the machine gets busy after the probe, 2 threads collapse, a re-probe picks 1::

        >>> chooser = ThreadChooser([1, 2], warmup=0, probe_steps=2, window=4)
        >>> quiet, busy = {1: 0.010, 2: 0.008}, {1: 0.012, 2: 0.030}
        >>> for _ in range(4):
        ...     _ = chooser.observe(quiet[chooser.threads])
        >>> chooser.choice
        2
        >>> for _ in range(11):  # 7 steps: the probe's cost (4 ms) is 2% of the time since; 4: the re-probe
        ...     _ = chooser.observe(busy[chooser.threads])
        >>> chooser.choice, chooser.probes, chooser.changes
        (1, 2, 2)
    """

    def __init__(self, candidates: list[int], *, warmup: int = 1, probe_steps: int = 5, window: int = 20,
                 rise: float = 1.5, margin: float = 0.03, give_up: float = 2.0, budget: float = 0.02,
                 recheck_every: int | None = 2000) -> None:
        if not candidates or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in candidates):
            raise DnnkitError(f"thread candidates must be a non-empty list of integers >= 1, got {candidates!r}")
        self.candidates = list(dict.fromkeys(candidates))
        self.warmup = _positive("warmup", warmup, low=0)
        self.probe_steps = _positive("probe_steps", probe_steps)
        self.window = _positive("window", window)
        self.rise = _positive("rise", rise, integer=False, low=1)
        if self.rise == 1:
            raise DnnkitError(f"rise must be a number > 1, got {rise!r}")
        self.margin = _positive("margin", margin, integer=False, low=0)
        self.give_up = _positive("give_up", give_up, integer=False, low=1)
        self.budget = _positive("budget", budget, integer=False, low=0)
        if self.budget == 0:
            raise DnnkitError(f"budget must be a number > 0, got {budget!r}")
        self.recheck_every = None if recheck_every is None else _positive("recheck_every", recheck_every)
        self.choice: int | None = None
        self.last_probe: dict[int, float] = {}
        self.probes = self.changes = 0
        self.wait = 0.0  # seconds to watch after a probe before the next: its cost over `budget`
        self.gap = self.window  # steps watched before a jump may start a re-probe (doubles when one changes nothing)
        self._recent: deque[float] = deque(maxlen=self.window)
        self._since, self._elapsed = 0, 0.0  # steps and seconds since the last probe ended
        self._start_probe()

    # ------------------------------------------------------------------ state

    @property
    def probing(self) -> bool:
        return self._queue is not None

    @property
    def threads(self) -> int:
        """The count the next step should run with."""
        return self._queue[0] if self._queue else self.choice

    @property
    def baseline(self) -> float | None:
        """The chosen count's median seconds per step in the last probe."""
        return self.last_probe.get(self.choice) if self.choice is not None else None

    def _start_probe(self) -> None:
        # the current choice first: the step just run with it is the warm-up of nothing else
        rest = [c for c in self.candidates if c != self.choice]
        self._queue = [self.choice, *rest] if self.choice is not None else list(self.candidates)
        self._times: dict[int, list[float]] = {c: [] for c in self._queue}
        self._spent: list[float] = []  # every step of the probe, warm-ups included
        self._skip = self.warmup

    # ------------------------------------------------------------------ feeding

    def observe(self, seconds: float) -> int:
        """Take the duration of one step that ran with :attr:`threads` threads; return the
        count the next step should run with."""
        if self.probing:
            self._probe_step(float(seconds))
        else:
            self._watch_step(float(seconds))
        return self.threads

    def _probe_step(self, seconds: float) -> None:
        self._spent.append(seconds)
        current = self._queue[0]
        done = [statistics.median(t) for c, t in self._times.items() if c not in self._queue]
        if self._skip > 0:
            self._skip -= 1
            if not (done and seconds > self.give_up * min(done)):
                return
            self._times[current].append(seconds)  # even its warm-up step was far slower: drop it now
        else:
            self._times[current].append(seconds)
        hopeless = bool(done) and min(self._times[current]) > self.give_up * min(done)  # every step far slower: stop
        if len(self._times[current]) < self.probe_steps and not hopeless:
            return
        self._queue.pop(0)
        self._skip = self.warmup
        if not self._queue:
            self._finish_probe()

    def _finish_probe(self) -> None:
        medians = {c: statistics.median(t) for c, t in self._times.items()}
        best = min(medians, key=lambda c: (medians[c], c))
        previous = self.choice
        if previous is not None and previous in medians and medians[previous] <= medians[best] * (1 + self.margin):
            best = previous  # hysteresis: not worth a switch
        self.choice, self.last_probe = best, medians
        self.probes += 1
        changed = best != previous
        self.changes += changed
        # the probe's cost above running the choice all along; the next may come once it is under `budget` of the time
        self.wait = max(0.0, sum(self._spent) - len(self._spent) * medians[best]) / self.budget
        unchanged = previous is not None and not changed
        self.gap = 2 * self.gap if unchanged else self.window
        if self.recheck_every is not None:
            self.gap = min(self.gap, self.recheck_every)
        self._queue = None
        self._recent.clear()
        self._since, self._elapsed = 0, 0.0

    def _watch_step(self, seconds: float) -> None:
        if len(self.candidates) < 2:
            return
        self._recent.append(seconds)
        self._since += 1
        self._elapsed += seconds
        if self._elapsed < self.wait:
            return
        if self.recheck_every is not None and self._since >= self.recheck_every:
            self._start_probe()
            return
        if len(self._recent) < self.window or self._since < self.gap:
            return
        now, base = statistics.median(self._recent), self.baseline
        if base and (now > self.rise * base or now * self.rise < base):
            self._start_probe()
