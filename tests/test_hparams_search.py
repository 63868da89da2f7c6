"""The Optuna search (``-m hparams_search=optuna``, docs/tracking.md): ``optimized_metric`` is what
``python -m dnnkit.train`` returns, the direction follows its name unless set, the sweep table
lists the trials best first, and a metric the run does not log fails before training."""

from __future__ import annotations

import json
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dnnkit import hydra_callbacks
from dnnkit.errors import DnnkitError
from dnnkit.hydra_callbacks import SweepTable, checked_choices, metric_direction, sweep_direction
from dnnkit.preflight import preflight
from dnnkit.results import StageResult
from dnnkit.stages import config_dir, stage_configs
from tests.conftest import FAST, compose_config
from tests.probes import cli, cli_env


def sweeper(overrides: list[str]):
    """``hydra.sweeper`` of the composed config, resolved (as the sweeper is built)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    return cfg, OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)


def test_the_direction_follows_the_metric_unless_set():
    assert [metric_direction(m) for m in ("val/acc", "test/accuracy", "val/loss", "train_loss", "val/top5_acc")] == [
        "maximize", "maximize", "minimize", "minimize", "maximize"]
    for metric in ("val/score", None, "acc_loss"):
        with pytest.raises(DnnkitError, match="set hydra.sweeper.direction=maximize or minimize"):
            metric_direction(metric)
    cfg, conf = sweeper(["hparams_search=optuna"])
    assert conf["direction"] == "maximize" and sweep_direction(cfg) == "maximize"  # optimized_metric: val/acc
    assert conf["_target_"].endswith("OptunaSweeper") and conf["study_name"] == "train" and conf["sampler"]["seed"] == 42
    assert "optimizer.lr" in conf["params"]
    assert sweeper(["hparams_search=optuna", "optimized_metric=val/loss"])[1]["direction"] == "minimize"
    assert sweeper(["hparams_search=optuna", "hydra.sweeper.direction=minimize"])[1]["direction"] == "minimize"
    assert sweep_direction(sweeper([])[0]) is None  # the basic sweeper: a grid, in job order
    with pytest.raises(DnnkitError, match="hydra.sweeper.direction must be maximize or minimize, got 'up'"):
        sweep_direction(sweeper(["hparams_search=optuna", "hydra.sweeper.direction=up"])[0])


def fake_trial(folder, overrides, metrics):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    result = StageResult("train", 42, folder / "train", metrics, [], None, 1.0, 1)
    (folder / "results.json").write_text(json.dumps([result.to_json()]))


@pytest.mark.parametrize("metric, direction, order", [("val/acc", "maximize", ["1", "0", "2"]), ("val/loss", "minimize", ["2", "0", "1"])])
def test_the_sweep_table_lists_trials_best_first(tmp_path, capsys, metric, direction, order):
    for job, lr, acc, loss in (("0", "0.0123456789", 0.80, 0.6), ("1", "0.0456789012", 0.90, 0.7), ("2", "0.00123456789", 0.70, 0.5)):
        fake_trial(tmp_path / job, [f"optimizer.lr={lr}", "data.batch_size=64", "model.dropout=0.123456789", "hparams_search=optuna"],
                   {"val/acc": acc, "test/acc": acc - 0.01, "val/loss": loss})
    fake_trial(tmp_path / "3", ["optimizer.lr=0.1", "data.batch_size=64", "hparams_search=optuna"], {"test/acc": 0.5})  # no metric: last
    config = OmegaConf.create({"name": "demo", "optimized_metric": metric, "report": {"metrics": ["val/acc", "test/acc"]},
                               "hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"direction": direction}}})
    SweepTable().on_multirun_end(config=config)
    rows = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ") and ": " in line]
    assert [r.split("|")[1].strip().split(":")[0] for r in rows] == [*order, "3"]
    assert rows[order.index("1")].startswith("| 1: lr=0.04568 dropout=0.1235 |")  # short keys, 4 digits: fits the table
    title = f"demo sweep: 4 jobs ({tmp_path}), best {metric} ({'highest' if direction == 'maximize' else 'lowest'}) first"
    assert title in " ".join(capsys.readouterr().out.split())  # the terminal wraps it
    assert (metric == "val/loss") == ("val/loss" in (tmp_path / "results.md").read_text())  # the objective is a column


def test_optimized_metric_the_run_does_not_log_fails_before_training(fake_data):
    for overrides, message in (
        (["optimized_metric=val/accuracy"], r"optimized_metric='val/accuracy' is not a key stage 'train' logs; "
                                            r"valid: train/loss, val/loss, val/acc, test/loss, test/acc$"),
        (["optimized_metric=test/acc", "test=false"], r"optimized_metric='test/acc' is not a key stage 'train' logs with test=false; "
                                                      r"valid: train/loss, val/loss, val/acc$"),
        (["+stages={first: {}, last: {}}", "optimized_metric=val_acc"], r"^optimized_metric='val_acc' is not a key stage 'last' logs"),
    ):
        with pytest.raises(DnnkitError, match=message):
            preflight(stage_configs(compose_config([*FAST, *overrides])))
    preflight(stage_configs(compose_config([*FAST, "optimized_metric=val/loss"])))
    preflight(stage_configs(compose_config([*FAST, "optimized_metric=null"])))  # a run need not return anything


def test_an_unknown_search_or_a_missing_plugin_is_one_line(monkeypatch):
    with pytest.raises(DnnkitError, match=r"^unknown hparams_search 'optune'; valid: optuna$"):
        checked_choices(["-m", "hparams_search=optune"])
    assert checked_choices(["-m", "hparams_search=optuna"]) == ["-m", "hparams_search=optuna"]
    monkeypatch.setattr(hydra_callbacks, "installed", lambda module: False)
    with pytest.raises(DnnkitError, match=r"needs the Hydra plugin hydra_optuna_sweeper: pip install 'dnnkit\[optuna\]'$"):
        checked_choices(["-m", "hparams_search=optuna"])


@pytest.mark.slow  # spawns python -m dnnkit.train: three tiny trials
def test_cli_optuna_search_ends_with_the_best_trial_first(fake_data, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        cli("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *FAST, f"hydra.sweep.dir={sweep}"),
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    returned = {job.name: json.loads((job / "results.json").read_text())[-1]["metrics"]["val/acc"] for job in sweep.glob("[0-9]*")}
    assert len(returned) == 3
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(returned.values()))  # maximised: val/acc is an accuracy
    rows = [line for line in (sweep / "results.md").read_text().splitlines() if line.startswith("| ") and ": lr=" in line]
    assert [r.split("|")[1].strip().split(":")[0] for r in rows] == sorted(returned, key=returned.get, reverse=True)
    assert " ".join(proc.stdout.split()).count("best val/acc (highest) first") == 1
