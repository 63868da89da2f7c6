"""The plain-Python examples in examples/: each runs as a user would run it (a subprocess, slow),
and what they claim holds on their own modules (quick)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnnkit.callbacks import LayerFreezing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def load(name: str):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_every_example_has_a_smoke_test():
    assert sorted(p.stem for p in EXAMPLES.glob("*.py")) == ["callbacks_in_your_trainer", "subclass_classifier"]


# ---------------------------------------------------------------- callbacks_in_your_trainer


def test_layer_freezing_freezes_exactly_the_named_layers_of_a_plain_module():
    example = load("callbacks_in_your_trainer")
    net = example.SmallConvNet()
    freezing = LayerFreezing(frozen=example.FROZEN, verbose=False)
    freezing.setup(None, net, "fit")
    assert list(freezing.frozen_layers) == ["features.0", "features.1"]
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"}
    net.train()  # Lightning does this every epoch: the frozen layers stay in eval mode, the others follow
    assert [n for n, m in net.named_modules() if n and not m.training] == ["features.0", "features.1"]
    optimizer = net.configure_optimizers()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters())) - len(frozen)


def test_its_data_are_learnable_and_the_corrupt_images_are_nan():
    example = load("callbacks_in_your_trainer")
    train, val = example.synthetic_loaders(n_train=100, n_val=20, corrupt=2)
    x, y = train.dataset.tensors
    assert x.shape == (100, 1, 28, 28) and int(x.flatten(1).isnan().any(1).sum()) == 2
    assert set(y.tolist()) <= set(range(10)) and not val.dataset.tensors[0].isnan().any()
    assert example.SmallConvNet()(x[:4]).shape == (4, 10)


@pytest.mark.slow
def test_callbacks_example_runs_and_reports_what_the_callbacks_did():
    out = run_example("callbacks_in_your_trainer", "--epochs", "2")
    assert re.search(r"^epoch 2/2  train/loss \d\.\d{4}  val/loss \d\.\d{4}  val/acc \d\.\d{4}", out, re.MULTILINE), out
    assert re.search(r"^features\.0 +yes +unchanged$", out, re.MULTILINE), out
    assert re.search(r"^features\.1 +yes +unchanged \(running statistics too\)$", out, re.MULTILINE), out
    assert re.search(r"^features\.3 +no +changed$", out, re.MULTILINE), out
    assert re.search(r"^head +no +changed$", out, re.MULTILINE), out
    clipped, steps = map(int, re.search(r"GradientClipping: clipped (\d+) of (\d+) steps", out).groups())
    assert 0 < clipped < steps == 80, out  # 2 epochs of 40 batches; it clips some steps, not all
    assert "NonFiniteGuard: skipped 2 steps whose loss was not finite; every weight is finite: True" in out, out
    val_acc = float(re.search(r"^epoch 2/2 .*val/acc (\d\.\d+)", out, re.MULTILINE).group(1))
    assert val_acc > 0.9, out  # it learns, from the trainable layers only, with a NaN image in every epoch


# ---------------------------------------------------------------- subclass_classifier


def test_subclass_example_adds_its_penalty():
    example = load("subclass_classifier")
    net = example.L2Classifier(example.MLP(784, [8], 10), l2=1.0)
    logits, y = torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
    assert net.loss(logits, y) > example.dnnkit.Classifier.loss(net, logits, y)


@pytest.mark.slow
def test_subclass_example_runs(fake_data):
    out = run_example(
        "subclass_classifier",
        "--epochs",
        "2",
        "--limit-batches",
        "3",
        "--val-size",
        "200",
        env={"DNNKIT_DATA_DIR": str(fake_data)},
    )
    assert re.search(r"^epoch 2/2 .*val/acc \d\.\d{4}", out, re.MULTILINE), out
    assert re.search(r"^test: .*test/acc \d\.\d{4}", out, re.MULTILINE), out
