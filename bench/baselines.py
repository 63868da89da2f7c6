"""The two baselines dnnkit is timed against.

* :func:`raw_fit`: the floor, a hand-written PyTorch loop over the same in-memory uint8 tensors
  (shuffle, one gather per batch, scale, forward, backward, step; validation accuracy at the end
  of each epoch). No logging, no checkpoints, no progress bar.
* :class:`PlainLightning` + :func:`torchvision_loaders`: what a user would write instead of
  dnnkit, a LightningModule over torchvision's MNIST ``Dataset`` (PIL images, ``ToTensor``) in a
  ``DataLoader``, with Lightning's default Trainer (progress bar, logger, checkpointing).

Both use the same network object type as dnnkit (built from the same config), so the only
difference measured is the loop and the data path.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from dnnkit.data.discovery import DATASETS, FILES, find_dataset


# ----------------------------------------------------------------------------- raw loop


def raw_fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    epochs: int,
    batch_size: int,
    eval_batch_size: int = 1000,
    seed: int = 0,
) -> tuple[list[float], list[float]]:
    """Train ``epochs`` epochs; return the wall-clock and the CPU seconds of each (training +
    validation).

    Example::

        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        >>> x, y = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (100,))
        >>> wall, cpu = raw_fit(model, torch.optim.SGD(model.parameters(), lr=0.01), (x, y), (x, y), 2, 20)
        >>> len(wall), len(cpu)
        (2, 2)
    """
    images, labels = train
    val_images, val_labels = val
    g = torch.Generator().manual_seed(seed)
    wall, cpu = [], []
    for _ in range(epochs):
        start, start_cpu = time.perf_counter(), time.process_time()
        model.train()
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(labels), batch_size):
            idx = order[i : i + batch_size]
            # index_select: the fastest gather (advanced indexing images[idx] is ~5x slower)
            x = images.index_select(0, idx).unsqueeze(1).float().mul_(1 / 255)
            loss = F.cross_entropy(model(x), labels.index_select(0, idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(val_labels), eval_batch_size):
                x = val_images[i : i + eval_batch_size].unsqueeze(1).float().mul_(1 / 255)
                correct += (model(x).argmax(1) == val_labels[i : i + eval_batch_size]).sum().item()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


# ----------------------------------------------------------------------------- Lightning's floor


class MinimalLightning(L.LightningModule):
    """Lightning's own floor: the raw loop's work (cross-entropy, the optimizer, validation
    accuracy) as a LightningModule with nothing else: no metrics objects, no ``self.log``."""

    def __init__(self, model: nn.Module, optimizer_factory) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer_factory

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return (self.model(x).argmax(1) == y).sum()

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())


# ----------------------------------------------------------------------------- plain Lightning


class PlainLightning(L.LightningModule):
    """The LightningModule a user writes: cross-entropy, SGD, torchmetrics accuracy, ``self.log``."""

    def __init__(self, model: nn.Module, optimizer_factory) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer_factory
        self.val_acc = MulticlassAccuracy(model.n_outputs, average="micro")

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())


def torchvision_root(name: str = "mnist") -> Path:
    """A temporary folder in torchvision's layout (``<root>/MNIST/raw/`` with the four
    decompressed IDX files) made from the files dnnkit finds; nothing is downloaded."""
    cls = DATASETS[name].torchvision_class
    files = find_dataset(name, None, download=False)
    # one folder per set of source files, so a test's fake data never stands in for the real set
    tag = hashlib.sha1(repr(sorted((k, str(p), Path(p).stat().st_size) for k, p in files.items())).encode()).hexdigest()[:10]
    root = Path(tempfile.gettempdir()) / f"dnnkit-bench-{name}-{tag}"
    raw = root / cls / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, src in files.items():
        dst = raw / FILES[key]
        if dst.is_file():
            continue
        src = Path(src)
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(src, dst)
    return root


class _Remap:
    """A picklable ``target_transform`` mapping original labels to 0..k-1."""

    def __init__(self, classes: list[int]) -> None:
        self.lut = {c: i for i, c in enumerate(classes)}

    def __call__(self, y: int) -> int:
        return self.lut[y]


def torchvision_loaders(
    name: str,
    train_indices: torch.Tensor,
    val_indices: torch.Tensor,
    batch_size: int,
    eval_batch_size: int = 1000,
    classes: list[int] | None = None,
    num_workers: int = 0,
):
    """Train and validation ``DataLoader``s over torchvision's dataset class, restricted to the
    same images dnnkit trains and validates on (indices into the full training set)."""
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    cls = getattr(torchvision.datasets, DATASETS[name].torchvision_class)
    full = cls(
        str(torchvision_root(name)), train=True, download=False, transform=transforms.ToTensor(),
        target_transform=_Remap(classes) if classes else None,
    )
    train = Subset(full, train_indices.tolist())
    val = Subset(full, val_indices.tolist())
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers),
        DataLoader(val, batch_size=eval_batch_size, num_workers=num_workers),
    )


def dnnkit_split_indices(datamodule) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into the *full* training set of the images a dnnkit DataModule trains and
    validates on (same split, class subset and per-class budget)."""
    from dnnkit.data.datamodule import load_arrays, split_indices

    labels = load_arrays(datamodule.name, datamodule.root, datamodule.download)["train_labels"]
    kept = torch.arange(len(labels))
    if datamodule.classes:
        kept = kept[torch.isin(labels, torch.tensor(datamodule.classes))]
    lut = torch.full((10,), -1, dtype=torch.long)
    lut[torch.tensor(datamodule.classes or list(range(10)))] = torch.arange(len(datamodule.classes or range(10)))
    train, val = split_indices(lut[labels[kept]], datamodule.val_size, datamodule.n_per_class, datamodule.seed)
    return kept[train], kept[val]
