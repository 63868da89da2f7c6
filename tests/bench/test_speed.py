"""Smoke test of the benchmarks on the small fake data set (the timings themselves are not tested)."""

import pytest

from bench import cost, speed


@pytest.mark.slow
def test_speed_bench_runs_every_contender_and_reports_the_ratios(fake_data, tmp_path):
    out = tmp_path / "speed.md"
    assert speed.main(["--rounds", "1", "--epochs", "2", "--threads", "1", "--out", str(out), "data.val_size=200"]) == 0
    text = out.read_text()
    for row in ("| dnnkit |", "| dnnkit-bare |", "| raw |", "| floor |", "| lightning |", "| dnnkit / raw |", "| floor / raw |", "| lightning / dnnkit |"):
        assert row in text


@pytest.mark.slow
def test_cost_of_a_recipe_run(fake_data, tmp_path):
    result = cost.measure_recipe("mnist_fast", ["trainer.max_epochs=1", "data.val_size=200"], runs=tmp_path)
    assert result["returncode"] == 0, open(result["log"]).read()[-2000:]
    assert result["peak_rss_mib"] > 0 and result["cpu_s"] > 0
    assert 0.0 <= result["stages"][0]["metrics"]["test/acc"] <= 1.0
