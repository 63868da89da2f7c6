"""Use 3: dnnkit's callbacks in your own Trainer, on a LightningModule that knows nothing of dnnkit.

``SmallConvNet`` below is a user's own module: a plain ``L.LightningModule`` with its own layer
names (``features.0`` ... ``features.5``, ``head``), its own loss and its own optimizer. Four
dnnkit callbacks work on it unchanged:

- ``LayerFreezing(frozen="features.[01]")`` freezes the first convolution and its batch norm,
  chosen by a regex over the module's own names (as if they came pretrained);
- ``NonFiniteGuard(action="skip")`` drops the step whose loss is NaN (one training image is
  corrupted on purpose, ``--corrupt 1``) and training goes on;
- ``GradientClipping(mode="norm", threshold=...)`` clips the global gradient norm and counts the
  steps it clipped;
- ``EpochSummary`` prints one line per epoch.

Run: ``python examples/callbacks_in_your_trainer.py [--epochs 3] [--corrupt 1]`` (a few seconds on
a CPU, synthetic 28x28 images); ``--data mnist`` trains on MNIST found through
``$DNNKIT_DATA_DIR`` instead (then nothing is corrupted). It prints, after the epoch lines::

    layer        frozen  weights after training
    features.0   yes     unchanged
    features.1   yes     unchanged (running statistics too)
    features.3   no      changed
    head         no      changed
    GradientClipping: clipped 30 of 120 steps (global gradient norm above 0.5)
    NonFiniteGuard: skipped 3 steps whose loss was not finite; every weight is finite: True
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanMetric
from typing_extensions import override

from dnnkit.callbacks import EpochSummary, GradientClipping, LayerFreezing, NonFiniteGuard

FROZEN = "features.[01]"  # the first convolution and its batch norm, by the module's own names


class SmallConvNet(L.LightningModule):
    """A user's own module: no dnnkit base class, its own layer names, loss and optimizer."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),  # features.0
            nn.BatchNorm2d(8),  # features.1
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),  # features.3
            nn.ReLU(),
            nn.MaxPool2d(4),
        )
        self.head = nn.Linear(16 * 7 * 7, 10)
        # the step NonFiniteGuard skips has a NaN loss: leave it out of the epoch's mean
        self.train_loss = MeanMetric(nan_strategy="ignore")

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True)
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # LayerFreezing freezes in `setup`, before this runs: pass only what still trains
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(trainable, lr=self.lr, momentum=0.9)


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 28x28 images in [0, 1]: class c lights up row band c, on noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.25
    for c in range(10):
        images[labels == c, :, 2 + 2 * c : 4 + 2 * c, 4:24] = 0.9
    return images, labels


def synthetic_loaders(n_train: int, n_val: int, corrupt: int, batch_size: int = 50) -> tuple[DataLoader, DataLoader]:
    x, y = synthetic_images(n_train, seed=0)
    x[torch.randperm(n_train, generator=torch.Generator().manual_seed(1))[:corrupt]] = float("nan")  # bad records
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(*synthetic_images(n_val, seed=2)), batch_size=500)
    return train, val


def layer_report(model: nn.Module, before: dict[str, torch.Tensor], frozen: list[str]) -> dict[str, bool]:
    """Whether each layer with weights changed in training (its parameters *and* buffers)."""
    after = model.state_dict()
    layers = [n for n, m in model.named_modules() if n and not list(m.children()) and m.state_dict()]
    changed = {n: any(not torch.equal(before[k], after[k]) for k in after if k.startswith(n + ".")) for n in layers}
    print(f"{'layer':<12} frozen  weights after training")
    for name, moved in changed.items():
        bn = isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm)
        what = "changed" if moved else "unchanged" + (" (running statistics too)" if bn else "")
        print(f"{name:<12} {'yes' if name in frozen else 'no':<7} {what}")
    return changed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", choices=["synthetic", "mnist"], default="synthetic")
    parser.add_argument("--train-size", type=int, default=2000, help="synthetic training images")
    parser.add_argument("--val-size", type=int, default=None, help="validation images (default: 500 synthetic, 5,000 of MNIST)")
    parser.add_argument("--corrupt", type=int, default=1, help="synthetic training images set to NaN")
    parser.add_argument("--clip", type=float, default=0.5, help="GradientClipping's global-norm threshold")
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (smoke tests)")
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)

    model = SmallConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freezing = LayerFreezing(frozen=FROZEN)
    guard = NonFiniteGuard(action="skip")
    clipping = GradientClipping(mode="norm", threshold=args.clip)
    summary = EpochSummary(keys=["train/loss", "val/loss", "val/acc"])
    trainer = L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        # the guard first: a skipped step's gradients are gone before clipping looks at them
        callbacks=[freezing, guard, clipping, summary],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    if args.data == "mnist":
        from dnnkit.data import MNISTDataModule  # dnnkit's only for reading the files

        trainer.fit(model, datamodule=MNISTDataModule("mnist", val_size=args.val_size or 5000))
    else:
        trainer.fit(model, *synthetic_loaders(args.train_size, args.val_size or 500, args.corrupt))

    frozen = list(freezing.frozen_layers)
    changed = layer_report(model, before, frozen)
    stats = clipping.stats
    above = f"global gradient norm above {args.clip:g}"
    print(f"GradientClipping: clipped {stats['clipped_steps']} of {stats['steps']} steps ({above})")
    finite = all(bool(p.isfinite().all()) for p in model.parameters())
    print(f"NonFiniteGuard: skipped {guard.skipped} steps whose loss was not finite; every weight is finite: {finite}")
    return {"frozen": frozen, "changed": changed, "clipping": dict(stats), "skipped": guard.skipped, "history": summary.history}


if __name__ == "__main__":
    main()
