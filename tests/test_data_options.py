"""End to end through ``python -m dnnkit.train``: ``data=arrays`` (an .npz of feature vectors and
one of images), ``data=torchvision data.name=KMNIST`` (fake files in torchvision's layout), and
``data.augment=[crop,flip]`` killed mid-epoch and resumed, exactly as a run never interrupted."""

from __future__ import annotations

import json
import os
import random
import subprocess

import numpy as np
import pytest
import torch

from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import compose_config, make_images, write_fake_dataset
from tests.probes import cli, cli_env
from tests.test_resume import RUN, STEPS

pytestmark = pytest.mark.slow  # spawns python -m dnnkit.train

QUICK = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "model.hidden=[32]", "optimizer.lr=0.1"]


def train(tmp_path, *args: str) -> dict:
    run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    proc = subprocess.run(cli(*args, f"hydra.run.dir={run}"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((run / "train" / "result.json").read_text())
    weights = read_state_dict(run / "train" / "checkpoints" / "best.ckpt")
    return {"metrics": result["metrics"], "out": proc.stdout + proc.stderr, "inputs": weights["model.hidden1.linear.weight"].shape[1],
            "outputs": weights["model.output.weight"].shape[0]}


def test_arrays_of_feature_vectors_and_of_images(tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    features = rng.normal(size=(600, 7)) + 2.5 * np.eye(3, 7)[y]  # three separable blobs in 7-D
    np.savez(tmp_path / "tab.npz", x_train=features, y_train=y, class_names=np.array(["a", "b", "c"]))
    tab = train(tmp_path, "data=arrays", f"data.path={tmp_path / 'tab.npz'}", "data.normalize=true", "data.batch_size=50", *QUICK)
    assert "tab.npz: no x_test/y_test, so 120 of the 600 training samples are held out as the test split" in tab["out"]
    assert (tab["inputs"], tab["outputs"]) == (7, 3) and tab["metrics"]["test/acc"] > 0.8  # chance is 1/3

    images, labels = make_images(500, 3)  # 28x28 bands: class c lights rows 2c..2c+1
    images = images[:, ::2, ::2].numpy()  # 14x14, channels-last with one channel
    test_images, test_labels = make_images(200, 4)
    np.savez_compressed(tmp_path / "img.npz", x_train=images[..., None], y_train=labels.numpy(),
                        x_test=test_images[:, ::2, ::2].numpy()[..., None], y_test=test_labels.numpy())
    img = train(tmp_path, "data=arrays", f"data.path={tmp_path / 'img.npz'}", "data.batch_size=50", *QUICK)
    assert (img["inputs"], img["outputs"]) == (14 * 14, 10)  # model.n_inputs and n_outputs from the data
    assert "img.npz: 450 train, 50 val, 200 test images" in img["out"] and img["metrics"]["test/acc"] > 0.5


def test_torchvision_kmnist_offline(tmp_path):
    root = tmp_path / "tv"
    write_fake_dataset(root / "KMNIST" / "raw", n_train=600, n_test=200, gz=False)
    run = train(tmp_path, "data=torchvision", "data.name=KMNIST", f"data.root={root}", "data.download=false",
                "data.batch_size=50", "data.val_size=100", *QUICK)
    assert "KMNIST: 500 train, 100 val, 200 test images" in run["out"] and run["metrics"]["test/acc"] > 0.5


def test_augmented_run_killed_mid_epoch_resumes_exactly(fake_data, tmp_path):
    run = [*RUN, "data.augment=[crop,flip]"]
    reference = run_recipe(compose_config(run), tmp_path / "ref")[0]

    kill_at = int(os.environ.get("DNNKIT_TEST_KILL_AT") or random.randint(8, STEPS - 2))
    run_dir = tmp_path / "killed"
    args = [*run, f"hydra.run.dir={run_dir}", f"+callbacks.killer={{_target_: tests.probes.KillAtStep, step: {kill_at}}}"]
    proc = subprocess.run(cli(*args), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == -9, f"kill at step {kill_at}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
    saved_step = torch.load(run_dir / "train" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    proc = subprocess.run(cli(*args, "resume=true"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mnist: augmenting the training split: ['crop', 'flip']" in proc.stdout + proc.stderr

    msg = f"killed before step {kill_at}, resumed from step {saved_step}"
    resumed = json.loads((run_dir / "train" / "result.json").read_text())
    for key in ("test/acc", "test/loss", "val/acc", "val/loss"):  # bit-equal, not approximately
        assert resumed["metrics"][key] == reference.metrics[key], f"{msg}: {key}"
    ref = read_state_dict(tmp_path / "ref" / "train" / "checkpoints" / "last.ckpt")
    got = read_state_dict(run_dir / "train" / "checkpoints" / "last.ckpt")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), msg
