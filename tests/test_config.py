"""Every config group option instantiates and composes in a stage as under Hydra; every recipe
composes and its stages build; the stage merge rules (conf/recipe/ are diffs of the options)."""

from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dnnkit.build import instantiate as build_instance
from dnnkit.errors import DnnkitError
from dnnkit.runner import build_callbacks, build_module
from dnnkit.stages import callback_option, config_dir, group_option, merge, stage_configs
from tests.conftest import compose_config, recipe_overrides

CONF = config_dir()
# options that are `# @package _global_` parts of a recipe (conf/pretrain/) are composed with their recipe
GROUP_OPTIONS = [
    (g.name, p.stem) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name != "recipe"
    for p in sorted(g.glob("*.yaml")) if not p.read_text().startswith("# @package _global_")
]
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))


def test_configs_come_from_the_checkout():
    assert CONF == Path(__file__).resolve().parent.parent / "conf"


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_instantiates(group, option, fake_data, tmp_path):
    override = f"{group}=[{option}]" if group == "callbacks" else f"{group}={option}"
    cfg = compose_config([override])
    if group == "callbacks":
        assert all(isinstance(c, L.Callback) for c in build_callbacks(cfg))
    elif group == "optimizer":
        module = build_module(cfg)
        opt = module.configure_optimizers()
        assert opt is not None
    elif group == "scheduler":
        module = build_module(cfg)
        module.configure_optimizers()
    elif group == "logger":
        from dnnkit.loggers import build_loggers, check_loggers

        try:
            check_loggers(cfg.logger)
        except DnnkitError as err:  # an optional package: pip install 'dnnkit[...]'
            pytest.skip(str(err))
        assert build_loggers(cfg.logger, tmp_path / "train", tmp_path, "train")
    elif group == "trainer":
        assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)
    elif group in ("model", "module"):
        assert isinstance(build_module(cfg), L.LightningModule)
    elif (group, option) == ("data", "arrays"):  # it reads the file's headers when built: the path is the user's
        with pytest.raises(DnnkitError, match=r"data.path must name an .npz file, got None"):
            build_instance(cfg[group], _convert_="all")  # dnnkit's instantiate: the DnnkitError itself
    else:
        assert instantiate(cfg[group], _convert_="all") is not None


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_its_stages_build(recipe, fake_data):
    cfg = compose_config(recipe_overrides(recipe))
    stages = stage_configs(cfg)
    assert stages
    for _name, stage in stages:
        OmegaConf.resolve(stage)  # every interpolation resolves
        build_module(stage)
        build_callbacks(stage)


def test_stage_merge_rules():
    base = {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9}, "data": {"classes": None, "n": 1}}
    over = {"optimizer": {"_target_": "torch.optim.Adam", "lr": 0.001}, "data": {"classes": [5, 6]}}
    merged = merge(base, over)
    assert merged["optimizer"] == {"_target_": "torch.optim.Adam", "lr": 0.001}  # replaced, no momentum
    assert merged["data"] == {"classes": [5, 6], "n": 1}  # merged
    assert merge(base, {"optimizer": "sgd"})["optimizer"]["_target_"] == "torch.optim.SGD"


def test_unknown_group_option_in_a_stage():
    with pytest.raises(DnnkitError, match="unknown optimizer option 'adamax'; valid: .*sgd"):
        merge({"optimizer": {}}, {"optimizer": "adamax"})


def test_unknown_stage_key(fake_data):
    cfg = compose_config(["+stages={a: {optimiser: {lr: 1}}}"])
    with pytest.raises(DnnkitError, match="stage 'a' sets unknown keys \\['optimiser'\\]"):
        stage_configs(cfg)


