"""PerformanceScheduling on a module that is not dnnkit's: the rate drops exactly after
`patience` evaluations without improvement, resumes mid-plateau, fails clearly on an unknown
key, and cuts param groups added during training."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from dnnkit.callbacks import PerformanceScheduling
from dnnkit.callbacks.performance_scheduling import Plateau
from dnnkit.errors import DnnkitError
from dnnkit.runner import close_process_group

# the monitored value after each epoch's validation; best 0.7 at epoch 2, then flat until 0.6
SCRIPT = [1.0, 0.8, 0.7, 0.7, 0.75, 0.71, 0.6, 0.65, 0.65, 0.65, 0.6, 0.6]
EPOCHS = len(SCRIPT)
LR = 0.1


class Scripted(L.LightningModule):
    """Not a dnnkit module: logs a scripted `val/score` so the plateau is known in advance."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/score", SCRIPT[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


class EpochLR(L.Callback):
    """The rate each epoch trains with, per param group."""

    def __init__(self) -> None:
        self.lrs: dict[int, list[float]] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs[trainer.current_epoch] = [g["lr"] for g in trainer.optimizers[0].param_groups]


def loader() -> DataLoader:
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def fit(callbacks, tmp_path, epochs=EPOCHS, ckpt_path=None, checkpointing=False, module=None) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=checkpointing, default_root_dir=tmp_path, accelerator="cpu", num_sanity_val_steps=1,
    )
    trainer.fit(module or Scripted(), train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path)
    return trainer


def test_lr_drops_exactly_after_patience_stalled_evaluations(tmp_path):
    probe = EpochLR()
    sched = PerformanceScheduling("val/score", mode="min", factor=0.5, patience=3, threshold=0.0)
    trainer = fit([sched, probe], tmp_path)
    # evaluations 3, 4, 5 (0-based epochs) don't beat 0.7 -> cut after epoch 5's validation;
    # 0.6 at epoch 6 is the new best, 7, 8, 9 stall -> cut after epoch 9; 10, 11 tie 0.6
    expected = [LR] * 6 + [LR / 2] * 4 + [LR / 4] * 2
    assert [probe.lrs[e][0] for e in range(len(SCRIPT))] == expected
    assert [r["epoch"] for r in sched.reductions] == [5, 9]
    assert trainer.callback_metrics["lr"] == pytest.approx(LR / 4)
    assert trainer.callback_metrics["lr/reductions"] == 2


def test_resume_mid_plateau_continues_the_count(tmp_path):
    make = lambda: PerformanceScheduling("val/score", factor=0.5, patience=3, threshold=0.0)  # noqa: E731
    full = EpochLR()
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, monitor=None)
    fit([make(), full, every_epoch], tmp_path / "full", checkpointing=True)
    # after epoch 4 the plateau is 2 evaluations old; a fresh counter would not cut at epoch 5
    resumed_probe, resumed = EpochLR(), make()
    fit([resumed, resumed_probe], tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "epoch=4.ckpt"))
    assert resumed_probe.lrs == {e: full.lrs[e] for e in range(5, len(SCRIPT))}
    assert resumed_probe.lrs[5] == [LR] and resumed_probe.lrs[6] == [LR / 2]
    assert [r["epoch"] for r in resumed.reductions] == [5, 9]
    torch.load(tmp_path / "ckpt" / "epoch=4.ckpt", weights_only=True)


def test_unknown_monitor_names_the_logged_keys(tmp_path):
    with pytest.raises(DnnkitError, match=r"monitors 'val/loss', which was never logged; logged keys: val/score"):
        fit([PerformanceScheduling("val/loss")], tmp_path, epochs=1)


