"""The thread chooser on made-up step durations (deterministic), and the ``threads`` checks."""

from __future__ import annotations

import pytest

from dnnkit.errors import DnnkitError
from dnnkit.threads import ThreadChooser, candidates, check_threads, usable_cores


def feed(chooser: ThreadChooser, cost: dict[int, float], steps: int) -> list[int]:
    """Run ``steps`` steps, each taking ``cost[count]`` seconds; the counts they ran with."""
    used = []
    for _ in range(steps):
        used.append(chooser.threads)
        chooser.observe(cost[chooser.threads])
    return used


def test_the_probe_tries_each_count_and_picks_the_fastest():
    chooser = ThreadChooser([1, 2, 4], warmup=1, probe_steps=3)
    used = feed(chooser, {1: 0.012, 2: 0.007, 4: 0.009}, 12)
    assert used == [1] * 4 + [2] * 4 + [4] * 4  # warm-up + 3 timed steps each
    assert (chooser.choice, chooser.probing, chooser.threads) == (2, False, 2)
    assert chooser.last_probe == {1: 0.012, 2: 0.007, 4: 0.009}
    assert feed(chooser, {1: 0.012, 2: 0.007, 4: 0.009}, 100) == [2] * 100  # steady: no re-probe


def test_the_median_ignores_a_stray_slow_step():
    chooser = ThreadChooser([1, 2], warmup=0, probe_steps=5)
    for t in (0.010, 0.010, 0.500, 0.010, 0.010):  # 1 thread, one step hit by a burst of load
        chooser.observe(t)
    for _ in range(5):
        chooser.observe(0.012)
    assert chooser.choice == 1


def test_a_busy_machine_makes_it_probe_again_and_switch():
    chooser = ThreadChooser([1, 2], warmup=1, probe_steps=3, window=10)
    quiet, busy = {1: 0.010, 2: 0.006}, {1: 0.011, 2: 0.025}
    feed(chooser, quiet, 8)
    assert chooser.choice == 2
    assert chooser.wait == pytest.approx((4 * 0.010 + 4 * 0.006 - 8 * 0.006) / 0.02)  # the probe's cost / budget: 0.8 s
    used = feed(chooser, busy, 60)
    assert chooser.choice == 1 and chooser.probes == 2
    assert used[:32] == [2] * 32 and used[32] == 2  # 0.8 s at the new speed before the re-probe (which starts with 2)
    assert used[-5:] == [1] * 5


def test_a_quiet_machine_again_makes_it_switch_back():
    chooser = ThreadChooser([1, 2], warmup=0, probe_steps=2, window=6)
    assert feed(chooser, {1: 0.011, 2: 0.030}, 3) == [1, 1, 2]  # 2 threads: one step > 2x 1's median, given up
    assert chooser.choice == 1 and chooser.last_probe == {1: 0.011, 2: 0.030}
    used = feed(chooser, {1: 0.006, 2: 0.004}, 300)  # 1 thread got much faster: the load went away
    assert chooser.choice == 2
    assert used[:158] == [1] * 158  # not before the first probe's cost (0.019 s) is 2% of the time since


def test_a_slowdown_that_threads_do_not_explain_changes_nothing_and_backs_off():
    chooser = ThreadChooser([1, 2], warmup=0, probe_steps=2, window=5, recheck_every=1000)
    feed(chooser, {1: 0.010, 2: 0.020}, 4)
    feed(chooser, {1: 0.030, 2: 0.060}, 200)  # everything 3x slower (e.g. a bigger batch): 1 stays best
    assert chooser.choice == 1 and chooser.changes == 1
    assert chooser.probes == 2  # the new speed became the baseline: no probe after probe
    assert chooser.gap == 10  # and the next re-probe must wait twice as long


def test_hysteresis_keeps_the_current_count_when_the_other_is_barely_faster():
    chooser = ThreadChooser([1, 2], warmup=0, probe_steps=2, window=4, margin=0.05)
    feed(chooser, {1: 0.010, 2: 0.020}, 4)
    feed(chooser, {1: 0.020, 2: 0.0195}, 100)  # 2 threads 2.5% faster: within the margin
    assert chooser.choice == 1 and chooser.probes >= 2


def test_it_rechecks_every_so_many_steps():
    chooser = ThreadChooser([1, 2], warmup=0, probe_steps=2, recheck_every=200)
    cost = {1: 0.010, 2: 0.020}
    feed(chooser, cost, 4 + 199)
    assert (chooser.probes, chooser.probing) == (1, False)
    feed(chooser, cost, 1)
    assert chooser.probing
    feed(chooser, cost, 4)
    assert (chooser.probes, chooser.probing, chooser.choice) == (2, False, 1)


def test_one_candidate_never_probes_again():
    chooser = ThreadChooser([3], warmup=1, probe_steps=2, window=3, recheck_every=5)
    assert feed(chooser, {3: 0.01}, 3) == [3, 3, 3]
    feed(chooser, {3: 0.05}, 50)
    assert (chooser.choice, chooser.probes) == (3, 1)


def test_candidates_and_cores():
    assert candidates(3) == [1, 2, 3] and candidates(8) == [1, 2, 4, 8]
    assert 1 <= usable_cores()


@pytest.mark.parametrize("value", [0, -1, 5, "abc", "2", 1.5, True])
def test_bad_thread_counts_are_one_error_naming_the_value(value):
    with pytest.raises(DnnkitError, match=r"threads must be auto, null .* integer in \[1, 4\].* got " + repr(value).replace("'", ".")):
        check_threads(value, cores=4)


@pytest.mark.parametrize("option", [{"probe_steps": 0}, {"rise": 1}, {"window": 2.5}, {"margin": -0.1}, {"warmup": True}])
def test_bad_options_are_refused(option):
    with pytest.raises(DnnkitError, match="must be"):
        ThreadChooser([1, 2], **option)
    with pytest.raises(DnnkitError, match="candidates"):
        ThreadChooser([0, 1])
