"""Smoke test of ``python -m bench.threads`` on the synthetic data set (timings not checked)."""

from __future__ import annotations

import os

import pytest

from bench.threads import busy, main
from tests.bench.sections import positive, section, table


def test_bench_times_each_count_and_auto(fake_data, results, capsys):
    argv = ["--rounds", "1", "--epochs", "1", "--counts", "1", "--conditions", "quiet", "--results", str(results), "data.val_size=200"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "quiet  threads=auto" in out
    text = section(results, "threads")
    assert "Command: `python -m bench.threads --rounds 1" in text
    rows = table(text, "condition")  # first cells repeat per condition: the last row is auto's
    assert rows["quiet"][0] == "auto" and positive(rows["quiet"][1])
    assert "| quiet | auto / best fixed | **" in text and "2 threads / 1 thread" not in text  # no 2-thread contender


def test_bad_counts_are_a_usage_error(results):
    with pytest.raises(SystemExit) as err:
        main(["--counts", "0", "--results", str(results)])
    assert err.value.code == 2


@pytest.mark.slow
def test_the_busy_child_runs_only_inside_the_block():
    with busy() as pid:
        os.kill(pid, 0)  # alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with busy(False) as none:
        assert none is None
