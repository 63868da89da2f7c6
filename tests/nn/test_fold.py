"""fold_batchnorm: folded outputs equal the unfolded model's in eval mode, to 1e-5 (float32); BatchNorms in
Sequential order and, traced with torch.fx, those called from a forward (every one of ResNet-18's)."""

import pytest
import torch
import torchvision
from torch import nn

from dnnkit.nn import CNN, MLP, ZooNet, fold_batchnorm


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics, gamma and beta in every BatchNorm, of the sizes training
    gives (an absolute 1e-5 needs outputs of order 1: float32 rounding alone is ~1e-6 relative)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                    m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def assert_same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        diff = (a.eval()(x) - b.eval()(x)).abs().max().item()
    assert diff <= 1e-5, diff


def test_mlp_with_batch_norm_everywhere_after_training_steps():
    torch.manual_seed(0)
    net = MLP(784, [300, 200], 10, batch_norm=True, output_batch_norm=True, init="lecun")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(20):  # real running statistics, gammas and betas
        x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert folded.folded_batchnorms == ["hidden1.bn", "hidden2.bn", "output.bn"]
    assert folded.unfolded_batchnorms == {}
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    assert_same_outputs(folded, net, torch.rand(256, 1, 28, 28))
    # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(net.hidden1.bn, nn.BatchNorm1d)


def test_mlp_folds_into_the_structure_of_the_same_mlp_without_batch_norm():
    net = randomize_bn_(MLP(784, [50, 40, 30], 10, batch_norm=True, output_batch_norm=True, dropout=0.2))
    folded = fold_batchnorm(net)
    plain = MLP(784, [50, 40, 30], 10, dropout=0.2)
    assert list(folded.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(folded.state_dict())
    x = torch.rand(100, 784)
    assert_same_outputs(plain, net, x)
    assert not folded.training


def test_mlp_with_hidden_batch_norm_only():
    net = randomize_bn_(MLP(784, [64, 32], 10, batch_norm=True), seed=1)
    folded = fold_batchnorm(net)
    assert folded.folded_batchnorms == ["hidden1.bn", "hidden2.bn"]
    assert_same_outputs(folded, net, torch.rand(50, 784))


def test_user_sequential_with_linear_and_conv_pairs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),           # with a bias
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, bias=False),
        nn.BatchNorm2d(4, affine=False),
        nn.Flatten(),
        nn.Linear(4 * 26 * 26, 32),
        nn.BatchNorm1d(32),
        nn.Tanh(),
        nn.Sequential(nn.Linear(32, 5, bias=False), nn.BatchNorm1d(5)),  # nested, collapses to the Linear
    )
    randomize_bn_(model, seed=2)
    folded = fold_batchnorm(model)
    assert folded.folded_batchnorms == ["1", "4", "7", "9.1"]
    assert isinstance(folded[-1], nn.Linear) and folded[-1].bias is not None
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()) == 0
    assert_same_outputs(folded, model, torch.randn(16, 1, 28, 28))


def test_model_without_batch_norm_comes_back_unchanged():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Sequential(nn.Linear(20, 3)))
    folded = fold_batchnorm(model)
    assert folded is not model and repr(folded) == repr(model)
    assert folded.folded_batchnorms == [] and folded.unfolded_batchnorms == {}
    assert all(torch.equal(a, b) for a, b in zip(folded.state_dict().values(), model.state_dict().values()))
    assert list(folded.state_dict()) == list(model.state_dict())
    plain = MLP(784, [30], 10)
    assert repr(fold_batchnorm(plain)) == repr(plain)


def test_unfoldable_batch_norm_stays_and_is_reported():
    class Residual(nn.Module):  # a BN after an addition: no layer's output alone
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            return self.bn(self.fc(x) + x)

    class Branchy(nn.Module):  # control flow on the input: fx cannot trace this forward
        def __init__(self):
            super().__init__()
            self.fc, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            return self.bn(self.fc(x)) if x.sum() > -1e9 else x

    model = nn.Sequential(
        nn.Linear(6, 6), nn.ReLU(), nn.BatchNorm1d(6),          # after an activation
        nn.Linear(6, 6), nn.BatchNorm1d(6, track_running_stats=False),  # batch statistics in eval
        Residual(),
        Branchy(),
        nn.Linear(6, 4), nn.BatchNorm1d(4),                     # foldable
    )
    randomize_bn_(model, seed=3)
    with pytest.warns(UserWarning, match=r"left 4 BatchNorm layer\(s\) in place: 2: it follows a ReLU"):
        folded = fold_batchnorm(model)
    assert folded.folded_batchnorms == ["8"]
    assert sorted(folded.unfolded_batchnorms) == ["2", "4", "5.bn", "6.bn"]
    assert "no running statistics" in folded.unfolded_batchnorms["4"]
    assert "its input is the result of add" in folded.unfolded_batchnorms["5.bn"]
    assert "cannot be traced with torch.fx" in folded.unfolded_batchnorms["6.bn"]
    assert isinstance(folded[2], nn.BatchNorm1d) and isinstance(folded[5].bn, nn.BatchNorm1d)
    assert_same_outputs(folded, model, torch.randn(32, 6))