@pytest.mark.parametrize("group, option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_a_stage_reads_an_option_as_hydra_composes_it(group, option):
    """``optimizer: adam`` in a stage (group_option) is what ``optimizer=adam`` composes, defaults lists included."""
    override = f"{group}=[{option}]" if group == "callbacks" else f"{group}={option}"
    assert group_option(group, option) == OmegaConf.to_container(compose_config([override])[group], resolve=False)


def test_variants_extend_their_base_option():
    assert group_option("trainer", "ddp") == {
        **group_option("trainer", "default"), "strategy": "ddp", "devices": 2, "num_nodes": 1, "sync_batchnorm": False,
    }
    assert group_option("data", "fashion_mnist") == {**group_option("data", "mnist"), "name": "fashion_mnist"}
    assert set(group_option("callbacks", "default")) == {
        "checkpoint", "epoch_summary", "progress_bar", "last_checkpoint", "rng_state", "non_finite",
    }


def test_a_stage_names_another_option_with_values():
    base = {"optimizer": group_option("optimizer", "adam"), "data": group_option("data", "mnist"), "callbacks": {}}
    merged = merge(base, {"optimizer": {"_option_": "momentum", "lr": 0.05}})
    assert merged["optimizer"] == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9}  # no betas
    data = merge(base, {"data": {"_option_": "auxiliary", "batch_size": 128}})["data"]
    assert data == {**group_option("data", "mnist"), "_target_": "dnnkit.data.AuxiliaryDataModule",
                    "task": "rotation", "patch": 7, "batch_size": 128}
    callbacks = merge(base, {"callbacks": {"stop_early": {"_option_": "early_stopping", "patience": 3}}})["callbacks"]
    assert callbacks == {"stop_early": {**callback_option("early_stopping"), "patience": 3}}


def test_a_callback_without_target_is_its_option_with_these_values():
    over = {"callbacks": {"layer_freezing": {"frozen": None, "trainable": "output"}, "checkpoint": {"monitor": None}}}
    base = {"callbacks": group_option("callbacks", "default")}
    callbacks = merge(base, over)["callbacks"]
    assert callbacks["layer_freezing"] == {**callback_option("layer_freezing"), "frozen": None, "trainable": "output"}
    assert callbacks["checkpoint"] == {**callback_option("checkpoint"), "monitor": None}


@pytest.mark.parametrize(
    "over, message",
    [
        ({"optimizer": {"_option_": "adamax"}}, "unknown optimizer option 'adamax'; valid: .*sgd"),
        ({"callbacks": {"x": {"_option_": "early_stop"}}}, "callbacks.x: unknown callbacks option 'early_stop'; valid: .*early_stopping"),
        ({"model": {"hidden": {"_option_": "mlp"}}}, "_option_ names an option of a config group .* 'hidden' is neither"),
    ],
)
def test_an_unknown_option_in_a_stage(over, message):
    with pytest.raises(DnnkitError, match=message):
        merge({"optimizer": {}, "callbacks": {}, "model": {"hidden": [1]}}, over)


def test_cli_keys_still_reach_the_callbacks_a_recipe_adds():
    cfg = compose_config(["+recipe=mnist_clipping", "callbacks=[default,gradient_health]", "callbacks.checkpoint.monitor=null"])
    assert {"gradient_clipping", "gradient_health", "checkpoint"} <= set(cfg.callbacks)
    assert cfg.callbacks.checkpoint.monitor is None
    cfg = compose_config(["+recipe=transfer_mnist", "callbacks.early_stopping.patience=5"])
    assert [s.callbacks.early_stopping.patience for _, s in stage_configs(cfg)] == [3, 5, 5, 5, 5]


def test_batch_norm_is_pytorchs_as_mlp_yaml_says():
    """conf/model/mlp.yaml: eps 1e-5 (Keras 1e-3); training normalises by the biased batch
    variance, the running variance averages the unbiased one."""
    import torch

    cfg = OmegaConf.load(CONF / "model" / "mlp.yaml")
    model = instantiate(cfg, n_inputs=784, n_outputs=10, batch_norm=True)  # both come from the data config
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert bn.eps == 1e-5
    x = torch.randn(8, bn.num_features, generator=torch.Generator().manual_seed(0))
    y = bn.train()(x)
    assert torch.allclose(bn.running_var, 0.9 * 1.0 + 0.1 * x.var(0, unbiased=True))  # bn_momentum 0.1, from 1
    assert torch.allclose(y, (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt(), atol=1e-5)
