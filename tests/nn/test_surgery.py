"""reuse_layers copies exactly and fails clearly; restack / replace_layer reshape by name."""

import copy

import lightning as L
import pytest
import torch
from torch import nn

from dnnkit import Classifier
from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.nn.surgery import replace_layer, restack, reusable_layers, reuse_layers


def trained_bn_mlp(n_out=8):
    net = MLP(784, [30, 20, 10], n_out, batch_norm=True)
    net.train()
    net(torch.randn(64, 784) * 2 + 1)  # move the running statistics off their defaults
    return net


@pytest.mark.parametrize("kind", ["module", "state_dict_file", "lightning_checkpoint"])
def test_reuse_copies_parameters_and_buffers_exactly(kind, tmp_path):
    a = trained_bn_mlp()
    if kind == "module":
        source = a
    elif kind == "state_dict_file":
        source = tmp_path / "a.pt"
        torch.save(a.state_dict(), source)
    else:
        source = tmp_path / "a.ckpt"
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
        trainer.strategy.connect(Classifier(a))
        trainer.save_checkpoint(source)
    b = Classifier(MLP(784, [30, 20, 5], 2, batch_norm=True))  # held as model.*: prefixes differ
    report = reuse_layers(b, source, "hidden[12]")
    assert report == {
        "model.hidden1": ["linear.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"],
        "model.hidden2": ["linear.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"],
    }
    for layer in ("hidden1", "hidden2"):
        for key, tensor in getattr(a, layer).state_dict().items():
            assert torch.equal(tensor, getattr(b.model, layer).state_dict()[key]), (layer, key)
    assert not torch.equal(a.hidden3.linear.weight[:5], b.model.hidden3.linear.weight)


def test_pattern_matching_nothing_lists_the_layers():
    with pytest.raises(DnnkitError, match=r"layer pattern 'hiden\[12\]' matches no layer of "
                                          r"MLP; layers are: hidden1, hidden1.linear, .*output"):
        reuse_layers(MLP(784, [30, 20], 2), trained_bn_mlp(), "hiden[12]")


def test_shape_mismatch_names_the_layer_and_both_shapes():
    b = MLP(784, [30, 25], 2, batch_norm=True)
    with pytest.raises(DnnkitError, match=r"shape mismatch in layer 'hidden2': linear.weight is "
                                          r"\(25, 30\) in the model but \(20, 30\) in the source"):
        reuse_layers(b, trained_bn_mlp(), "hidden[12]")


def test_source_without_the_layer_lists_its_layers():
    with pytest.raises(DnnkitError, match=r"the source has no layer 'hidden3'; its layers: hidden1.linear, .*"):
        reuse_layers(MLP(784, [30, 20, 10], 2), MLP(784, [30, 20], 2), "hidden3")


def test_file_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(DnnkitError, match="weights_only=True"):
        reuse_layers(MLP(784, [30], 2), path, "hidden1")


def test_restack_drops_adds_and_keeps_weights():
    a = MLP(784, [300, 50, 50, 50, 50], 10, activation="relu", dropout=0.1)
    b = restack(copy.deepcopy(a), drop="hidden[45]|output", add=[20], n_outputs=5)
    assert [n for n, _ in b.named_children()] == ["hidden1", "hidden2", "hidden3", "hidden4", "output"]
    assert b.hidden4.linear.out_features == 20 and b.output.out_features == 5 and b.n_outputs == 5
    assert isinstance(b.hidden4.act, nn.ReLU) and b.hidden4.dropout.p == 0.1
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items() if k.startswith(("hidden1", "hidden2", "hidden3")))
    assert b(torch.zeros(3, 784)).shape == (3, 5)
    assert reusable_layers(b) == "hidden1|hidden2|hidden3"
    assert reusable_layers(a) == "hidden.*"


def test_restack_new_output_only():
    b = restack(MLP(784, [30, 20], 8), n_outputs=2)
    assert b.output.out_features == 2 and b.new_layers == ["output"]


def test_restack_refuses_a_middle_layer():
    with pytest.raises(DnnkitError, match=r"drop='hidden2' selects \['hidden2'\]; only whole top layers can be dropped"):
        restack(MLP(784, [30, 20, 10], 2), drop="hidden2")


def test_replace_layer():
    net = MLP(784, [30, 20], 10)
    replace_layer(net, "hidden2.act", nn.Tanh())
    assert isinstance(net.hidden2.act, nn.Tanh)
    with pytest.raises(DnnkitError, match="MLP has no layer 'hidden7'; layers are: hidden1"):
        replace_layer(net, "hidden7", nn.Identity())


def test_added_layers_copy_the_top_layers_dropout_kind():
    from dnnkit.nn import MLP, restack

    net = restack(MLP(784, [30, 20], 10, activation="selu", dropout=0.1), drop="output", add=[5])
    assert type(net.hidden3.dropout) is type(net.hidden2.dropout) is torch.nn.AlphaDropout
    assert net.hidden3.dropout.p == 0.1 and isinstance(net.hidden3.act, torch.nn.SELU)
