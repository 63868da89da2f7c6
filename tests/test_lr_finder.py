"""The LR finder (Lightning's range test on dnnkit's modules): its plot and suggestion, weights and
optimizer state unchanged after it, ``apply`` training with the suggestion (read back from the
optimizer, 1cycle's peak included), the temporary checkpoint inside the run folder and gone
afterwards, Lightning's ``Tuner`` on a Classifier subclass, and the bad inputs."""

from __future__ import annotations

import functools
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.tuner import Tuner

from dnnkit.checkpoint_io import AtomicCheckpointIO
from dnnkit.data import TensorLoader
from dnnkit.errors import DnnkitError
from dnnkit.lr_finder import LRFinder
from dnnkit.modules import Classifier
from dnnkit.nn import MLP
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config

STEPS = 20  # range-test steps: enough for a suggestion (Lightning skips the first 10 and the last)


def loader(n: int = 128) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    return TensorLoader(torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g), 16)


def module(**kwargs) -> Classifier:
    L.seed_everything(0, verbose=False)
    return Classifier(MLP(784, [16], 10, dropout=0.2), optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9),
                      **kwargs)


def state(pl_module, trainer) -> tuple[dict, dict]:
    weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
    return weights, json.loads(json.dumps(trainer.optimizers[0].state_dict(), default=lambda t: t.tolist()))


class Watched(LRFinder):
    """Records the weights and optimizer state just before and just after the range test."""

    def on_fit_start(self, trainer, pl_module):
        self.before = state(pl_module, trainer)
        super().on_fit_start(trainer, pl_module)
        self.after = state(pl_module, trainer)


class FirstRate(L.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.group = dict(optimizer.param_groups[0])


def fit(pl_module, root, *callbacks, epochs: int = 3) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root, accelerator="cpu")
    trainer.fit(pl_module, loader())
    return trainer


@pytest.mark.parametrize("apply, suggest", [(False, "steepest"), (True, "minimum")])
def test_the_range_test_leaves_weights_and_optimizer_state_as_they_were(apply, suggest, tmp_path):
    finder, first = Watched(num_training_steps=STEPS, apply=apply, suggest=suggest), FirstRate()
    fit(module(), tmp_path, finder, first)
    (w0, opt0), (w1, opt1) = finder.before, finder.after
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert opt0["state"] == opt1["state"] == {}  # the test's momentum buffers are gone
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == STEPS and lrs[0] == pytest.approx(1e-8) and 1e-8 <= finder.suggestion <= 1.0
    if suggest == "steepest":  # Lightning's own
        assert finder.suggestion == finder.optimal_lr.suggestion() and finder.suggestion in lrs
    else:  # the rate at the lowest loss / 10, among Lightning's points (the first 10 and the last left out)
        assert finder.suggestion == lrs[min(range(10, STEPS - 1), key=lambda i: losses[i])] / 10
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["suggestion"] == finder.suggestion and saved["lr"] == lrs
    rate = finder.suggestion if apply else 0.01  # the fit trains with the suggestion only when applied
    assert opt0["param_groups"][0]["lr"] == 0.01 and opt1["param_groups"][0]["lr"] == pytest.approx(rate, rel=1e-12)
    assert first.group["lr"] == pytest.approx(rate, rel=1e-12) and first.group["momentum"] == 0.9


def test_the_fit_after_the_test_is_the_fit_without_it(tmp_path):
    """Weights, optimizer, loop counters and random number generators (dropout, shuffling) are
    restored: the same final weights, bit for bit."""
    plain = module()  # seeds, then builds: each fit starts from the same weights and generator states
    fit(plain, tmp_path / "plain")
    tested = module()
    fit(tested, tmp_path / "tested", LRFinder(num_training_steps=STEPS))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), tested.state_dict().values()))


