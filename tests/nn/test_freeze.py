"""freeze / unfreeze without a Trainer: requires_grad, eval mode pinned against .train()."""

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.nn.freeze import complement, freeze, resolve, unfreeze
from dnnkit.nn.select import select_layers


def test_frozen_batch_norm_stays_in_eval_mode_through_train():
    net = MLP(20, [16, 16, 16], 3, batch_norm=True)
    frozen = freeze(net, "hidden[12]")
    assert list(frozen) == ["hidden1", "hidden2"]
    net.train()
    assert not net.hidden1.training and not net.hidden1.bn.training and not net.hidden2.bn.training
    assert net.hidden3.bn.training and net.training
    before = {k: v.clone() for k, v in net.hidden1.state_dict().items()}
    net(torch.randn(32, 20)).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in net.hidden1.state_dict().items())  # running stats too
    assert net.hidden1.linear.weight.grad is None and net.hidden3.linear.weight.grad is not None


def test_trainable_form_freezes_everything_else():
    net = MLP(20, [8, 8, 8, 8], 3)
    assert list(resolve(net, trainable="hidden[34]|output")) == ["hidden1", "hidden2"]
    freeze(net, trainable="hidden[34]|output")
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "hidden3.linear.weight", "hidden3.linear.bias", "hidden4.linear.weight", "hidden4.linear.bias",
        "output.weight", "output.bias",
    ]


def test_complement_descends_into_parents_of_trainable_layers():
    wrapper = torch.nn.Module()
    wrapper.model = MLP(20, [8, 8], 3)
    assert list(complement(wrapper, select_layers(wrapper, "output"))) == ["model.hidden1", "model.hidden2"]


def test_unfreeze_restores_training():
    net = MLP(20, [8, 8], 3, batch_norm=True)
    freeze(net, "hidden1")
    unfreeze(net, "hidden1")
    net.train()
    assert net.hidden1.bn.training and net.hidden1.linear.weight.requires_grad


def test_bad_arguments():
    net = MLP(20, [8, 8], 3)
    with pytest.raises(DnnkitError, match="exactly one of frozen= or trainable="):
        freeze(net)
    with pytest.raises(DnnkitError, match="'hidden9' matches no layer of MLP; layers are: hidden1, "):
        freeze(net, "hidden9")


def test_a_model_with_frozen_layers_saves_and_loads_whole(tmp_path):
    import copy

    net = MLP(784, [8, 8], 3, batch_norm=True)
    freeze(net, "hidden1")
    torch.save(net, tmp_path / "net.pt")  # the whole object, as users and multiprocessing pickle it
    for loaded in (torch.load(tmp_path / "net.pt", weights_only=False), copy.deepcopy(net)):
        loaded.train()
        assert not loaded.hidden1.bn.training and loaded.hidden2.bn.training  # still pinned, still its own
