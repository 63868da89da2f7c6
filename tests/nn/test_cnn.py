"""The CNN with named layers, and every technique of dnnkit.nn on it (plain PyTorch, no Trainer):
freezing by name, reuse, surgery, the cached frozen bottom, gradient health, folding, export."""

import copy
import math

import pytest
import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn import CNN, MLP, fold_batchnorm, freeze, load_inference_model, restack, reuse_layers, save_inference_model
from dnnkit.nn.export import build_model
from dnnkit.nn.freeze import frozen_bottom
from dnnkit.nn.health import diagnose, find_activations, find_layers, layer_grad_norms
from dnnkit.nn.init import target_std
from dnnkit.nn.surgery import reusable_layers
from tests.nn.test_fold import randomize_bn_

CONFIG = {"_target_": "dnnkit.nn.CNN", "channels": [6, 12], "hidden": [24], "output_batch_norm": True, "conv_dropout": 0.1}


def train_steps(net: nn.Module, steps: int = 3, shape=(1, 28, 28)) -> None:
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.rand(16, *shape)), torch.randint(0, 10, (16,))).backward()
        opt.step()


def test_layers_are_named_and_shaped():
    net = CNN(1, 28, channels=[8, 16, 32], kernel_size=[5, 3, 3], pool=[2, 2, 1], hidden=[40, 20], n_outputs=3)
    assert [n for n, _ in net.named_children()] == ["conv1", "conv2", "conv3", "hidden1", "hidden2", "output"]
    assert [n for n, _ in net.conv1.named_children()] == ["conv", "bn", "act", "pool"]
    assert "pool" not in dict(net.conv3.named_children())  # pool 1: none
    assert net.feature_shapes == [(8, 14, 14), (16, 7, 7), (32, 7, 7)] and net.flat_size == 32 * 49
    assert net.conv1.conv.bias is None and net.conv1.conv.kernel_size == (5, 5)  # batch norm's beta replaces the bias
    x = torch.rand(4, 1, 28, 28)
    assert net(x).shape == (4, 3) and net.features(x).shape == (4, 20)
    # He init for ReLU, fan-in of a 5x5x1 kernel
    assert net.conv1.conv.weight.std().item() == pytest.approx(target_std(net.conv1.conv.weight, "he"), rel=0.25)


def test_non_square_images_channels_and_no_dense_layers():
    net = CNN(3, [32, 20], channels=[4], padding="valid", pool=2, hidden=[], batch_norm=False, conv_dropout=0.2)
    assert net.input_shape == (3, 32, 20) and net.feature_shapes == [(4, 15, 9)]
    assert net.conv1.conv.bias is not None and isinstance(net.conv1.dropout, nn.Dropout)
    assert [n for n, _ in net.output.named_children()] == ["flatten", "linear"]
    assert net(torch.rand(2, 3, 32, 20)).shape == (2, 10) and net.features(torch.rand(2, 3, 32, 20)).shape == (2, 4 * 15 * 9)
    assert isinstance(CNN(1, 28, [4], activation="selu", conv_dropout=0.1).conv1.dropout, nn.AlphaDropout)


@pytest.mark.parametrize("kwargs, match", [
    ({"channels": [8, 8, 8, 8, 8], "pool": 2},
     r"^model.pool: conv5's pooling by 2 shrinks its 1x1 feature maps to 0x0 \(below 1x1; input 28x28 -> conv1 14x14, .* conv4 1x1\)"),
    ({"input_size": [28, 6], "channels": [4, 4], "pool": [2, 4]}, r"conv2's pooling by 4 shrinks its 14x3 feature maps to 3x0"),
    ({"channels": [4, 4], "kernel_size": 7, "padding": "valid", "pool": [4, 1]}, r"conv2's 7x7 kernel does not fit its 5x5 input"),
    ({"channels": [4, 4], "pool": [2]}, r"model.pool must be one integer or a list of 2"),
    ({"channels": []}, r"model.channels must name at least one conv layer"),
    ({"channels": [4, -1]}, r"model.channels must be a list of positive sizes"),
    ({"input_size": [28, 28, 1]}, r"model.input_size must be a positive integer or \[height, width\]"),
    ({"padding": "full"}, r"unknown model.padding 'full'; valid: same, valid"),
    ({"pool_type": "min"}, r"unknown model.pool_type 'min'; valid: avg, max"),
])
def test_bad_shapes_are_one_message_naming_the_layer(kwargs, match):
    with pytest.raises(DnnkitError, match=match) as err:
        CNN(**{"in_channels": 1, "input_size": 28, **kwargs})
    assert "\n" not in str(err.value)