def test_apply_sets_one_cycles_peak_to_the_suggestion(tmp_path):
    one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=None, total_steps=None, interval="step")
    finder, first = LRFinder(num_training_steps=STEPS, apply=True), FirstRate()
    trainer = fit(module(scheduler=one_cycle), tmp_path, finder, first)
    group = trainer.optimizers[0].param_groups[0]
    assert group["max_lr"] == pytest.approx(finder.suggestion, rel=1e-12)
    assert first.group["lr"] == pytest.approx(finder.suggestion / 25, rel=1e-9)  # the cycle starts at max_lr / div_factor
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 24  # the fit's steps, not the test's


def test_tuner_lr_find_works_on_a_classifier_subclass(tmp_path):
    class Mine(Classifier):
        pass

    net = Mine(MLP(784, [16], 10), optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu")
    result = Tuner(trainer).lr_find(net, train_dataloaders=loader(), num_training=STEPS)
    assert net.lr == result.suggestion() != 1e-3 and net.configure_optimizers().param_groups[0]["lr"] == net.lr
    assert list(tmp_path.iterdir()) == []  # Lightning's temporary checkpoint is gone


def test_find_lr_apply_in_a_run_writes_inside_the_stage_folder_only(fake_data, tmp_path, monkeypatch):
    saved = []
    original = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", lambda self, c, path, *a, **k: (saved.append(str(path)),
                                                                                                 original(self, c, path, *a, **k)))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    overrides = ["trainer.max_epochs=2", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "data.val_size=200",
                 "data.batch_size=50", "trainer.enable_progress_bar=false", "find_lr=apply", "callbacks=[default,lr_finder]",
                 "callbacks.lr_finder.num_training_steps=15"]
    [result] = run_recipe(compose_config(overrides), tmp_path / "run")
    stage = tmp_path / "run" / "train"
    finder = [p for p in saved if ".lr_find_" in p]
    assert len(finder) == 1 and finder[0].startswith(str(stage))  # the temporary checkpoint: in the stage folder ...
    assert not list(stage.glob(".lr_find_*")) and list(cwd.iterdir()) == []  # ... and gone; nothing in the CWD
    found = json.loads((stage / "lr_find.json").read_text())
    assert (stage / "lr_find.png").is_file() and 1e-8 <= found["suggestion"] <= 1
    optimizer = torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(found["suggestion"], rel=1e-12)  # trained with it
    assert result.metrics["val/acc"] >= 0


@pytest.mark.parametrize("overrides, message", [
    (["find_lr=maybe"], "find_lr must be one of false, true, apply, got 'maybe'"),
    (["callbacks=[default,lr_finder]", "callbacks.lr_finder.suggest=valley"],
     "unknown lr_finder.suggest 'valley'; valid: minimum, steepest"),
    (["find_lr=true", "+trainer.max_steps=50"],
     r"find_lr: the range test takes lr_finder.num_training_steps=100 optimizer steps but trainer.max_steps=50"),
    (["find_lr=true", "module._target_=dnnkit.modules.AutoencoderPretrainer", "~module.label_smoothing", "+module.epochs=[1,1]",
      "callbacks.checkpoint.monitor=null"],
     r"find_lr: AutoencoderPretrainer steps its optimizers itself \(manual optimization\)"),
])
def test_bad_find_lr_is_one_message_before_training(overrides, message, fake_data, tmp_path):
    with pytest.raises(DnnkitError, match=message):
        run_recipe(compose_config([*FAST, *overrides]), tmp_path / "run")
    assert not (tmp_path / "run" / "train").exists()


def test_a_fit_too_short_for_the_range_test_is_refused(tmp_path):
    with pytest.raises(DnnkitError, match=r"range test takes lr_finder.num_training_steps=100 optimizer steps but this fit "
                                          r"has only 24 \(trainer.max_steps, or trainer.max_epochs x batches\)"):
        fit(module(), tmp_path, LRFinder())


def test_a_module_without_an_optimizer_is_refused(tmp_path):
    class NoOptimizer(Classifier):
        def configure_optimizers(self):
            return None

    net = NoOptimizer(MLP(784, [16], 10))
    with pytest.raises(DnnkitError, match=r"find_lr: NoOptimizer configures 0 optimizers; the range test needs exactly one"):
        fit(net, tmp_path, LRFinder(num_training_steps=STEPS))
