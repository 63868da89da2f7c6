"""Every config group option instantiates; every recipe composes and its stages build."""

from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dnnkit.errors import DnnkitError
from dnnkit.runner import build_callbacks, build_module
from dnnkit.stages import config_dir, merge, stage_configs
from tests.conftest import compose_config

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
        assert instantiate(cfg.logger, save_dir=str(tmp_path), name="", version="") is not None
    elif group == "trainer":
        assert isinstance(instantiate(cfg.trainer, logger=False), L.Trainer)
    elif group in ("model", "module"):
        assert isinstance(build_module(cfg), L.LightningModule)
    else:
        assert instantiate(cfg[group], _convert_="all") is not None


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_its_stages_build(recipe, fake_data):
    cfg = compose_config([f"+recipe={recipe}"])
    stages = stage_configs(cfg)
    assert stages
    for name, stage in stages:
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
