"""Gradient-health statistics and diagnosis in plain PyTorch: no Trainer, no Lightning."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.nn.health import (
    REMEDIES,
    Thresholds,
    diagnose,
    find_layers,
    layer_grad_norms,
    layer_list,
    no_grad_layers,
    record_metrics,
    snapshot,
    summary,
    update_ratios,
)


def record(step: int, grads: dict[str, float], act: dict | None = None) -> dict:
    return {"step": step, "grad": grads, "update": {k: 1e-3 for k in grads}, "act": act or {}}


@pytest.mark.slow  # a fresh interpreter importing torch: ~5 s
def test_importing_the_helpers_loads_no_lightning():
    code = "import sys, dnnkit.nn.health; assert not [m for m in sys.modules if m.startswith('lightning')]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_step_of_a_plain_loop():
    torch.manual_seed(0)
    net = MLP(6, [5, 5], 3)
    net.hidden1.requires_grad_(False)  # frozen: no gradient, no update, not "exploded"
    layers = find_layers(net)
    before = snapshot(layers)
    assert before["hidden1"] == [] and len(before["hidden2"]) == 2
    nn.functional.cross_entropy(net(torch.randn(8, 6)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
    grads = layer_grad_norms(layers)
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.output.parameters()]))
    assert grads["output"] == pytest.approx(float(expected)) and math.isnan(grads["hidden1"])
    assert no_grad_layers(layers) == ["hidden1"]
    old = torch.cat([p.detach().flatten() for p in net.output.parameters()])
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    ratios = update_ratios(layers, before)
    new = torch.cat([p.detach().flatten() for p in net.output.parameters()])
    assert ratios["output"] == pytest.approx(float((new - old).norm() / old.norm()), rel=1e-5)
    assert math.isnan(ratios["hidden1"]) and ratios["hidden2"] > 0
    history = [{"step": 1, "grad": grads, "update": ratios, "act": {}, "no_grad": no_grad_layers(layers)}]
    assert diagnose(history) == []  # the frozen layer's NaN is not an explosion


def test_thresholds_live_in_one_frozen_dataclass():
    t = Thresholds()
    assert dataclasses.asdict(t) == {"vanishing_ratio": 1e-2, "sustained": 0.75, "explode_growth": 100.0,
                                     "dead_share": 0.5, "saturated_share": 0.5, "min_samples": 3}
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.vanishing_ratio = 0.1
    with pytest.raises(DnnkitError, match="dead_share must be a number in \\(0, 1.0\\], got 1.5"):
        Thresholds(dead_share=1.5)
    with pytest.raises(DnnkitError, match="min_samples must be a positive integer, got 0"):
        Thresholds(min_samples=0)


def test_diagnose_reads_its_limits_from_the_thresholds():
    history = [record(s, {"hidden1": 5e-3, "output": 1.0}) for s in range(4)]  # 1/200 of the top layer
    assert [f.problem for f in diagnose(history)] == ["vanishing"]
    assert diagnose(history, Thresholds(vanishing_ratio=1e-3)) == []
    assert diagnose(history, vanishing_ratio=1e-3) == []  # a keyword replaces one field
    assert diagnose(history, min_samples=5) == []
    found = diagnose(history, Thresholds(vanishing_ratio=1e-3), vanishing_ratio=1e-2)  # the keyword wins
    assert [f.problem for f in found] == ["vanishing"] and "more than 100 times smaller" in found[0].message


def test_remedies_are_worded_for_any_lightning_module():
    text = REMEDIES["exploding"]
    assert text.startswith("lower the learning rate") and "clip gradients" in text
    assert "callbacks=[default,gradient_clipping]" in text and "Trainer(gradient_clip_val=" in text
    message = diagnose([record(s, {"hidden1": math.inf, "output": 1.0}) for s in range(3)])[0].message
    assert message.endswith(f"Remedies: {text}.")
    assert set(REMEDIES) == {"vanishing", "exploding", "dying", "saturated"}


def test_record_metrics_and_summary_without_a_trainer():
    rec = record(0, {"hidden1": 0.5, "output": 1.0}, {"hidden1": {"mean": 0.1, "std": 0.2, "dead": 0.25}})
    assert record_metrics(rec) == {"grad/hidden1": 0.5, "grad/hidden1_over_top": 0.5, "update/hidden1": 1e-3,
                                   "act/hidden1_dead": 0.25, "grad/output": 1.0, "update/output": 1e-3}
    text = summary([rec], [], every_n_steps=5)
    assert text.splitlines()[0] == "Gradient health: 1 samples every 5 steps, up to step 0; medians of the last 1"
    assert "25%" in text and text.endswith("No vanishing or exploding gradients, dying or saturated units found.")
    assert summary([], []) == "Gradient health: no step was sampled."


def test_layer_list_shortens_long_lists():
    assert layer_list(["a", "b"]) == "a, b"
    names = [f"hidden{i}" for i in range(1, 21)]
    assert layer_list(names) == "hidden1, hidden2, hidden3, hidden4, hidden5, ... hidden18, hidden19, hidden20 (20 layers)"
