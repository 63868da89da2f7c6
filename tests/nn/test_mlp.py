import math

import pytest
import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP, select_layers


def test_layer_names_follow_the_book():
    net = MLP(784, [300, 100, 50], 10)
    assert [n for n, _ in net.named_children()] == ["hidden1", "hidden2", "hidden3", "output"]
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_batch_norm_sits_between_linear_and_activation():
    net = MLP(784, [300, 200], 10, batch_norm=True, output_batch_norm=True, bn_momentum=0.01)
    assert [n for n, _ in net.hidden1.named_children()] == ["linear", "bn", "act"]
    assert net.hidden1.linear.bias is None  # BN's beta does the bias's job
    assert net.hidden1.bn.momentum == 0.01
    assert isinstance(net.output.bn, nn.BatchNorm1d)


def test_default_init_follows_the_activation():
    torch.manual_seed(0)
    he = MLP(784, [300], 10, activation="relu").hidden1.linear.weight
    xavier = MLP(784, [300], 10, activation="tanh").hidden1.linear.weight
    lecun = MLP(784, [300], 10, activation="selu").hidden1.linear.weight
    assert abs(he.std().item() / math.sqrt(2 / 784) - 1) < 0.05
    assert abs(xavier.std().item() / math.sqrt(2 / 1084) - 1) < 0.05
    assert abs(lecun.std().item() / math.sqrt(1 / 784) - 1) < 0.05


def test_dropout_is_alpha_dropout_for_selu():
    assert isinstance(MLP(784, [10], 10, activation="selu", dropout=0.1).hidden1.dropout, nn.AlphaDropout)
    assert isinstance(MLP(784, [10], 10, dropout=0.1).hidden1.dropout, nn.Dropout)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden": []}, "non-empty list"), ({"hidden": [10, 0]}, "positive layer sizes"), ({"n_outputs": 0}, "n_outputs"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_shapes_fail_in_the_constructor(kwargs, message):
    with pytest.raises(DnnkitError, match=message):
        MLP(**kwargs)


def test_keras_style_momentum_warns():
    with pytest.warns(UserWarning, match="Keras/TF momentum 0.9 is bn_momentum=0.1"):
        MLP(784, [10], 10, batch_norm=True, bn_momentum=0.9)


def test_select_layers_by_pattern_and_suffix():
    wrapper = nn.Module()
    wrapper.model = MLP(784, [8, 8, 8], 3)
    assert list(select_layers(wrapper, "hidden[12]")) == ["model.hidden1", "model.hidden2"]
    assert list(select_layers(wrapper, "hidden.*|output")) == ["model.hidden1", "model.hidden2", "model.hidden3", "model.output"]
    with pytest.raises(DnnkitError, match="matches no layer.*model.hidden1"):
        select_layers(wrapper, "hidden9")
