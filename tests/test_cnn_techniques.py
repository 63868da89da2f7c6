"""model=cnn through the runner, on synthetic data (tiny: a few batches per stage): reuse by name,
surgery of the dense layers, freezing conv layers with their outputs cached, gradient health by
conv layer, export and the preflight's shape errors."""

import json
import subprocess

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn import load_inference_model
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config
from tests.probes import cli, cli_env

CNN = ["model=cnn", "model.channels=[4,8]", "model.hidden=[16]"]
STAGES = (
    "+stages={A: {callbacks: {gradient_health: {every_n_steps: 1, plot: false}}},"
    " B: {reuse: {from: A, layers: 'conv.*', drop: 'hidden1|output', add: [12]},"
    " callbacks: {layer_freezing: {frozen: 'conv[12]'}}}}"
)


def test_reuse_restack_frozen_cached_convs_health_and_export(fake_data, tmp_path, capsys):
    results = run_recipe(compose_config([*CNN, *FAST, STAGES]), tmp_path / "run")
    assert [r.stage for r in results] == ["A", "B"]
    out = capsys.readouterr().out
    assert "caching the outputs of model.conv1, model.conv2" in out
    assert "cached train outputs of the frozen layers: (1000, 8, 7, 7)" in out  # conv feature maps, 8 channels of 7x7
    a, b = read_state_dict(results[0].best_checkpoint), read_state_dict(results[1].best_checkpoint)
    convs = [k for k in a if k.startswith("model.conv")]
    assert any(k.endswith("bn.running_mean") for k in convs)
    assert all(torch.equal(a[k], b[k]) for k in convs)  # copied from A, then frozen: weights and statistics
    assert b["model.hidden1.linear.weight"].shape == (12, 8 * 7 * 7)  # the new dense layer on the flattened maps
    assert not torch.equal(a["model.output.weight"][:, :12], b["model.output.weight"])
    health = json.loads((tmp_path / "run" / "A" / "gradient_health.json").read_text())
    assert list(health["history"][0]["grad"]) == ["conv1", "conv2", "hidden1", "output"]
    assert "conv1" in out.split("Gradient health:", 1)[1]  # the summary's rows are the named layers
    # B trained on cached conv outputs: its exports still take images, through every layer
    program = torch.export.load(str(tmp_path / "run" / "B" / "model.pt2")).module()
    model = load_inference_model(tmp_path / "run" / "B" / "model.pt")  # the reshaped stage rebuilds its own shape, folded
    assert model.hidden_sizes == [12] and not any("bn" in k for k in model.state_dict())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert model(x).shape == (4, 10) and (model(x) - program(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("overrides, match", [
    (["model.channels=[4,4,4,4,4]"], r"^model.pool: conv5's pooling by 2 shrinks its 1x1 feature maps to 0x0"),
    (["model.input_size=[32,32]"], r"^the model takes 1x32x32 images but the data's are 1x28x28: set model.in_channels=1"),
])
def test_shape_errors_come_out_before_training(fake_data, tmp_path, overrides, match):
    with pytest.raises(DnnkitError, match=match):
        run_recipe(compose_config([*CNN, *FAST, *overrides]), tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.ckpt"))


@pytest.mark.slow
def test_cli_exits_2_on_a_pooling_below_one_pixel(fake_data, tmp_path):
    proc = subprocess.run(cli(*CNN, *FAST, "model.channels=[4,4,4,4,4]", f"hydra.run.dir={tmp_path / 'run'}"),
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "conv5's pooling by 2 shrinks its 1x1 feature maps" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
