"""Greedy layer-wise pretrainers: each phase trains only its own layer; RBM stacks; pictures."""

import copy

import lightning as L
import pytest
import torch

from dnnkit.data import TensorLoader
from dnnkit.errors import DnnkitError
from dnnkit.modules import AutoencoderPretrainer, RBMPretrainer
from dnnkit.nn import MLP
from dnnkit.nn.surgery import reuse_layers
from tests.conftest import make_images


class Snapshots(L.Callback):
    """The full state_dict (parameters and buffers) after every epoch."""

    def __init__(self):
        self.states = []

    def on_fit_start(self, trainer, pl_module):
        self.states.append(copy.deepcopy(pl_module.state_dict()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append(copy.deepcopy(pl_module.state_dict()))


def loaders(n=96, seed=0):
    x, _ = make_images(n, seed)  # structured: a bright band per (unused) class, plus noise
    y = torch.zeros(n, dtype=torch.long)
    return TensorLoader(x, y, 32, shuffle=True), TensorLoader(x[:32], y[:32], 32)


def fit(module, tmp_path, epochs, callbacks=()):
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=list(callbacks),
    )
    train, val = loaders()
    trainer.fit(module, train, val)
    assert trainer.current_epoch == epochs  # max_epochs was set to sum(epochs)
    return trainer


def owner(key):
    """Which layer a state_dict key belongs to: 'hidden2' for model.hidden2.bn.running_mean, ..."""
    parts = key.split(".")
    if parts[0] == "model":
        return parts[1]
    return f"hidden{int(parts[1]) + 1}"  # decoders.0 / visible_biases.0 belong to hidden1


@pytest.mark.parametrize("make", [
    lambda: AutoencoderPretrainer(MLP(784, [24, 16, 8], 10, batch_norm=True, dropout=0.2), epochs=[1, 2, 1], tied=False),
    lambda: AutoencoderPretrainer(MLP(784, [24, 16, 8], 10), epochs=[1, 2, 1], tied=True, noise="gaussian", noise_level=0.2),
    lambda: RBMPretrainer(MLP(784, [24, 16, 8], 10, activation="sigmoid"), epochs=[1, 2, 1], k=2, persistent=True),
], ids=["ae-untied-bn-dropout", "ae-tied", "rbm-pcd"])
def test_each_phase_trains_only_its_own_layer(make, tmp_path):
    torch.manual_seed(0)
    module = make()
    snaps = Snapshots()
    fit(module, tmp_path, 4, [snaps])
    trained_in_epoch = ["hidden1", "hidden2", "hidden2", "hidden3"]
    for epoch, layer in enumerate(trained_in_epoch):
        before, after = snaps.states[epoch], snaps.states[epoch + 1]
        changed = {owner(k) for k in before if not torch.equal(before[k], after[k])}
        assert changed == {layer}, f"epoch {epoch + 1} changed {changed}, expected only {layer}"
    assert module.model.output.weight.equal(snaps.states[0]["model.output.weight"])


def test_pretrained_stack_initialises_a_classifier(tmp_path):
    torch.manual_seed(0)
    pre = AutoencoderPretrainer(MLP(784, [24, 16], 10), epochs=1)
    fit(pre, tmp_path, 2)
    assert (tmp_path / "reconstructions.png").stat().st_size > 500
    assert (tmp_path / "features.png").stat().st_size > 500
    path = tmp_path / "pre.ckpt"
    torch.save({"state_dict": pre.state_dict()}, path)
    clf = MLP(784, [24, 16], 10)
    assert sorted(reuse_layers(clf, path, "hidden.*")) == ["hidden1", "hidden2"]
    assert torch.equal(clf.hidden2.linear.weight, pre.model.hidden2.linear.weight)


def test_rbm_reconstruction_error_falls_and_filters_are_saved(tmp_path):
    torch.manual_seed(0)
    pre = RBMPretrainer(MLP(784, [32], 10, activation="sigmoid"), epochs=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5))
    train, val = loaders()
    x = val.images.float().flatten(1) / 255
    start = pre.reconstruct(x).sub(x).square().mean().item()
    fit(pre, tmp_path, 3)
    assert pre.reconstruct(x).sub(x).square().mean().item() < 0.8 * start
    assert (tmp_path / "filters.png").is_file() and (tmp_path / "reconstructions.png").is_file()


def test_rbm_sample_inputs_binarises_the_first_layer_in_training_only(monkeypatch):
    import dnnkit.modules.rbm as rbm_module

    seen = []
    real = rbm_module.cd_loss
    monkeypatch.setattr(rbm_module, "cd_loss", lambda v, *a, **kw: (seen.append(v), real(v, *a, **kw))[1])
    pre = RBMPretrainer(MLP(784, [16, 8], 10, activation="sigmoid"), epochs=1, sample_inputs=True)
    x, codes = torch.rand(6, 784) * 0.8 + 0.1, torch.rand(6, 16) * 0.8 + 0.1  # grey, never 0 or 1
    pre.train()
    pre.layer_loss(0, x), pre.layer_loss(1, codes)
    pre.eval()
    pre.layer_loss(0, x)
    assert set(seen[0].unique().tolist()) == {0.0, 1.0}  # a binary sample of the grey pixels
    assert torch.equal(seen[1], codes) and torch.equal(seen[2], x)  # upper layers and validation: as given


def test_bad_inputs_fail_in_the_constructor():
    with pytest.raises(DnnkitError, match="RBM pretraining needs sigmoid layers.*model.activation=sigmoid"):
        RBMPretrainer(MLP(784, [8], 10, activation="elu"))
    with pytest.raises(DnnkitError, match=r"epochs must be .* one per layer \['hidden1', 'hidden2'\], got \[1, 2, 3\]"):
        AutoencoderPretrainer(MLP(784, [8, 4], 10), epochs=[1, 2, 3])
    with pytest.raises(DnnkitError, match="unknown input_loss 'l1'"):
        AutoencoderPretrainer(MLP(784, [8], 10), input_loss="l1")


def test_monitoring_a_metric_is_refused(tmp_path):
    pre = AutoencoderPretrainer(MLP(784, [8], 10), epochs=1)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(monitor="val/loss")])
    train, val = loaders()
    with pytest.raises(DnnkitError, match="set callbacks.checkpoint.monitor=null"):
        trainer.fit(pre, train, val)