def test_freezing_by_name_keeps_conv_weights_and_statistics():
    net = CNN(1, 28, [6, 12], hidden=[24])
    frozen = freeze(net, "conv[12]")
    assert list(frozen) == ["conv1", "conv2"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    train_steps(net)
    after = net.state_dict()
    for key in before:
        assert torch.equal(before[key], after[key]) == key.startswith("conv"), key  # BN statistics included


def test_reuse_conv_layers_and_the_default_pattern():
    a, b = randomize_bn_(CNN(1, 28, [6, 12], hidden=[24])), CNN(1, 28, [6, 12], hidden=[48], n_outputs=2)
    report = reuse_layers(b, a, "conv.*")
    assert list(report) == ["conv1", "conv2"] and "bn.running_var" in report["conv2"]
    assert torch.equal(a.conv2.bn.running_mean, b.conv2.bn.running_mean)
    assert torch.equal(a.conv1.conv.weight, b.conv1.conv.weight)
    assert not torch.equal(a.hidden1.linear.weight[:24], b.hidden1.linear.weight[:24])
    assert reusable_layers(b) == "conv.*|hidden.*" and reusable_layers(MLP()) == "hidden.*"
    with pytest.raises(DnnkitError, match=r"shape mismatch in layer 'hidden1'"):
        reuse_layers(b, a, "hidden1")


def test_restack_replaces_the_dense_layers_and_exports_that_shape(tmp_path):
    a = randomize_bn_(CNN(1, 28, [6, 12], hidden=[24, 24], output_batch_norm=True))
    b = restack(copy.deepcopy(a), drop="hidden2|output", add=[16], n_outputs=2)
    assert [n for n, _ in b.named_children()] == ["conv1", "conv2", "hidden1", "hidden2", "output"]
    assert b.hidden_sizes == [24, 16] and b.new_layers == ["hidden2", "output"] and reusable_layers(b) == "conv1|conv2|hidden1"
    assert isinstance(b.hidden2.bn, nn.BatchNorm1d) and torch.equal(a.conv2.conv.weight, b.conv2.conv.weight)
    c = restack(copy.deepcopy(a), drop="hidden1|hidden2|output", add=[10])  # every dense layer: from the feature maps
    assert list(dict(c.hidden1.named_children())) == ["flatten", "linear", "bn", "act"] and c(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    d = restack(copy.deepcopy(a), drop="hidden1|hidden2|output")  # only a new output, straight from the maps
    assert d.hidden_sizes == [] and d(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(DnnkitError, match=r"selects the conv layers \['conv2'\]; restack drops a CNN's dense layers only"):
        restack(copy.deepcopy(a), drop="conv2|hidden1|hidden2|output")
    for model in (b, c, d):  # export after surgery rebuilds the reshaped network
        config = model.export_config(CONFIG)
        save_inference_model(model.eval(), tmp_path, config)
        x = torch.rand(5, 1, 28, 28)
        with torch.no_grad():
            assert (load_inference_model(tmp_path / "model.pt")(x) - model(x)).abs().max() <= 1e-5


def test_frozen_bottom_gives_conv_feature_maps():
    wrapper = nn.Module()
    wrapper.model = CNN(1, 28, [6, 12], hidden=[24])
    x = torch.rand(5, 1, 28, 28)
    bottom, layers = frozen_bottom(wrapper, ["model.conv1", "model.conv2"])
    assert bottom(x).shape == (5, 12, 7, 7) and layers == [wrapper.model.conv1, wrapper.model.conv2]
    bottom, _ = frozen_bottom(wrapper, ["model.conv1", "model.conv2", "model.hidden1"])  # the flatten is hidden1's
    assert bottom(x).shape == (5, 24)


def test_gradient_health_names_the_conv_layers():
    torch.manual_seed(0)  # sigmoid with small N(0, 0.05^2) weights: the gradients shrink layer by layer downwards
    net = CNN(1, 28, [6, 12, 12], hidden=[24], activation="sigmoid", batch_norm=False, init="normal", init_std=0.05)
    layers = find_layers(net)
    assert list(layers) == ["conv1", "conv2", "conv3", "hidden1", "output"]
    assert all(isinstance(a, nn.Sigmoid) for a in find_activations(net, layers).values())
    history = []
    for step in range(4):
        net.zero_grad()
        nn.functional.cross_entropy(net(torch.rand(16, 1, 28, 28)), torch.randint(0, 10, (16,))).backward()
        history.append({"step": step, "grad": layer_grad_norms(layers), "update": {}, "act": {}})
    assert all(math.isfinite(v) and v > 0 for v in history[-1]["grad"].values())
    found = diagnose(history)
    assert [f.problem for f in found] == ["vanishing"] and found[0].layers[:2] == ["conv1", "conv2"]
    assert "the gradients of conv1, conv2" in found[0].message and "hidden1" not in found[0].layers


def test_fold_is_exact_and_the_export_round_trips(tmp_path):
    net = build_model(CONFIG)
    train_steps(net.train())
    randomize_bn_(net, seed=3)
    folded = fold_batchnorm(net.eval())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        assert (folded(x) - net(x)).abs().max() <= 1e-5
    save_inference_model(net, tmp_path, CONFIG, x[:2], meta={"n": 1})
    loaded, program = load_inference_model(tmp_path / "model.pt"), torch.export.load(str(tmp_path / "model.pt2")).module()
    with torch.no_grad():
        expected = net(x)
        assert (loaded(x) - expected).abs().max() <= 1e-5 and (program(x) - expected).abs().max() <= 1e-5
    assert type(loaded).__name__ == "CNN" and loaded.inference_meta == {"n": 1}
