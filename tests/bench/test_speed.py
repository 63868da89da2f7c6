"""Smoke tests of ``python -m bench.speed`` on the small fake data set (the timings themselves
are not tested, only that the table has its rows and its figures are finite, and positive where
rounding cannot make them 0)."""

import pytest

from bench import speed
from tests.bench.sections import number, outside, positive, seconds, section, table

ROWS = ("dnnkit", "dnnkit-bare", "raw", "floor", "lightning")
RATIOS = ("dnnkit / raw", "dnnkit / floor", "dnnkit-bare / raw", "floor / raw", "lightning / dnnkit", "lightning / raw")


def timings(row: list[str]) -> bool:
    """A loop's row: s/epoch, epochs/s, CPU s/epoch, timed epochs (min-max), fit seconds, val/acc."""
    wall, per_second, cpu, epochs, fit, acc = row
    return (seconds(wall) and positive(per_second) and seconds(cpu) and positive(epochs) and seconds(fit)
            and 0 <= number(acc) <= 1)


def test_speed_bench_times_the_raw_loop_into_its_section(fake_data, results, capsys):
    before = results.read_text()
    assert speed.main(["--rounds", "1", "--epochs", "2", "--only", "raw", "--results", str(results), "data.val_size=200"]) == 0
    text = section(results, "speed")
    rows = table(text, "loop")
    assert list(rows) == ["raw"] and timings(rows["raw"])
    assert "Command: `python -m bench.speed --rounds 1" in text and "| loop |" in capsys.readouterr().out
    assert outside(results.read_text(), "speed") == outside(before, "speed")  # nothing else in the file changed


@pytest.mark.slow
def test_speed_bench_runs_every_contender_and_reports_the_ratios(fake_data, results):
    only = ["--only", *ROWS]  # the Keras peers: test_speed_keras.py
    assert speed.main(["--rounds", "1", "--epochs", "2", "--threads", "1", *only, "--results", str(results), "data.val_size=200"]) == 0
    text = section(results, "speed")
    rows, ratios = table(text, "loop"), table(text, "ratio")
    assert list(rows) == list(ROWS) and list(ratios) == list(RATIOS)
    assert all(timings(row) for row in rows.values())
    assert all(positive(c) for row in ratios.values() for c in row[:3])
    assert "met" in ratios["dnnkit / raw"][3] and "met" in ratios["lightning / dnnkit"][3]
    assert "Lightning's loop" in ratios["dnnkit / floor"][3]
