"""NonFiniteGuard on a LightningModule that is not dnnkit's, and through the recipe runner."""

import logging
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


def trainer(tmp_path, *callbacks, epochs=2, **kw):
    return L.Trainer(
        max_epochs=epochs, callbacks=list(callbacks), default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw,
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


class BNNet(L.LightningModule):
    """A plain classifier with batch norm; ``nan_at`` feeds a NaN batch at those steps (its forward
    pass moves the running statistics, the optimizer step is what the guard drops)."""

    def __init__(self, nan_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        self.nan_at = set(nan_at)
        self.val_acc: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step in self.nan_at:
            x = x * float("nan")
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc.append(float((self(x).argmax(1) == y).float().mean()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    @staticmethod
    def loader():
        g = torch.Generator().manual_seed(0)
        y = torch.arange(96) % 3
        x = torch.randn(96, 4, generator=g) + 4 * nn.functional.one_hot(y, 4).float() + 2  # three clusters, off BN's init
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_skip_restores_batch_norm_buffers(tmp_path, capsys):
    module = BNNet(nan_at=(3,))
    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before[trainer.global_step] = {k: v.clone() for k, v in pl_module.named_buffers()}

    guard = NonFiniteGuard(action="skip")
    t = trainer(tmp_path, Snapshot(), guard, epochs=3, enable_checkpointing=False)  # a checkpoint would refuse the NaN buffers
    t.fit(module, BNNet.loader(), BNNet.loader())
    assert guard.skipped == 1
    # every buffer (running mean and variance, num_batches_tracked) as it was before the bad step
    assert set(before[3]) == {"net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"}
    assert all(torch.equal(before[3][k], before[4][k]) for k in before[3])
    assert all(torch.isfinite(b).all() for b in module.buffers())
    assert module.net[1].num_batches_tracked == t.global_step - 1  # the skipped step's forward is not counted
    assert module.val_acc[-1] > 0.9  # was 1/3: NaN running statistics, one class predicted
    out = capsys.readouterr().out
    assert "NonFiniteGuard: step 3 skipped: the loss is nan" in out
    assert "buffer 'net.1.running_mean' non-finite (restored)" in out


def test_skip_catches_a_buffer_made_non_finite_by_a_finite_loss(tmp_path):
    class Masked(BNNet):  # a NaN in a branch the loss does not use: finite loss, NaN running statistics
        def __init__(self):
            super().__init__()
            self.side = nn.BatchNorm1d(4)

        def training_step(self, batch, batch_idx):
            x, _ = batch
            self.side(x * float("nan") if self.global_step == 2 else x)
            return super().training_step(batch, batch_idx)

    guard = NonFiniteGuard(action="skip")
    trainer(tmp_path, guard, epochs=1).fit(module := Masked(), BNNet.loader())
    assert guard.skipped == 1 and all(torch.isfinite(b).all() for b in module.buffers())


def test_stop_names_a_non_finite_buffer(tmp_path):
    with pytest.raises(DnnkitError, match=r"step 3 .*the loss is nan .*buffer 'net.1.running_mean' non-finite"):
        trainer(tmp_path, NonFiniteGuard(), epochs=1).fit(BNNet(nan_at=(3,)), BNNet.loader())

    class Overflow(L.Callback):  # as if step 2 had made a running variance infinite, its loss finite
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                pl_module.net[1].running_var.fill_(math.inf)

    with pytest.raises(DnnkitError, match=r"diverged at step 2 .*the buffer 'net.1.running_var' of layer 'net.1' is no longer finite"):
        trainer(tmp_path, Overflow(), NonFiniteGuard(check_weights=True), epochs=1).fit(BNNet(), BNNet.loader())


def test_skip_without_buffers_and_stop_mode_take_no_snapshot(tmp_path):
    guard = NonFiniteGuard(action="skip")
    trainer(tmp_path, guard, epochs=1).fit(Tiny(nan_at=(2,)))
    assert guard.skipped == 1 and guard._saved is None
    stop = NonFiniteGuard()
    trainer(tmp_path, stop, epochs=1).fit(BNNet(), BNNet.loader())
    assert stop._saved is None


def test_the_skip_line_is_a_warning_of_the_dnnkit_logger(tmp_path, capsys):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("dnnkit.callbacks.non_finite")
    logger.addHandler(handler)
    try:
        trainer(tmp_path, NonFiniteGuard(action="skip"), epochs=1).fit(Tiny(nan_at=(2,)))
    finally:
        logger.removeHandler(handler)
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in records] == [("WARNING", "NonFiniteGuard")]
    assert records[0].getMessage().startswith("NonFiniteGuard: step 2 skipped: the loss is nan")
    assert "NonFiniteGuard: step 2 skipped" in capsys.readouterr().out  # the dnnkit logger prints to stdout


def test_skip_under_gradient_accumulation_restores_the_buffers_from_the_steps_first_batch(tmp_path):
    class NanBatch(BNNet):  # the second of the two batches of optimizer step 1 is NaN
        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x * float("nan") if batch_idx == 3 else x), y)

    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before[batch_idx] = {k: v.clone() for k, v in pl_module.named_buffers()}

    guard = NonFiniteGuard(action="skip")
    trainer(tmp_path, Snapshot(), guard, epochs=1, accumulate_grad_batches=2).fit(module := NanBatch(), BNNet.loader())
    assert guard.skipped == 1
    assert all(torch.equal(before[2][k], before[4][k]) for k in before[2])  # both of step 1's forward passes undone
    assert not torch.equal(before[4]["net.1.running_mean"], before[5]["net.1.running_mean"])  # later steps move them
    assert all(torch.isfinite(b).all() for b in module.buffers())
