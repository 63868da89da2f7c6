"""Smoke test of ``python -m bench.fold_bn`` on the synthetic data set (timings not checked)."""

from bench.fold_bn import main


def test_bench_prints_three_networks(fake_data, capsys):
    result = main(["--rounds", "1", "--val-size", "200"])
    out = capsys.readouterr().out
    for name in ("batch norm (unfolded)", "batch norm (folded)", "no batch norm (ELU + He)"):
        assert name in out and 0.0 <= result["accuracy"][name] <= 1.0
    assert result["accuracy"]["batch norm (folded)"] == result["accuracy"]["batch norm (unfolded)"]
    assert result["max_logit_diff"] <= 1e-5
    assert "folded / no-BN" in out
