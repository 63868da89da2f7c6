"""Smoke test of ``python -m bench.seed_curves`` over finished run folders (no training)."""

import json

import pytest

from bench import seed_curves
from tests.bench.sections import number, section, table


def fake_run(folder, stage, accs):
    folder.mkdir(parents=True)
    history = [{"epoch": e, "val/acc": a} for e, a in enumerate(accs, start=1)]
    (folder / "results.json").write_text(json.dumps([{"stage": stage, "history": history}]))
    return folder


def test_seed_curves_tables_and_plots_finished_runs(tmp_path, results):
    runs = [fake_run(tmp_path / "bn", "mnist_bn", [0.9] + [0.95] * 18 + [0.97]),
            fake_run(tmp_path / "reuse", "reuse", [0.91, 0.93])]
    plot = results.parent / "img" / "curves.png"
    assert seed_curves.main(["--runs", *map(str, runs), "--out", str(plot), "--results", str(results)]) == 0
    assert plot.stat().st_size > 1000
    text = section(results, "seed_curves")
    rows = table(text, "recipe")
    assert list(rows) == ["mnist_bn", "reuse"]
    assert [number(c) for c in rows["mnist_bn"]] == [0.8894, 0.9, 0.9712, 0.97]
    assert rows["reuse"][3] == "nan"  # no epoch 20 in that run
    assert text.startswith("Command: `python -m bench.seed_curves --runs ")


def test_seed_curves_refuses_run_folders_without_its_stages(tmp_path, results):
    with pytest.raises(SystemExit) as exit_:
        seed_curves.main(["--runs", str(fake_run(tmp_path / "x", "other", [0.5])), "--no-write"])
    assert exit_.value.code == 2


def test_seed_curves_with_no_write_only_prints(tmp_path, results, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default docs/img/seed_curves.png would land
    before = results.read_text()
    run = fake_run(tmp_path / "bn", "mnist_bn", [0.9])
    assert seed_curves.main(["--runs", str(run), "--results", str(results), "--no-write"]) == 0
    assert "| mnist_bn | 0.8894 | 0.9000 | 0.9712 | nan |" in capsys.readouterr().out
    assert results.read_text() == before and not (tmp_path / "docs" / "img").exists()
