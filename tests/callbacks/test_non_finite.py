"""NonFiniteGuard on a LightningModule that is not dnnkit's, and through the recipe runner."""

import math
import re

import lightning as L
import pytest
import torch
from torch import nn

from dnnkit.callbacks import LastCheckpoint, NonFiniteGuard
from dnnkit.callbacks.non_finite import first_non_finite
from dnnkit.errors import DnnkitError
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


class Tiny(L.LightningModule):
    """Regression on fixed data; ``nan_at`` makes the loss NaN at those steps."""

    def __init__(self, lr: float = 0.1, nan_at: tuple[int, ...] = (), nan_grad_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.lr, self.nan_at, self.nan_grad_at = lr, set(nan_at), set(nan_grad_at)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = (self.head(torch.tanh(self.body(x))) - y).pow(2).mean()
        if self.global_step in self.nan_at:
            loss = loss * float("nan")
        if self.global_step in self.nan_grad_at:  # adds 0 to the loss, NaN (0 * 1/sqrt(0)) to body's gradients
            loss = loss + 0 * (self.body.weight * 0).sqrt().sum()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 4, generator=g)
        data = torch.utils.data.TensorDataset(x, 3 * x.sum(1, keepdim=True))
        return torch.utils.data.DataLoader(data, batch_size=8)


def trainer(tmp_path, *callbacks, epochs=2):
    return L.Trainer(
        max_epochs=epochs, callbacks=list(callbacks), default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )


def test_first_non_finite_names_the_tensor():
    assert first_non_finite([("a", torch.ones(2)), ("b", torch.tensor([math.inf])), ("c", torch.tensor([math.nan]))]) == "b"
    assert first_non_finite([("a", torch.ones(2)), ("b", None)]) is None


def test_stop_names_step_loss_layer_and_remedies(tmp_path):
    module = Tiny(nan_at=(5,))
    last = LastCheckpoint(every_n_train_steps=1, dirpath=str(tmp_path / "ckpt"))
    with pytest.raises(DnnkitError) as err:
        trainer(tmp_path, NonFiniteGuard(), last).fit(module)
    msg = str(err.value)
    assert "step 5" in msg and "the loss is nan" in msg and "layer 'body'" in msg
    assert "lower the learning rate" in msg and "clip" in msg and "batch normalization" in msg
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # the state before the bad step, intact and finite
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_remedies_are_the_text_gradient_health_gives(tmp_path):
    from dnnkit.nn.health import REMEDIES

    with pytest.raises(DnnkitError) as err:
        trainer(tmp_path, NonFiniteGuard(), epochs=1).fit(Tiny(nan_at=(0,)))
    assert str(err.value).endswith(f"Remedies: {REMEDIES['exploding']}")
    assert "Trainer(gradient_clip_val=" in str(err.value)  # worded for any LightningModule, not dnnkit's keys only
    hooks = [n for n, v in vars(NonFiniteGuard).items() if callable(v) and not n.startswith("_") and hasattr(L.Callback, n)]
    assert len(hooks) == 8 and all(getattr(getattr(NonFiniteGuard, n), "__override__", False) for n in hooks)


def test_skip_drops_the_bad_step_and_goes_on(tmp_path):
    module = Tiny(nan_at=(3,))
    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    guard = NonFiniteGuard(action="skip")
    t = trainer(tmp_path, Snapshot(), guard, epochs=1)
    t.fit(module)
    assert guard.skipped == 1 and t.global_step == 8  # every batch counted, one of them skipped
    # the bad step changed nothing: the weights before step 3 and before the next step are equal
    step3, after = before[3], before[4]
    assert all(torch.equal(step3[k], after[k]) for k in step3)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert guard.state_dict()["skipped"] == 1


def test_skip_stops_after_max_skips_in_a_row(tmp_path):
    with pytest.raises(DnnkitError, match="3 bad steps in a row \\(max_skips=2\\)"):
        trainer(tmp_path, NonFiniteGuard(action="skip", max_skips=2)).fit(Tiny(nan_at=(2, 3, 4)))


