"""The pretraining recipes: composition with each pretrain option, a tiny end-to-end run, and
(real data, slow) the RBM's reconstruction error falling on a small MNIST subset."""

import pytest
import torch
from omegaconf import OmegaConf

from dnnkit.runner import build_module, run_recipe
from dnnkit.stages import stage_configs
from tests.conftest import FAST, compose_config


@pytest.mark.parametrize("pretrain, target", [("autoencoder", "AutoencoderPretrainer"), ("rbm", "RBMPretrainer")])
def test_unsupervised_recipe_switches_pretrainer(pretrain, target, fake_data):
    cfg = compose_config(["+recipe=unsupervised", f"pretrain={pretrain}"])
    stages = dict(stage_configs(cfg))
    assert list(stages)[0] == "pretrain" and stages["pretrain"].module._target_.endswith(target)
    assert stages["pretrain"].callbacks.checkpoint.monitor is None
    for stage in stages.values():
        OmegaConf.resolve(stage)
        module = build_module(stage)
        assert isinstance(module.model.hidden1.act, torch.nn.Sigmoid)  # one network for every stage
    assert stages["pretrained_10"].reuse["from"] == "pretrain"
    assert stages["pretrained_100"].reuse.layers == "hidden1" and stages["pretrain"].module.layers == "hidden1"
    for name in ("pretrained_10", "pretrained_100"):  # the pretrained hidden1 stays frozen; the scratch arms freeze nothing
        assert stages[name].callbacks.layer_freezing.frozen == "hidden1"
    assert all("layer_freezing" not in stages[name].callbacks for name in ("scratch_10", "scratch_100"))


@pytest.mark.parametrize("recipe, extra", [
    ("unsupervised", ["pretrain=rbm"]),
    ("auxiliary", ["stages.auxiliary.data.task=shuffle_patches", "stages.auxiliary.model.n_outputs=2"]),
])
def test_pretraining_recipes_run_end_to_end(recipe, extra, fake_data, tmp_path):
    tiny = ["stages.scratch_10.trainer.max_epochs=2", "stages.pretrained_10.trainer.max_epochs=2", "stages.scratch_10.seeds=[0]",
            "stages.pretrained_10.seeds=[0]", "data.val_size=100"]
    if recipe == "unsupervised":
        tiny += ["stages.scratch_100=null", "stages.pretrained_100=null", "stages.pretrain.module.epochs=[1]"]
    else:
        tiny += [
            "stages.scratch_100=null", "stages.pretrained_100=null",
            "stages.auxiliary.trainer.max_epochs=1", "stages.auxiliary.data.val_size=100",
        ]
    results = run_recipe(compose_config([f"+recipe={recipe}", *FAST, *tiny, *extra]), tmp_path / "run")
    assert [r.stage for r in results][1:] == ["scratch_10", "pretrained_10"]
    assert all("test/acc" in r.metrics for r in results[1:])
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| pretrained_10 |" in table
    first = results[0].dir
    if recipe == "unsupervised":
        assert (first / "filters.png").is_file() and (first / "reconstructions.png").is_file()
        assert results[0].epochs == 1


@pytest.mark.data
@pytest.mark.slow
def test_rbm_reconstruction_error_falls_on_mnist(real_data_dir, tmp_path, monkeypatch):
    """2,000 MNIST images, CD-1, one hidden layer of 64 units for 3 epochs."""
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(real_data_dir))
    cfg = compose_config([
        "+recipe=unsupervised", "pretrain=rbm", "trainer.enable_progress_bar=false", "model.hidden=[64]",
        "stages.pretrain.module.epochs=[3]", "data.val_size=500", "+stages.pretrain.trainer.limit_train_batches=20",
        "stages.scratch_10=null", "stages.pretrained_10=null", "stages.scratch_100=null", "stages.pretrained_100=null",
    ])
    result = run_recipe(cfg, tmp_path / "run")[0]
    recon = [h["val/recon"] for h in result.history]
    assert len(recon) == 3 and recon[0] > recon[1] > recon[2], recon
    assert result.history[-1]["val/pseudo_likelihood"] > result.history[0]["val/pseudo_likelihood"]
