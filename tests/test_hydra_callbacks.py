"""Hydra callbacks: one table at the end of a sweep, a clear error for an unwritable run folder."""

import json
import subprocess

import pytest
from omegaconf import OmegaConf

from dnnkit.hydra_callbacks import CheckOutputDir, SweepTable, sweep_results
from dnnkit.results import StageResult
from tests.conftest import FAST
from tests.probes import cli, cli_env


def fake_job(folder, overrides, acc):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    result = StageResult("train", 42, folder / "train", {"val/acc": acc, "test/acc": acc - 0.01}, [], None, 1.0, 2)
    (folder / "results.json").write_text(json.dumps([result.to_json()]))


def test_sweep_table_labels_jobs_by_what_differs(tmp_path, capsys):
    fake_job(tmp_path / "0", ["optimizer.lr=0.1", "trainer.max_epochs=2"], 0.90)
    fake_job(tmp_path / "1", ["optimizer.lr=0.01", "trainer.max_epochs=2"], 0.80)
    fake_job(tmp_path / "10", ["optimizer.lr=0.001", "trainer.max_epochs=2"], 0.70)
    (tmp_path / "2").mkdir()  # a job that failed: no results.json
    assert [r.stage for r in sweep_results(tmp_path)] == ["optimizer.lr=0.1", "optimizer.lr=0.01", "optimizer.lr=0.001"]
    config = OmegaConf.create({"name": "demo", "hydra": {"sweep": {"dir": str(tmp_path)}}, "report": {"metrics": ["val/acc", "test/acc"]}})
    SweepTable().on_multirun_end(config=config)
    table = (tmp_path / "results.md").read_text()
    assert "| optimizer.lr=0.01 | 1 | 2 | 0.8000 | 0.7900 |" in table
    assert "demo sweep: 3 jobs" in capsys.readouterr().out


def test_unwritable_run_folder_exits_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    config = OmegaConf.create({"hydra": {"run": {"dir": str(tmp_path / "afile" / "run")}}})
    with pytest.raises(SystemExit) as exit_:
        CheckOutputDir().on_run_start(config=config)
    assert exit_.value.code == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_multirun_ends_with_one_table(fake_data, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        cli("-m", "optimizer.lr=0.1,0.01", *FAST, f"hydra.sweep.dir={sweep}"),
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("train sweep: 2 jobs") == 1
    table = (sweep / "results.md").read_text()
    assert "| optimizer.lr=0.1 |" in table and "| optimizer.lr=0.01 |" in table