def test_a_step_without_a_loss_is_not_judged_on_the_last_one(tmp_path):
    class SkipsBatches(Tiny):  # a NaN loss at step 0, then steps whose training_step returns None
        def training_step(self, batch, batch_idx):
            return None if batch_idx in (1, 2, 3) else super().training_step(batch, batch_idx)

    guard = NonFiniteGuard(action="skip", max_skips=2)
    trainer(tmp_path, guard, epochs=1).fit(SkipsBatches(nan_at=(0,)))  # was: "3 bad steps in a row"
    assert guard.skipped == 1


def test_no_checkpoint_with_non_finite_weights(tmp_path):
    module = Tiny()
    with torch.no_grad():
        module.head.weight.fill_(math.inf)
    t = trainer(tmp_path, NonFiniteGuard(check_weights=False), epochs=1)
    t.strategy.connect(module)
    t.state.fn = "fit"
    with pytest.raises(DnnkitError, match="refusing to write a checkpoint with non-finite weights \\(head.weight\\)"):
        t.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_bad_action_is_refused():
    with pytest.raises(DnnkitError, match="unknown non-finite action 'ignore'; valid: skip, stop"):
        NonFiniteGuard(action="ignore")


def test_divergent_learning_rate_stops_the_recipe(fake_data, tmp_path):
    cfg = compose_config(FAST + [
        "trainer.max_epochs=3", "trainer.limit_train_batches=5", "optimizer.lr=1e6",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ])
    with pytest.raises(DnnkitError, match="training diverged at step [0-9]+ .*Remedies: lower the learning rate") as err:
        run_recipe(cfg, tmp_path / "run")
    stage = tmp_path / "run" / "train"
    assert not (stage / "result.json").exists()
    step = int(re.search(r"diverged at step (\d+)", str(err.value)).group(1))
    last = torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)  # the last good step
    assert last["global_step"] == step
    assert all(torch.isfinite(t).all() for t in read_state_dict(stage / "checkpoints" / "last.ckpt").values())


@pytest.mark.parametrize("check_weights", [False, True])
def test_weights_made_infinite_by_a_step_are_named(tmp_path, check_weights):
    class Overflow(L.Callback):  # as if the update of step 3 overflowed the head's weights
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4:
                with torch.no_grad():
                    pl_module.head.weight.fill_(math.inf)

    # found after step 3 (check_weights) or by step 4's loss; skipping cannot repair weights, so it stops
    guard = NonFiniteGuard(action="skip", check_weights=check_weights)
    with pytest.raises(DnnkitError, match="diverged at step 3 .*the weights of layer 'head' are no longer finite"):
        trainer(tmp_path, Overflow(), guard).fit(Tiny())
    assert guard.skipped == 0


@pytest.mark.parametrize(("guard", "message"), [
    (NonFiniteGuard(), "diverged at step 3 .*the weights of layer 'body' are no longer finite"),  # seen in step 4's loss
    (NonFiniteGuard(check_gradients=True), "diverged at step 3 .*the loss is [0-9.]+ and gradients first non-finite in layer 'body'"),
])
def test_a_non_finite_gradient_from_a_finite_loss_is_named(tmp_path, guard, message):
    with pytest.raises(DnnkitError, match=message):
        trainer(tmp_path, guard).fit(Tiny(nan_grad_at=(3,)))


def test_skip_checks_the_gradients_of_a_finite_loss(tmp_path):
    guard = NonFiniteGuard(action="skip")
    trainer(tmp_path, guard, epochs=1).fit(module := Tiny(nan_grad_at=(3,)))
    assert guard.skipped == 1 and all(torch.isfinite(p).all() for p in module.parameters())


def test_skip_still_checks_the_gradients_after_a_mid_epoch_resume(tmp_path):
    class Crash(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                raise RuntimeError("crash")

    def last():
        return LastCheckpoint(every_n_train_steps=3, dirpath=str(tmp_path / "ckpt"))

    with pytest.raises(RuntimeError, match="crash"):
        trainer(tmp_path, last(), Crash(), epochs=1).fit(Tiny())
    # Lightning skips on_train_epoch_start when it resumes mid-epoch (from step 3 here)
    guard = NonFiniteGuard(action="skip")
    trainer(tmp_path, guard, last(), epochs=1).fit(module := Tiny(nan_grad_at=(5,)), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert guard.skipped == 1 and all(torch.isfinite(p).all() for p in module.parameters())
