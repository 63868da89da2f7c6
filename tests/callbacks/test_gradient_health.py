"""GradientHealth: layer discovery, statistics, the diagnosis, and the vanishing recipe."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dnnkit.callbacks import GradientHealth
from dnnkit.callbacks.gradient_health import activation_stats, diagnose, find_activations, find_layers, short_names
from dnnkit.errors import DnnkitError
from dnnkit.modules import Classifier
from dnnkit.nn import MLP
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


class PlainNet(L.LightningModule):
    """Not a dnnkit module: no hidden1..N names, activations as separate modules."""

    def __init__(self, activation: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), activation(), nn.Linear(16, 16), activation(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 96) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=16)


def trainer(tmp_path, callback, max_epochs: int = 2, logger=False) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, callbacks=[callback], logger=logger, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def record(step: int, grads: dict[str, float], act: dict | None = None) -> dict:
    return {"step": step, "grad": grads, "update": {k: 1e-3 for k in grads}, "act": act or {}}


# ----------------------------------------------------------------------------- pure helpers


def test_find_layers_dnnkit_names_inside_a_module():
    module = Classifier(MLP(784, [8, 8, 8], 10, activation="relu"))
    layers = find_layers(module)
    assert list(layers) == ["model.hidden1", "model.hidden2", "model.hidden3", "model.output"]
    assert list(short_names(list(layers)).values()) == ["hidden1", "hidden2", "hidden3", "output"]
    acts = find_activations(module, layers)
    assert all(isinstance(acts[f"model.hidden{i}"], nn.ReLU) for i in (1, 2, 3)) and "model.output" not in acts
    assert list(find_layers(module, "hidden[12]")) == ["model.hidden1", "model.hidden2"]


def test_find_layers_any_module_and_bad_patterns():
    net = PlainNet()
    assert list(find_layers(net)) == ["body.0", "body.2", "body.4"]
    assert list(short_names(list(find_layers(net))).values()) == ["0", "2", "4"]
    assert isinstance(find_activations(net, find_layers(net))["body.2"], nn.Tanh)
    with pytest.raises(DnnkitError, match="'head' matches no layer of PlainNet; layers are: body, body.0"):
        find_layers(net, "head")
    with pytest.raises(DnnkitError, match="found no layer to watch in ReLU"):
        find_layers(nn.ReLU())


def test_activation_stats():
    s = activation_stats(torch.tensor([[0.001, 0.5], [0.999, 0.5]]), nn.Sigmoid())
    assert float(s["saturated"]) == 0.5 and float(s["mean"]) == pytest.approx(0.5)
    assert float(activation_stats(torch.tensor([[0.99, 0.1]]), nn.Tanh())["saturated"]) == 0.5
    relu = activation_stats(torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]]), nn.ReLU())
    assert float(relu["dead"]) == pytest.approx(1 / 3)
    elu = activation_stats(torch.tensor([[-0.5, 1.0]]), nn.ELU())
    assert "dead" not in elu and float(elu["inactive"]) == 0.5  # ELU units below 0 still get gradients
    conv = activation_stats(torch.zeros(2, 4, 3, 3).index_fill_(1, torch.tensor([0]), 1.0), nn.ReLU())
    assert float(conv["dead"]) == 0.75  # units are channels
    assert set(activation_stats(torch.randn(4, 3))) == {"mean", "std"}


def test_diagnose_vanishing_names_the_lower_layers():
    history = [record(s, {"hidden1": 1e-7, "hidden2": 1e-4, "hidden3": 0.5, "output": 1.0}) for s in range(8)]
    findings = diagnose(history)
    assert [f.problem for f in findings] == ["vanishing"]
    assert findings[0].layers == ["hidden1", "hidden2"]
    message = findings[0].message
    assert "hidden1, hidden2" in message and "output" in message
    assert "He or Xavier/Glorot" in message and "nonsaturating" in message and "batch norm" in message


def test_diagnose_vanishing_must_be_sustained():
    grads = [{"hidden1": 1e-7 if s < 3 else 0.3, "output": 1.0} for s in range(8)]  # only at the start
    assert diagnose([record(s, g) for s, g in enumerate(grads)]) == []


def test_diagnose_exploding_nonfinite_and_growing():
    nan = diagnose([record(s, {"hidden1": 1.0 if s < 5 else math.inf, "output": 1.0}) for s in range(8)])
    assert nan[0].problem == "exploding" and nan[0].layers == ["hidden1"] and "step 5" in nan[0].message
    assert "clipping" in nan[0].message
    growing = diagnose([record(s, {"hidden1": 10.0 ** s, "output": 10.0 ** s}) for s in range(8)])
    assert [f.problem for f in growing] == ["exploding"] and growing[0].layers == ["hidden1", "output"]


def test_diagnose_dying_and_saturated_units():
    act = {"hidden1": {"mean": 0.1, "std": 0.1, "dead": 0.8}, "hidden2": {"mean": 0.5, "std": 0.4, "saturated": 0.7},
           "hidden3": {"mean": 0.1, "std": 1.0, "inactive": 0.9}}
    grads = {"hidden1": 0.5, "hidden2": 0.5, "hidden3": 0.5, "output": 1.0}
    findings = {f.problem: f for f in diagnose([record(s, grads, act) for s in range(6)])}
    assert set(findings) == {"dying", "saturated"}
    assert findings["dying"].layers == ["hidden1"] and "leaky ReLU" in findings["dying"].message
    assert findings["saturated"].layers == ["hidden2"]


def test_healthy_history_and_too_few_samples_flag_nothing():
    assert diagnose([record(s, {"hidden1": 0.8, "output": 1.0}) for s in range(10)]) == []
    assert diagnose([record(0, {"hidden1": 1e-9, "output": 1.0})]) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"every_n_steps": 0}, "every_n_steps must be a positive integer, got 0"),
    ({"every_n_steps": 2.5}, "every_n_steps must be a positive integer, got 2.5"),
    ({"vanishing_ratio": 2.0}, "vanishing_ratio must be a number in \\(0, 1.0\\], got 2.0"),
    ({"layers": "hidden["}, "layer pattern 'hidden\\[' is not a valid regular expression"),
])
def test_bad_arguments_fail_in_the_constructor(kwargs, message):
    with pytest.raises(DnnkitError, match=message):
        GradientHealth(**kwargs)


def test_the_callback_calls_the_plain_helpers_with_its_thresholds():
    from dnnkit.nn import health

    assert diagnose is health.diagnose and find_layers is health.find_layers and activation_stats is health.activation_stats
    assert GradientHealth(vanishing_ratio=1e-3, dead_share=0.9).thresholds == health.Thresholds(vanishing_ratio=1e-3, dead_share=0.9)
    hooks = [n for n, v in vars(GradientHealth).items() if callable(v) and not n.startswith("_") and hasattr(L.Callback, n)]
    assert {"on_fit_start", "on_before_optimizer_step", "state_dict", "load_state_dict"} <= set(hooks)
    assert all(getattr(getattr(GradientHealth, n), "__override__", False) for n in hooks)


# ----------------------------------------------------------------------------- callback


def test_callback_on_a_plain_module_records_logs_and_saves(tmp_path):
    health = GradientHealth(every_n_steps=4)
    module = PlainNet()
    t = trainer(tmp_path, health, logger=L.pytorch.loggers.CSVLogger(tmp_path, name="", version=""))
    t.fit(module, loader())  # 6 steps per epoch, 12 in all: steps 0, 4, 8 sampled
    assert [h["step"] for h in health.history] == [1, 5, 9]  # recorded after the step
    first = health.history[0]
    assert list(first["grad"]) == ["0", "2", "4"]
    assert all(v > 0 for v in first["grad"].values()) and all(0 < v < 1 for v in first["update"].values())
    assert set(first["act"]["0"]) == {"mean", "std", "saturated"}  # the Tanh after body.0
    assert set(first["act"]["4"]) == {"mean", "std"}  # logits: no activation module
    assert {"grad/0", "grad/0_over_top", "update/0", "act/0_saturated"} <= set(t.callback_metrics)
    assert not any(m._forward_hooks for m in module.modules())  # hooks only during sampled steps
    saved = json.loads((tmp_path / "gradient_health.json").read_text())
    assert len(saved["history"]) == 3 and saved["findings"] == []
    assert (tmp_path / "gradient_health.png").stat().st_size > 5000


def test_a_frozen_layer_is_not_exploding(tmp_path):
    # a frozen layer has no gradient: its norm is NaN, which must not read as an explosion
    from dnnkit.callbacks import LayerFreezing

    health = GradientHealth(every_n_steps=1, plot=False, verbose=False, log_metrics=False)
    t = L.Trainer(max_epochs=1, callbacks=[LayerFreezing(frozen="body.0", verbose=False), health], logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    t.fit(PlainNet(), loader())
    assert health.history[0]["no_grad"] == ["0"] and math.isnan(health.history[0]["grad"]["0"])
    assert health.findings == []
    nan = record(3, {"0": 1.0, "2": math.nan, "4": 1.0})  # a real NaN gradient still is one
    assert [f.problem for f in diagnose([record(s, {"0": 1.0, "2": 1.0, "4": 1.0}) for s in range(3)] + [nan])] == ["exploding"]


def test_summary_is_printed_at_fit_end(tmp_path, capsys):
    trainer(tmp_path, GradientHealth(every_n_steps=1)).fit(PlainNet(nn.ReLU), loader())
    out = capsys.readouterr().out
    assert "Gradient health: 12 samples every 1 steps" in out and "dead" in out
    assert len(out.splitlines()) < 25  # one screen


def test_history_survives_checkpoint_resume(tmp_path):
    health = GradientHealth(every_n_steps=2, verbose=False, plot=False)
    first = L.Trainer(max_epochs=1, callbacks=[health], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    first.fit(PlainNet(), loader())
    ckpt = tmp_path / "one.ckpt"
    first.save_checkpoint(ckpt)
    resumed = GradientHealth(every_n_steps=2, verbose=False, plot=False)
    L.Trainer(max_epochs=2, callbacks=[resumed], logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(PlainNet(), loader(), ckpt_path=ckpt)
    assert [h["step"] for h in resumed.history] == [1, 3, 5, 7, 9, 11]


def test_vanishing_recipe_flags_the_sigmoid_net_only(fake_data, tmp_path):
    """Issue check 4, on synthetic data: the sigmoid net with the standard init is flagged,
    naming its lower layers; He + ELU + BN is not; each stage saves the plot."""
    cfg = compose_config(["+recipe=vanishing", *FAST, "trainer.limit_train_batches=6",
                          "callbacks.gradient_health.every_n_steps=1"])
    results = run_recipe(cfg, tmp_path / "run")
    found = {}
    for stage in ("sigmoid_normal", "sigmoid_standard", "he_elu_bn"):
        folder = tmp_path / "run" / stage
        assert (folder / "gradient_health.png").is_file()
        found[stage] = json.loads((folder / "gradient_health.json").read_text())["findings"]
    vanishing = [f for f in found["sigmoid_standard"] if f["problem"] == "vanishing"]
    assert vanishing and vanishing[0]["layers"][:3] == ["hidden1", "hidden2", "hidden3"]
    assert "output" not in vanishing[0]["layers"] and "hidden1" in vanishing[0]["message"]
    assert not any(f["problem"] == "vanishing" for f in found["he_elu_bn"])
    by_stage = {r.stage: r.metrics for r in results}
    assert by_stage["sigmoid_standard"]["grad/hidden1_over_top"] < 1e-4
    assert by_stage["he_elu_bn"]["grad/hidden1_over_top"] > 0.1
    assert "grad/hidden1_over_top" in (tmp_path / "run" / "results.md").read_text()


@pytest.mark.data
@pytest.mark.slow
def test_vanishing_recipe_on_mnist(real_data_dir, tmp_path):
    """Issue check 4 on real MNIST (1 epoch per stage): vanishing flagged in the sigmoid net
    with the standard init, naming its lower layers, and not in He + ELU + BN; plots saved."""
    cfg = compose_config(["+recipe=vanishing", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                          "stages.sigmoid_normal=null"])
    results = {r.stage: r for r in run_recipe(cfg, tmp_path / "run")}
    findings = {s: json.loads((tmp_path / "run" / s / "gradient_health.json").read_text())["findings"] for s in results}
    vanishing = [f for f in findings["sigmoid_standard"] if f["problem"] == "vanishing"]
    assert vanishing and vanishing[0]["layers"][:5] == ["hidden1", "hidden2", "hidden3", "hidden4", "hidden5"]
    assert findings["he_elu_bn"] == []
    assert all((tmp_path / "run" / s / "gradient_health.png").is_file() for s in results)
    assert results["sigmoid_standard"].metrics["grad/hidden1_over_top"] < 1e-5
    assert results["he_elu_bn"].metrics["val/acc"] > 0.85
