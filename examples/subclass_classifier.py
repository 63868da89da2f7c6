"""Use 2: subclass a dnnkit module in your own project.

Run: ``python examples/subclass_classifier.py [--epochs 2] [--limit-batches N]``
(needs MNIST via ``$DNNKIT_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import functools

import lightning as L
import torch
from typing_extensions import override

import dnnkit
from dnnkit.callbacks import EpochSummary
from dnnkit.data import MNISTDataModule
from dnnkit.nn import MLP


class L2Classifier(dnnkit.Classifier):
    """dnnkit's Classifier with an L2 penalty on the output weights (the book's regularisation)."""

    def __init__(self, *args, l2: float = 1e-4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.l2 = l2

    @override
    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().loss(logits, y) + self.l2 * self.model.output.weight.square().sum()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (smoke tests)")
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)
    net = L2Classifier(
        MLP(784, [300, 100], 10, activation="elu", batch_norm=True),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True),
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        limit_test_batches=args.limit_batches,
        callbacks=[EpochSummary()],
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    data = MNISTDataModule("mnist", val_size=args.val_size)
    trainer.fit(net, data)
    return trainer.test(net, data, verbose=False)[0]


if __name__ == "__main__":
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in main().items()))
