"""``preflight``: what it checks before the first stage trains, that good configs pass it, and
that it stays cheap (meta device, no image data read). The bad values themselves are in the
catalogue, ``tests/test_bad_input.py``."""

import lightning as L
import pytest
import torch

from dnnkit.data.datamodule import MNISTDataModule, load_arrays
from dnnkit.errors import DnnkitError
from dnnkit.modules.classifier import Classifier
from dnnkit.nn import MLP
from dnnkit.nn.freeze import left_trainable
from dnnkit.preflight import preflight, refuse_booleans, world_size
from dnnkit.stages import config_dir, stage_configs
from tests.conftest import FAST, FOLDER_RECIPES, compose_config, recipe_overrides, write_fake_dataset
from tests.test_folder_cli import digits_folder

RECIPES = sorted(p.stem for p in (config_dir() / "recipe").glob("*.yaml"))


@pytest.fixture
def sized_data(tmp_path, monkeypatch):
    """Synthetic sets large enough for every recipe's splits (n_per_class=100 beside 5,000 for validation)."""
    root = tmp_path / "data"
    for name in ("mnist", "fashion-mnist"):
        write_fake_dataset(root / name, n_train=8000, n_test=100)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(root))
    load_arrays.cache_clear()
    return root


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_passes_without_reading_the_images(recipe, sized_data, tmp_path):
    folder = recipe in FOLDER_RECIPES  # on a folder of 600 PNGs, with the recipe's own fractions
    root = digits_folder(tmp_path / "digits", n=600) if folder else None
    stages = stage_configs(compose_config([*recipe_overrides(recipe, root), *([] if folder else ["data.val_size=500"])]))
    load_arrays.cache_clear()
    preflight(stages)
    assert load_arrays.cache_info().currsize == 0  # headers and labels only: the images are read by the fit


@pytest.mark.data
@pytest.mark.slow  # reads the real sets
def test_every_recipe_passes_on_the_real_sets(real_data_dir):
    """The real files are told apart (MNIST is not taken for Fashion-MNIST, or the other way)."""
    for recipe in sorted(set(RECIPES) - FOLDER_RECIPES):  # those are checked above, on a folder of PNGs
        preflight(stage_configs(compose_config([f"+recipe={recipe}"])))


@pytest.mark.parametrize("overrides", [
    ["pretrain=rbm", "+recipe=unsupervised"],
    ["callbacks=[default,layer_freezing,early_stopping,performance_scheduling,gradient_clipping,gradient_health]"],
    ["optimizer=nesterov"], ["optimizer=rmsprop"], ["optimizer=adagrad"], ["optimizer=nadam"],
    ["scheduler=plateau"], ["scheduler=exponential"], ["scheduler=piecewise_constant"], ["scheduler=power"],
    ["callbacks.checkpoint.monitor=null"], ["callbacks.checkpoint.monitor=train/loss", "callbacks.checkpoint.mode=min"],
    ["report.metrics=[val/acc,grad/hidden1_over_top,lr]"],
    ["data=auxiliary", "model.n_outputs=4"], ["model=zoo"],
    ["trainer.devices=auto"],
    ["trainer.max_epochs=-1", "callbacks=[default,layer_freezing]", "callbacks.layer_freezing.unfreeze_at_epoch=30"],
])
def test_good_configs_pass(overrides, sized_data):
    preflight(stage_configs(compose_config(FAST + overrides)))


def test_the_model_is_built_on_the_meta_device(fake_data):
    """A 2 GB MLP costs nothing to check."""
    stages = stage_configs(compose_config(FAST + ["model.hidden=[50000,10000]"]))
    preflight(stages)  # a real build would allocate 500M floats for hidden2 alone


