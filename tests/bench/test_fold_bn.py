"""Smoke test of ``python -m bench.fold_bn`` on the synthetic data set (timings not checked)."""

from bench.fold_bn import main
from tests.bench.sections import positive, section, table

NETWORKS = ("batch norm (unfolded)", "batch norm (folded)", "no batch norm (ELU + He)")


def test_bench_prints_three_networks(fake_data, results, capsys):
    result = main(["--rounds", "1", "--val-size", "200", "--results", str(results)])
    out = capsys.readouterr().out
    for name in NETWORKS:
        assert name in out and 0.0 <= result["accuracy"][name] <= 1.0
    assert result["accuracy"]["batch norm (folded)"] == result["accuracy"]["batch norm (unfolded)"]
    assert result["max_logit_diff"] <= 1e-5
    assert "folded / no-BN" in out
    text = section(results, "fold_bn")
    rows = table(text, "network")
    assert tuple(rows) == NETWORKS
    assert all(positive(c) for row in rows.values() for c in row[1:])  # latencies and throughputs
    assert "- batch 1: folded / no-BN = " in text and "- batch 1000: folded / no-BN = " in text
