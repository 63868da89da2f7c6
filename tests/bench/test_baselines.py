"""Smoke tests of ``python -m bench.baselines`` on the small fake data set: every contender
trains the same network to a real accuracy."""

import pytest

from bench import baselines
from tests.bench.sections import number, seconds, section, table


def test_raw_loop_and_lightning_floor_reach_an_accuracy(fake_data, results):
    argv = ["--epochs", "2", "--only", "raw", "floor", "--results", str(results), "data.val_size=200"]
    assert baselines.main(argv) == 0
    rows = table(section(results, "baselines"), "loop")
    assert list(rows) == ["raw", "floor"]
    for acc, vs_dnnkit, wall, cpu in rows.values():
        assert 0.0 < number(acc) <= 1.0 and vs_dnnkit == "-" and seconds(wall) and seconds(cpu)
    # the same network, seed, batches and optimizer: Lightning's floor learns what the raw loop learns
    assert abs(number(rows["raw"][0]) - number(rows["floor"][0])) <= 0.01


@pytest.mark.slow
def test_every_contender_does_the_same_work(fake_data, results):
    assert baselines.main(["--epochs", "2", "--threads", "1", "--results", str(results), "data.val_size=200"]) == 0
    rows = table(section(results, "baselines"), "loop")
    assert list(rows) == ["dnnkit", "raw", "floor", "lightning"]
    assert all(0.0 < number(r[0]) <= 1.0 and seconds(r[2]) for r in rows.values())
    assert number(rows["dnnkit"][1]) == 0.0
    assert abs(number(rows["raw"][1])) <= 1.0 and abs(number(rows["floor"][1])) <= 1.0  # points of accuracy
