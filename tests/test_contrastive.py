"""Contrastive pretraining: NT-Xent against a loop over its definition, the views' determinism,
bad input at build time, the loss falling on a tiny set, and the recipe option composing."""

import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from dnnkit.data import TensorLoader
from dnnkit.errors import DnnkitError
from dnnkit.modules import ContrastivePretrainer
from dnnkit.modules.contrastive import knn_accuracy
from dnnkit.nn import CNN, MLP, ProjectionHead, nt_xent
from dnnkit.preflight import preflight
from dnnkit.runner import build_module
from dnnkit.stages import stage_configs
from tests.conftest import compose_config, make_images

SMALL = ["data.val_size=100", "stages.pretrain.data.n_per_class=null"]  # the fake set has 1,200 images


def nt_xent_loop(z1, z2, tau):
    """SimCLR's loss written out: l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)."""
    z = torch.cat([z1, z2]).double()
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        sims = [float(torch.nn.functional.cosine_similarity(z[i], z[k], dim=0)) / tau for k in range(n2)]
        denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[j]) / denominator)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_the_loop_formula(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(nt_xent_loop(z1, z2, tau), abs=1e-6)


def test_nt_xent_is_lower_for_aligned_pairs_than_shuffled():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(32, 16, generator=g)
    z2 = z1 + 0.1 * torch.randn(32, 16, generator=g)
    aligned, shuffled = nt_xent(z1, z2, 0.5), nt_xent(z1, z2[torch.randperm(32, generator=g)], 0.5)
    assert aligned < shuffled - 1.0


def test_views_are_a_function_of_seed_epoch_and_batch():
    x = make_images(8, 0)[0].float().div(255).unsqueeze(1)
    pre = ContrastivePretrainer(MLP(784, [16], 10), augment=["crop:2", "affine:15"], seed=3)
    a1, a2 = pre.views(x, 1, 4)
    b1, b2 = pre.views(x, 1, 4)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # the two views differ
    assert not torch.equal(pre.views(x, 2, 4)[0], a1) and not torch.equal(pre.views(x, 1, 5)[0], a1)
    other = ContrastivePretrainer(MLP(784, [16], 10), augment=["crop:2", "affine:15"], seed=4)
    assert not torch.equal(other.views(x, 1, 4)[0], a1)


@pytest.mark.parametrize("kwargs, message", [
    ({"augment": None}, "needs module.augment"),
    ({"augment": []}, "needs module.augment"),
    ({"augment": ["rotate"]}, "unknown augmentation 'rotate'"),
    ({"augment": ["crop"], "temperature": 0}, "module.temperature"),
    ({"augment": ["crop"], "temperature": -0.5}, "module.temperature"),
    ({"augment": ["crop"], "head": [0]}, "module.head"),
])
def test_bad_input_is_one_line_at_build(kwargs, message):
    with pytest.raises(DnnkitError, match=message) as info:
        ContrastivePretrainer(MLP(784, [16], 10), **kwargs)
    assert "\n" not in str(info.value)


def test_contrastive_loss_falls_on_a_tiny_set():
    torch.manual_seed(0)
    images, labels = make_images(256, 0)
    pre = ContrastivePretrainer(MLP(784, [64, 32], 10, activation="relu"), augment=["crop:2"], temperature=0.5, head=[32], projection=16)
    x = images.float().div(255).unsqueeze(1)
    with torch.no_grad():
        before = float(pre.contrastive_loss(x, -1, 0))
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(pre, TensorLoader(images, labels.long(), 64, shuffle=True, seed=0))
    with torch.no_grad():
        assert float(pre.contrastive_loss(x, -1, 0)) < before - 0.3


def test_output_layer_is_not_trained_and_cnn_features_are_used(tmp_path):
    torch.manual_seed(0)
    images, labels = make_images(64, 0)
    model = CNN(1, 28, channels=[4], pool=2, hidden=[16], n_outputs=10)
    before = model.output.weight.clone()
    pre = ContrastivePretrainer(model, augment=["crop:2"], knn=5)
    assert isinstance(pre.head, ProjectionHead) and pre.head[0].in_features == 16
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    loader = TensorLoader(images, labels.long(), 32)
    trainer.fit(pre, loader, loader)
    assert torch.equal(model.output.weight, before)
    assert (tmp_path / "views.png").is_file()  # validation images above a view, in the run folder
    assert 0.0 <= float(trainer.callback_metrics["val/knn_acc"]) <= 1.0 and "val/loss" in trainer.callback_metrics


def test_knn_accuracy_separated_clusters():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    centres = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1)
    features = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(40, 8, generator=g), dim=1)
    assert float(knn_accuracy(features, labels, 5)) == 1.0
    assert float(knn_accuracy(features, labels[torch.randperm(40, generator=g)], 5)) < 0.7


def test_recipe_option_composes_and_builds(fake_data):
    cfg = compose_config(["+recipe=unsupervised", "pretrain=contrastive"])
    stages = dict(stage_configs(cfg))
    pretrain = stages["pretrain"]
    assert pretrain.callbacks.checkpoint.monitor is None and pretrain.data.augment is None
    OmegaConf.resolve(pretrain)
    module = build_module(pretrain)
    assert isinstance(module, ContrastivePretrainer) and module.temperature > 0
    assert stages["pretrained_10"].reuse["from"] == "pretrain"
    small = [*SMALL, "stages.scratch_100=null", "stages.pretrained_100=null"]
    preflight(stage_configs(compose_config(["+recipe=unsupervised", "pretrain=contrastive", *small])))  # the good option passes


@pytest.mark.parametrize("override, message", [
    ("stages.pretrain.module.temperature=0", "module.temperature"),
    ("stages.pretrain.module.augment=null", "needs module.augment"),
])
def test_preflight_refuses_bad_options_before_training(override, message, fake_data):
    cfg = compose_config(["+recipe=unsupervised", "pretrain=contrastive", *SMALL, override])
    with pytest.raises(DnnkitError, match=message):
        preflight(stage_configs(cfg))
