"""Use 3: dnnkit's callbacks in your own Trainer, on a LightningModule that knows nothing of dnnkit.

Run: ``python recipes/callbacks_in_your_trainer.py [--epochs 2] [--limit-batches N]``
(needs MNIST via ``$DNNKIT_DATA_DIR``; the DataModule is dnnkit's only for the data files).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dnnkit.callbacks import EpochSummary
from dnnkit.data import MNISTDataModule


class PlainNet(L.LightningModule):
    """A user's own module: no dnnkit base class, its own layer names and optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.net(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--limit-batches", type=int, default=None)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    summary = EpochSummary(keys=["train/loss", "val/acc"])
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        callbacks=[summary],
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    trainer.fit(PlainNet(), MNISTDataModule("mnist", val_size=args.val_size))
    return summary.history


if __name__ == "__main__":
    print(main()[-1])
