"""LastCheckpoint and RNGState on a LightningModule that is not dnnkit's: a crash mid-epoch
resumes from the last N-step checkpoint and ends where an uninterrupted run ends."""

import lightning as L
import pytest
import torch
from torch import nn

from dnnkit.callbacks import LastCheckpoint, RNGState
from dnnkit.callbacks.rng_state import collect_rng_states, set_rng_states
from dnnkit.errors import DnnkitError


class Noisy(L.LightningModule):
    """Dropout makes every step draw random numbers: a resume without RNG states would differ."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return (self.net(x) - y).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Crash(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 19:
            raise RuntimeError("crash")  # the files stay as a crash leaves them


def fit(tmp_path, *callbacks, ckpt_path=None, every=5):
    L.seed_everything(0, verbose=False)
    module = Noisy()
    trainer = L.Trainer(max_epochs=3, callbacks=[LastCheckpoint(every_n_train_steps=every, dirpath=str(tmp_path)), RNGState(), *callbacks],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", deterministic=True)
    trainer.fit(module, ckpt_path=ckpt_path)
    return module, trainer


def test_rng_states_round_trip():
    states = collect_rng_states()
    a = torch.rand(3)
    set_rng_states(states)
    assert torch.equal(a, torch.rand(3))


def test_last_checkpoint_every_n_steps_and_at_epoch_end(tmp_path):
    class Steps(L.Callback):
        seen = []

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            self.seen.append(checkpoint["global_step"])

    fit(tmp_path, Steps())
    assert Steps.seen == [5, 8, 10, 15, 16, 20, 24]  # every 5 steps and at each 8-step epoch's end
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 24


def test_a_step_save_on_the_epochs_last_batch_leaves_the_epoch_end_save_to_come(tmp_path):
    # 8 batches an epoch, a save due every 8 steps: the save must come after the epoch's end,
    # with the states that change there, not at the last batch (which kept the epoch-end save
    # from happening, so last.ckpt missed them and a resume took the epoch for finished)
    class EpochsEnded(L.Callback):
        def __init__(self):
            self.n = 0

        def on_train_epoch_end(self, trainer, pl_module):
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

    counter = EpochsEnded()
    fit(tmp_path, counter, every=8)
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 24 and ckpt["callbacks"][counter.state_key] == {"n": 3}


def test_crash_then_resume_matches_uninterrupted(tmp_path):
    # a plain DataLoader restarts its epoch on resume, so the checkpoint is at an epoch end here;
    # the crash comes 3 steps into the next epoch, whose dropout masks must be drawn again
    ref, _ = fit(tmp_path / "ref", every=8)
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path / "run", Crash(), every=8)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == 16
    resumed, trainer = fit(tmp_path / "run", ckpt_path=str(tmp_path / "run" / "last.ckpt"), every=8)
    assert trainer.global_step == 24
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_every_n_train_steps_is_checked():
    with pytest.raises(DnnkitError, match="every_n_train_steps must be an integer >= 0, got -1"):
        LastCheckpoint(every_n_train_steps=-1)


@pytest.mark.parametrize(("seconds", "expected"), [(0.0, list(range(1, 25))), (3600.0, [8, 16, 24])])
def test_last_checkpoint_every_n_seconds(tmp_path, seconds, expected):
    seen = []

    class Steps(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            seen.append(checkpoint["global_step"])

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=3, callbacks=[LastCheckpoint(every_n_seconds=seconds, dirpath=str(tmp_path)), Steps()],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Noisy())
    assert seen == expected  # 0 s: after every step (an epoch end adds no second copy); an hour: epoch ends only


def test_every_n_seconds_is_checked():
    with pytest.raises(DnnkitError, match="every_n_seconds must be a number >= 0 or null, got -1"):
        LastCheckpoint(every_n_seconds=-1)