def test_batch_norm_called_from_a_forward_is_folded_by_tracing():
    class Net(nn.Module):  # BN as an attribute: only the traced forward shows what feeds it
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.twice, self.used = nn.Linear(6, 6), nn.BatchNorm1d(6), nn.BatchNorm1d(6), nn.Linear(6, 6)
            self.bn_used = nn.BatchNorm1d(6)

        def forward(self, x):
            y = self.used(x)
            x = self.bn(self.fc(x)) + self.bn_used(y) + y  # y also feeds the sum: bn_used cannot fold
            return self.twice(self.twice(x))  # one module called twice: one fold cannot serve both calls

    model = randomize_bn_(Net(), seed=4)
    folded = fold_batchnorm(model, warn=False)
    assert folded.folded_batchnorms == ["bn"] and isinstance(folded.bn, nn.Identity)
    assert sorted(folded.unfolded_batchnorms) == ["bn_used", "twice"]
    assert "called more than once" in folded.unfolded_batchnorms["twice"]
    assert "the output of used is used elsewhere" in folded.unfolded_batchnorms["bn_used"]
    assert folded.fc.bias is not None and "bn.running_mean" not in folded.state_dict()
    assert_same_outputs(folded, model, torch.randn(16, 6))


def test_resnet18_folds_every_batch_norm():
    torch.manual_seed(0)
    resnet = randomize_bn_(torchvision.models.resnet18(num_classes=10), seed=5)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    folded = fold_batchnorm(resnet)  # would warn about any BN left
    assert n_bn == 20 and len(folded.folded_batchnorms) == 20 and folded.unfolded_batchnorms == {}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert "layer1.0.bn1" in folded.folded_batchnorms and "layer2.0.downsample.1" in folded.folded_batchnorms
    assert isinstance(folded.layer1[0].bn1, nn.Identity) and isinstance(folded.layer2[0].downsample, nn.Conv2d)
    assert_same_outputs(folded, resnet, torch.rand(4, 3, 32, 32))
    assert isinstance(resnet.layer1[0].bn1, nn.BatchNorm2d)  # the input model is untouched


def test_zoo_resnet_folds_around_its_untraceable_input_adapter():
    net = randomize_bn_(ZooNet("resnet18", n_outputs=3), seed=6)
    folded = fold_batchnorm(net)  # the adapter's `if x.dim() == 3` stops a trace of the whole model
    assert len(folded.folded_batchnorms) == 20 and folded.unfolded_batchnorms == {}
    assert all(name.startswith("backbone.") for name in folded.folded_batchnorms)
    assert_same_outputs(folded, net, torch.rand(4, 1, 28, 28))
    again = fold_batchnorm(ZooNet("resnet18", n_outputs=3), warn=False)  # a rebuilt model folds to the same keys
    assert list(again.state_dict()) == list(folded.state_dict())


def test_cnn_folds_into_the_structure_of_the_same_cnn_without_batch_norm():
    kwargs = {"channels": [8, 16], "hidden": [32], "conv_dropout": 0.1, "dropout": 0.2}
    net = randomize_bn_(CNN(1, 28, **kwargs, batch_norm=True, output_batch_norm=True), seed=7)
    folded = fold_batchnorm(net)
    assert folded.folded_batchnorms == ["conv1.bn", "conv2.bn", "hidden1.bn", "output.bn"]
    plain = CNN(1, 28, **kwargs, batch_norm=False)
    assert list(folded.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(folded.state_dict())
    assert_same_outputs(plain, net, torch.rand(64, 1, 28, 28))


def test_inplace_and_float64():
    model = randomize_bn_(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7)).double())
    reference = fold_batchnorm(model)
    x = torch.randn(9, 5, dtype=torch.float64)
    expected = model.eval()(x)
    same = fold_batchnorm(model, inplace=True)
    assert same is model and len(model) == 1 and model[0].weight.dtype == torch.float64
    assert torch.allclose(same(x), expected, atol=1e-12) and torch.allclose(reference(x), expected, atol=1e-12)
