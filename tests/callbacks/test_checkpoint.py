"""BestCheckpoint on a LightningModule that is not dnnkit's: ModelCheckpoint's files and state."""

import lightning as L
import torch
from torch import nn

from dnnkit.callbacks import BestCheckpoint, LastCheckpoint


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def step(self, batch):
        x, y = batch
        return (self.net(x) - y).pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self.step(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.step(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def loader(self):
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    def train_dataloader(self):
        return self.loader()

    def val_dataloader(self):
        return self.loader()


def fit(tmp_path, *callbacks):
    saved = []

    class Steps(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saved.append(checkpoint["global_step"])

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=3, callbacks=[*callbacks, Steps()], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Regression())
    return trainer, saved


def test_best_checkpoint_saves_after_validation_like_model_checkpoint(tmp_path):
    best = BestCheckpoint(dirpath=tmp_path, monitor="val/loss", filename="best")
    trainer, saved = fit(tmp_path, best)
    assert saved == [8, 16, 24]  # the loss falls every epoch: each epoch's validation writes best.ckpt
    assert best.best_model_path == str(tmp_path / "best.ckpt") and best.best_model_score is not None
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["global_step"] == 24


def test_best_checkpoint_still_saves_every_n_train_steps_when_asked(tmp_path):
    _, saved = fit(tmp_path, BestCheckpoint(dirpath=tmp_path, monitor=None, every_n_train_steps=5, save_top_k=-1))
    assert saved == [5, 10, 15, 20]


def test_checkpoint_callbacks_state_keys_are_lightnings_made_once():
    best, last = BestCheckpoint(monitor="val/acc", mode="max"), LastCheckpoint()
    assert best.state_key == best._generate_state_key(
        monitor="val/acc", mode="max", every_n_train_steps=0, every_n_epochs=1, train_time_interval=None
    )
    assert best.state_key is best.state_key and last.state_key is last.state_key
    assert last.state_key.startswith("LastCheckpoint{")