class AddGroup(L.Callback):
    """Unfreezing-style: a new param group with its own rate joins at epoch 2."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            pl_module.extra = torch.nn.Linear(3, 1)
            trainer.optimizers[0].add_param_group({"params": pl_module.extra.parameters(), "lr": 0.02})


def test_param_groups_added_during_training_are_cut_too(tmp_path):
    probe = EpochLR()
    fit([PerformanceScheduling("val/score", factor=0.5, patience=3, threshold=0.0, min_lr=0.015), AddGroup(), probe], tmp_path)
    assert probe.lrs[5] == [LR, 0.02]
    assert probe.lrs[6] == [LR / 2, 0.015]  # cut, but not below min_lr
    assert probe.lrs[10] == [LR / 4, 0.015]


def test_plateau_mode_max_threshold_and_cooldown():
    p = Plateau(mode="max", patience=2, threshold=0.01, threshold_mode="abs", cooldown=2)
    values = [0.5, 0.505, 0.509, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52]
    # 0.505 and 0.509 are within 0.01 of 0.5 -> cut; 2 evaluations of cooldown; 0.52 is new
    # best (improves on 0.5 by more than 0.01)... then 2 bad after cooldown -> cut
    assert [p.update(v) for v in values] == [False, False, True, False, False, False, True, False, False, False]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"factor": 1.5}, "factor must be a number in \\(0, 1\\), got 1.5"),
        ({"patience": 0}, "patience must be a positive integer, got 0"),
        ({"mode": "maximum"}, "unknown mode 'maximum'; valid: max, min"),
        ({"min_lr": -1}, "min_lr must be a number >= 0, got -1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(DnnkitError, match=message):
        PerformanceScheduling(**kwargs)


class RankDependent(Scripted):
    """Rank 0 logs the plateau script, rank 1 a value that keeps improving (not synced)."""

    def validation_step(self, batch, batch_idx):
        value = SCRIPT[self.current_epoch] if self.global_rank == 0 else 1.0 - 0.05 * self.current_epoch
        self.log("val/score", value)


class SaveLRs(EpochLR):
    def __init__(self, folder) -> None:
        super().__init__()
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.lrs))

    def teardown(self, trainer, pl_module, stage):
        close_process_group()  # else a spawned rank could abort at exit after passing (seen once in CI)


@pytest.mark.slow  # spawns two processes
def test_ddp_ranks_take_the_same_decision(tmp_path):
    trainer = L.Trainer(
        max_epochs=len(SCRIPT), accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        callbacks=[PerformanceScheduling("val/score", factor=0.5, patience=3, threshold=0.0), SaveLRs(tmp_path)],
    )
    trainer.fit(RankDependent(), train_dataloaders=loader(), val_dataloaders=loader())
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1  # rank 1's own metric never stalls, yet it cuts with rank 0
    assert [rank0[str(e)][0] for e in range(len(SCRIPT))] == [LR] * 6 + [LR / 2] * 4 + [LR / 4] * 2


def torch_cuts(values, patience, cooldown):
    """The evaluations (1-based) at which PyTorch's ReduceLROnPlateau cuts."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=patience, cooldown=cooldown, factor=0.5)
    cuts = []
    for i, v in enumerate(values, 1):
        lr = opt.param_groups[0]["lr"]
        sched.step(v)
        if opt.param_groups[0]["lr"] < lr:
            cuts.append(i)
    return cuts


def keras_cuts(values, patience, cooldown):
    """Keras 3's ReduceLROnPlateau.on_epoch_end counting, written out (min_delta 0, mode min)."""
    best, wait, counter, cuts = float("inf"), 0, 0, []
    for i, v in enumerate(values, 1):
        if counter > 0:
            counter, wait = counter - 1, 0
        if v < best:
            best, wait = v, 0
        elif counter == 0:
            wait += 1
            if wait >= patience:
                cuts.append(i)
                counter, wait = cooldown, 0
    return cuts


@pytest.mark.parametrize("cooldown", [0, 1, 2, 3])
def test_cooldown_skips_c_evaluations_as_pytorch_does(cooldown):
    """dnnkit's patience is Keras's (PyTorch's patience + 1), its cooldown PyTorch's: c uncounted."""
    values = [1.0, 0.9] + [0.9] * 20 + [0.5] + [0.5] * 10
    p = Plateau(mode="min", patience=3, threshold=0.0, cooldown=cooldown)
    ours = [i for i, v in enumerate(values, 1) if p.update(v)]
    assert ours == torch_cuts(values, patience=2, cooldown=cooldown)
    assert ours[1] - ours[0] == cooldown + 3  # the first cut at evaluation 5, then c uncounted + 3 bad
    if cooldown:  # Keras's cooldown=c leaves c - 1 uncounted, so it cuts one evaluation sooner
        assert keras_cuts(values, patience=3, cooldown=cooldown)[:2] == [ours[0], ours[1] - 1]
    else:
        assert keras_cuts(values, patience=3, cooldown=0) == ours
