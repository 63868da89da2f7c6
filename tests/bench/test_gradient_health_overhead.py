"""Smoke test of ``python -m bench.gradient_health_overhead`` on the small fake data set."""

import math

from bench import gradient_health_overhead
from tests.bench.sections import number, seconds, section, table


def test_overhead_bench_times_fits_with_and_without_the_callback(fake_data, results, tmp_path):
    argv = ["--steps", "3", "--every", "1", "--repeats", "1", "--val-size", "200", "--tmp", str(tmp_path / "fits"),
            "--results", str(results)]
    out = gradient_health_overhead.main(argv)
    assert all(t > 0 for t in out["without"] + out["with"] + out["report"])
    assert math.isfinite(out["overhead_pct"]) and math.isfinite(out["paired_overhead_pct"])
    rows = table(section(results, "gradient_health_overhead"), "every_n_steps")
    assert list(rows) == ["1"]
    steps, pairs, without, with_, overhead, paired, rest = rows["1"]
    assert (steps, pairs) == ("3", "1") and all(seconds(c) for c in (without, with_, rest))
    assert math.isfinite(number(overhead)) and math.isfinite(number(paired))
