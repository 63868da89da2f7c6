"""Exact resume: a run killed by SIGKILL mid-epoch and resumed with ``resume=true`` ends with the
same test accuracy and bit-identical weights as a run that was never interrupted."""

import json
import os
import random
import subprocess

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import compose_config
from tests.probes import cli, cli_env

# 1000 training images / 50 = 20 steps an epoch, 2 epochs; last.ckpt every 7 steps, so most
# kills land between two mid-epoch checkpoints and the resumed run repeats a few steps.
# Dropout and momentum make the RNG state and the optimizer state matter.
RUN = [
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
    "data.val_size=200",
    "data.batch_size=50",
    "model.hidden=[32,16]",
    "model.dropout=0.2",
    "+optimizer.momentum=0.9",
    "optimizer.lr=0.002",
    "callbacks.last_checkpoint.every_n_train_steps=7",
    "seed=3",
]
STEPS = 40

# Everything that carries state must resume exactly: add a case per stateful piece (a scheduler,
# a callback with a schedule or counters), e.g. "plateau": ["scheduler=plateau"]. Each case
# costs three short runs (~30 s of CPU).
CASES = {
    "dropout+momentum": [],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.slow  # spawns python -m dnnkit.train
def test_sigkill_mid_epoch_then_resume_is_exact(case, fake_data, tmp_path):
    run = [*RUN, *CASES[case]]
    reference = run_recipe(compose_config(run), tmp_path / "ref")[0]

    # any step after the first checkpoint; DNNKIT_TEST_KILL_AT replays a given one
    kill_at = int(os.environ.get("DNNKIT_TEST_KILL_AT") or random.randint(8, STEPS - 2))
    run_dir = tmp_path / "killed"
    args = [*run, f"hydra.run.dir={run_dir}"]
    killer = f"+callbacks.killer={{_target_: tests.probes.KillAtStep, step: {kill_at}}}"
    proc = subprocess.run(cli(*args, killer), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == -9, f"kill at step {kill_at}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    last = run_dir / "train" / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < saved_step <= kill_at and not (run_dir / "train" / "result.json").exists()

    # without resume=true the interrupted run is not silently started over
    with pytest.raises(DnnkitError, match="holds an interrupted run .*; pass resume=true to continue it"):
        run_recipe(compose_config(run), run_dir)

    proc = subprocess.run(cli(*args, killer, "resume=true"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((run_dir / "train" / "result.json").read_text())

    msg = f"killed before step {kill_at}, resumed from step {saved_step}"
    import csv

    with open(run_dir / "train" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/acc")]
    assert val_epochs == [0, 1], f"{msg}: metrics.csv has validation rows for epochs {val_epochs}"
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert steps == sorted(set(steps)), f"{msg}: metrics.csv repeats or reorders steps {steps}"
    for key in ("test/acc", "test/loss", "val/acc", "val/loss"):  # bit-equal, not approximately
        assert resumed["metrics"][key] == reference.metrics[key], f"{msg}: {key}"
    for name in ("last.ckpt", "best.ckpt"):
        ref = read_state_dict(tmp_path / "ref" / "train" / "checkpoints" / name)
        got = read_state_dict(run_dir / "train" / "checkpoints" / name)
        assert ref.keys() == got.keys()
        for key in ref:
            assert torch.equal(ref[key], got[key]), f"{msg}: {name} {key} differs"
    ref_last = torch.load(tmp_path / "ref" / "train" / "checkpoints" / "last.ckpt", weights_only=True)
    got_last = torch.load(last, weights_only=True)
    assert got_last["global_step"] == ref_last["global_step"] == STEPS
    for a, b in zip(ref_last["optimizer_states"][0]["state"].values(), got_last["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"]), msg