def test_reuse_is_compared_with_the_source_stage_after_surgery(fake_data):
    base = [*FAST, "model.hidden=[30,20,20]"]
    ok = "+stages={a: {}, b: {reuse: {from: a, drop: 'hidden3|output', add: [10]}}}"
    preflight(stage_configs(compose_config(base + [ok])))
    bad = "+stages={a: {}, b: {model: {hidden: [30, 25, 20]}, reuse: {from: a, drop: 'hidden3|output', add: [10]}}}"
    match = r"stage 'b': shape mismatch in layer 'model.hidden2': linear.weight is \(25, 30\) in the model but \(20, 30\) in the source"
    with pytest.raises(DnnkitError, match=match):
        preflight(stage_configs(compose_config(base + [bad])))


def test_a_reused_checkpoint_file_is_checked_too(fake_data, tmp_path):
    torch.save(MLP(784, [50, 100], 10).state_dict(), tmp_path / "narrow.pt")
    reuse = f"+stages={{a: {{}}, b: {{reuse: {{from: '{tmp_path / 'narrow.pt'}', layers: hidden1}}}}}}"
    stages = stage_configs(compose_config(FAST + [reuse]))
    with pytest.raises(DnnkitError, match=r"stage 'b': shape mismatch in layer 'model.hidden1'"):
        preflight(stages)


def test_booleans_are_refused_in_any_constructor_argument_that_takes_a_number():
    refuse_booleans("x", {"_target_": "dnnkit.callbacks.PerformanceScheduling", "patience": 3, "monitor": "val/loss"})
    with pytest.raises(DnnkitError, match=r"^callbacks.p.patience=true is a boolean, not a number: give an integer$"):
        refuse_booleans("callbacks.p", {"_target_": "dnnkit.callbacks.PerformanceScheduling", "patience": True})
    with pytest.raises(DnnkitError, match=r"^scheduler.schedule.s=false is a boolean, not a number"):
        refuse_booleans(
            "scheduler", {"_target_": "dnnkit.schedules.scheduled_lr", "schedule": {"_target_": "dnnkit.schedules.Exponential", "s": False}}
        )
    refuse_booleans("model", {"_target_": "dnnkit.nn.MLP", "batch_norm": True})  # a boolean where one belongs
    refuse_booleans("model", {"_target_": "no.such.Thing", "x": True})  # an unknown target is not ours to judge


@pytest.mark.parametrize("trainer, expected", [
    ({"devices": 2}, 2), ({"devices": [0, 1, 2]}, 3), ({"devices": "0,1"}, 2), ({"devices": "4", "num_nodes": 2}, 8),
    ({"devices": "auto"}, None), ({"devices": -1}, None), ({"devices": 1}, 1), ({}, None),
])
def test_world_size(trainer, expected):
    assert world_size(trainer) == expected


def test_left_trainable_changes_nothing():
    net = MLP(784, [8, 8], 10)
    assert left_trainable(net, frozen="hidden.*") == ["output.weight", "output.bias"]
    assert left_trainable(net, frozen=".*") == [] and left_trainable(net, trainable="hidden1.act") == []
    assert all(p.requires_grad for p in net.parameters())


def test_datamodule_knows_its_shapes_from_headers_and_labels(fake_data):
    dm = MNISTDataModule("mnist", classes=[1, 2], n_per_class=7, val_size=100)
    assert dm.input_shape() == (1, 28, 28) and dm.train_size() == 14
    assert MNISTDataModule("mnist", val_size=100).train_size() == 1100
    assert load_arrays.cache_info().currsize == 0


def test_classifier_logs_the_keys_it_lists(fake_data, tmp_path):
    """``Classifier.logged_keys`` is what monitors and report.metrics are checked against: keep it true."""
    dm = MNISTDataModule("mnist", val_size=100, batch_size=100)
    module = Classifier(MLP(784, [8], 10))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    keys = set(trainer.callback_metrics)
    trainer.test(module, datamodule=dm, verbose=False)
    keys |= set(trainer.callback_metrics)
    keys = {k.removesuffix("_epoch").removesuffix("_step") for k in keys}
    assert keys == set(Classifier.logged_keys)
