"""Smoke test of ``python -m bench.caching`` on the small fake data set (three short fits)."""

from bench import caching
from tests.bench.sections import number, seconds, section, table


def test_caching_bench_compares_cached_and_uncached_runs(fake_data, results, tmp_path):
    argv = ["--epochs", "1", "--source-epochs", "1", "--threads", "1", "--runs", str(tmp_path / "runs"),
            "--results", str(results), "data.val_size=200"]
    assert caching.main(argv) == 0
    text = section(results, "caching")
    rows = table(text, "run")
    assert list(rows) == ["uncached", "cached"]
    assert seconds(rows["uncached"][0]) and seconds(rows["cached"][0])
    assert rows["uncached"][1] == "-" and seconds(rows["cached"][1])  # only the cached run builds a cache
    assert all(0.0 <= number(r[i]) <= 1.0 for r in rows.values() for i in (2, 3))
    assert "Speed-up of a training epoch with the cache: **" in text and "Raw PyTorch loop for reference: " in text
