"""End to end: the recipe runner and ``python -m dnnkit.train`` on synthetic data."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def test_single_stage_run_writes_everything(fake_data, tmp_path, capsys):
    cfg = compose_config(FAST + ["trainer.max_epochs=2"])
    results = run_recipe(cfg, tmp_path / "run")
    assert len(results) == 1 and results[0].epochs == 2
    assert {"val/acc", "test/acc", "train/loss"} <= set(results[0].metrics)
    stage = tmp_path / "run" / "train"
    assert (stage / "metrics.csv").is_file()
    assert (stage / "checkpoints" / "best.ckpt").is_file() and (stage / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "run" / "results.md").read_text().count("| train |") == 1
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "val/acc" in out


def test_later_stage_starts_from_earlier_weights(fake_data, tmp_path):
    stages = (
        "+stages={A: {data: {classes: [0,1,2,3]}}, "
        "B: {data: {classes: [4,5]}, reuse: {from: A, layers: 'hidden[12]'}, trainer: {limit_train_batches: 0}, seeds: [0, 1], "
        "published: {metric: test/acc, value: 0.99}}}"
    )
    cfg = compose_config(FAST + [stages])  # B does not train: its weights stay as copied
    results = run_recipe(cfg, tmp_path / "run")
    assert [(r.stage, r.seed) for r in results] == [("A", 42), ("B", 0), ("B", 1)]
    a = read_state_dict(results[0].best_checkpoint)
    for b_run in results[1:]:
        b = read_state_dict(b_run.best_checkpoint)
        assert torch.equal(a["model.hidden1.linear.weight"], b["model.hidden1.linear.weight"])
        assert b["model.output.weight"].shape[0] == 2
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| B | 2 |" in table and "test/acc 0.9900" in table


def test_finished_run_is_not_overwritten(fake_data, tmp_path):
    cfg = compose_config(FAST)
    run_recipe(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "train" / "result.json").read_text()
    with pytest.raises(DnnkitError, match="already holds a finished run; pass resume=true"):
        run_recipe(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "train" / "result.json").read_text() == before
    again = run_recipe(compose_config(FAST + ["resume=true"]), tmp_path / "run")
    assert again[0].metrics == json.loads(before)["metrics"]


def test_bad_learning_rate_fails_before_training(fake_data, tmp_path):
    with pytest.raises(DnnkitError, match="optimizer.lr must be a positive number, got -0.1"):
        run_recipe(compose_config(FAST + ["optimizer.lr=-0.1"]), tmp_path / "run")


@pytest.mark.slow  # spawns python -m dnnkit.train
def test_cli_runs_a_recipe(fake_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dnnkit.train", "+recipe=mnist_bn", *FAST, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mnist_bn: results" in proc.stdout and "val/acc 0.9712" in proc.stdout
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow  # spawns python -m dnnkit.train
def test_cli_bad_value_is_one_message(fake_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dnnkit.train", "model.activation=relu6", *FAST, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2
    assert "unknown activation 'relu6'; valid:" in proc.stderr and "Traceback" not in proc.stderr


def test_reuse_with_drop_and_add_is_one_stage(fake_data, tmp_path):
    stages = (
        "+stages={A: {model: {hidden: [40, 30, 30, 30, 30]}}, "
        "B: {model: {hidden: [40, 30, 30, 30, 30]}, reuse: {from: A, drop: 'hidden[45]|output', add: [20]}, "
        "trainer: {limit_train_batches: 0}}}"
    )
    results = run_recipe(compose_config(FAST + [stages]), tmp_path / "run")
    a, b = (read_state_dict(r.best_checkpoint) for r in results)
    assert b["model.hidden4.linear.weight"].shape == (20, 30) and b["model.output.weight"].shape == (10, 20)
    assert "model.hidden5.linear.weight" not in b
    for k in ("model.hidden1.linear.weight", "model.hidden3.linear.bias"):
        assert torch.equal(a[k], b[k])
