"""The contenders dnnkit is timed against, and whether they do the same work.

Every contender trains the network of a recipe's stage (built from the same config, seeded
alike) on the same training and validation images:

* ``raw``: :func:`bench.common.raw_fit`, a hand-written PyTorch loop over dnnkit's in-memory
  batches (one gather per batch, scale, forward, backward, step; validation accuracy at the end
  of each epoch). No logging, no checkpoints, no progress bar. The floor.
* ``floor``: :class:`MinimalLightning`, the raw loop's work as a LightningModule over the same
  loader, in a Trainer with no callbacks, logger, progress bar or checkpoints: Lightning's floor.
* ``lightning``: :class:`PlainLightning` + :func:`torchvision_loaders`, what a user would write
  instead of dnnkit: a LightningModule over torchvision's MNIST ``Dataset`` (PIL images,
  ``ToTensor``) in a ``DataLoader``, with Lightning's default Trainer (progress bar, logger,
  checkpointing).
* ``dnnkit`` (and ``dnnkit-bare``, without progress bar, logger and checkpoints):
  :func:`dnnkit.runner.fit_stage` on the composed config, as ``python -m dnnkit.train`` runs it.
* ``keras-jax``, ``keras-torch``: the same MLP in Keras 3, ``model.fit`` on the same uint8
  images, each backend in a child process of its own (:mod:`bench.keras_peers`; skipped with
  the install line when Keras or JAX is missing: ``pip install 'dnnkit[bench]'``).

``python -m bench.speed`` times them against each other. ``python -m bench.baselines`` checks
that they are fair: each trains for ``--epochs`` epochs and the table shows the validation
accuracy it reached beside dnnkit's (same network, optimizer and images, so within noise of
the shuffle order), with its median epoch time (the first epoch a warm-up).

Examples::

    python -m bench.baselines                            # mnist_bn, 3 epochs each
    python -m bench.baselines --epochs 2 --only raw dnnkit
    python -m bench.baselines --recipe transfer --stage B_on_A data.val_size=1000
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from bench import keras_peers
from bench.common import (
    EpochTimer,
    accuracy,
    add_results_arguments,
    command_line,
    md_table,
    median,
    publish,
    quiet,
    raw_fit,
    results_target,
    stage_config,
)
from dnnkit.data.discovery import DATASETS, FILES, find_dataset
from dnnkit.runner import device_summary, fit_stage

CONTENDERS = ("dnnkit", "dnnkit-bare", "raw", "floor", "lightning", "keras-jax", "keras-torch")


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


class PlainLightning(MinimalLightning):
    """The LightningModule a user writes: cross-entropy, SGD, torchmetrics accuracy, ``self.log``."""

    def __init__(self, model: nn.Module, optimizer_factory) -> None:
        super().__init__(model, optimizer_factory)
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



# ----------------------------------------------------------------------------- torchvision's data path


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


# ----------------------------------------------------------------------------- the contenders' fits


class Timed(NamedTuple):
    """One contender's fit: wall and CPU seconds per epoch, the whole fit's seconds, and the
    validation accuracy after the last epoch."""

    wall: list[float]
    cpu: list[float]
    fit_seconds: float
    val_acc: float


def _seeded(cfg: DictConfig):
    """The stage's datamodule and network, seeded as :func:`dnnkit.runner.fit_stage` seeds them."""
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    return instantiate(cfg.data, _convert_="all"), instantiate(cfg.model, _convert_="all")


def fit_dnnkit(name: str, cfg: DictConfig, epochs: int, bare: bool = False) -> Timed:
    """``dnnkit.runner.fit_stage`` on ``cfg`` (no testing, no export); ``bare``: no progress bar,
    logger or checkpoints."""
    cfg = cfg.copy()
    cfg.trainer.max_epochs = epochs
    cfg.test = False
    cfg.export = False  # not timed, but it cost every round seconds
    cfg.callbacks = dict(cfg.get("callbacks") or {})
    cfg.callbacks["timer"] = {"_target_": "bench.common.EpochTimer"}
    if bare:
        for key in ("checkpoint", "last_checkpoint", "progress_bar", "epoch_summary"):
            cfg.callbacks[key] = None
        cfg.logger = None
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_checkpointing = False
    with tempfile.TemporaryDirectory(prefix="dnnkit-bench-") as tmp:
        result = fit_stage(name, cfg, int(cfg.get("seed", 0)), Path(tmp), {})
    timer = EpochTimer.last
    return Timed(timer.epoch_seconds, timer.epoch_cpu_seconds, result.fit_seconds, result.metrics.get("val/acc", float("nan")))


def fit_raw(cfg: DictConfig, epochs: int) -> Timed:
    dm, model = _seeded(cfg)
    dm.setup("fit")
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    start = time.perf_counter()
    fit = raw_fit(model, optimizer, dm.train_dataloader(), epochs, val=dm.val_dataloader())
    return Timed(fit.wall, fit.cpu, time.perf_counter() - start, fit.val_acc[-1])


def fit_floor(cfg: DictConfig, epochs: int) -> Timed:
    dm, model = _seeded(cfg)
    module = MinimalLightning(model, instantiate(cfg.optimizer))
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    return Timed(timer.epoch_seconds, timer.epoch_cpu_seconds, seconds, accuracy(model, dm.val_dataloader()))


def fit_lightning(cfg: DictConfig, epochs: int, num_workers: int = 0) -> Timed:
    dm, model = _seeded(cfg)
    train_idx, val_idx = dnnkit_split_indices(dm)
    train, val = torchvision_loaders(dm.name, train_idx, val_idx, dm.batch_size, dm.eval_batch_size, dm.classes, num_workers)
    module = PlainLightning(model, instantiate(cfg.optimizer))
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="lightning-bench-") as tmp:
        trainer = L.Trainer(max_epochs=epochs, callbacks=[timer], default_root_dir=tmp)
        start = time.perf_counter()
        trainer.fit(module, train, val)
        seconds = time.perf_counter() - start
    return Timed(timer.epoch_seconds, timer.epoch_cpu_seconds, seconds, float(trainer.callback_metrics["val_acc"]))


def fit_keras(contender: str, name: str, cfg: DictConfig, epochs: int) -> Timed:
    """One ``model.fit`` of Keras on ``contender``'s backend in its child process
    (:mod:`bench.keras_peers`, started at the first fit); raise :class:`~bench.keras_peers.Skipped`
    with the reason when its packages are missing or the stage's network has no Keras twin."""
    key = (contender, name)
    if key not in _PEERS:
        reason = keras_peers.missing(contender)
        if reason:
            raise keras_peers.Skipped(reason)
        dm, model = _seeded(cfg)
        dm.setup("fit")
        train, val = dm.train_dataloader(), dm.val_dataloader()
        try:
            spec = keras_peers.keras_spec(cfg, model, train)
        except keras_peers.Skipped as err:
            raise keras_peers.Skipped(f"{contender}: skipped, {err}") from None
        data = (train.images, train.labels, val.images, val.labels)
        _PEERS[key] = keras_peers.KerasPeer(contender, spec, data, train.batch_size, val.batch_size, torch.get_num_threads())
    fit = _PEERS[key].fit(epochs, int(cfg.get("seed", 0)))
    return Timed(fit["wall"], fit["cpu"], fit["fit_seconds"], fit["val_acc"])


_PEERS: dict[tuple[str, str], keras_peers.KerasPeer] = {}


def close_peers() -> None:
    """End the Keras child processes (each removes its temporary folder)."""
    while _PEERS:
        _PEERS.popitem()[1].close()


def fit_contender(contender: str, name: str, cfg: DictConfig, epochs: int, num_workers: int = 0) -> Timed:
    """One fit of ``contender`` (one of :data:`CONTENDERS`) on stage ``name``'s config."""
    if contender in keras_peers.BACKENDS:
        return fit_keras(contender, name, cfg, epochs)
    if contender in ("dnnkit", "dnnkit-bare"):
        return fit_dnnkit(name, cfg, epochs, bare=contender == "dnnkit-bare")
    if contender == "raw":
        return fit_raw(cfg, epochs)
    if contender == "floor":
        return fit_floor(cfg, epochs)
    return fit_lightning(cfg, epochs, num_workers)


# ----------------------------------------------------------------------------- the bench


def report(fits: dict[str, Timed], recipe: str, stage: str, epochs: int, command: str) -> str:
    """The markdown block: per contender the validation accuracy beside dnnkit's and the epoch time."""
    ref = fits.get("dnnkit", fits.get("dnnkit-bare"))
    rows = [
        (c, f"{t.val_acc:.4f}", f"{100 * (t.val_acc - ref.val_acc):+.2f}" if ref else "-", f"{median(t.wall[1:]):.3f}",
         f"{median(t.cpu[1:]):.3f}")
        for c, t in fits.items()
    ]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {device_summary()}. The `{recipe}` network (stage `{stage}`), {epochs} epochs per contender, "
        "seeded alike; the epoch times are medians without the first (warm-up) epoch.",
        "",
        *md_table(["loop", f"val/acc after {epochs} epochs", "vs dnnkit (points)", "median s/epoch (wall)",
                   "median CPU s/epoch"], rows),
    ]
    return "\n".join(lines) + "\n"


def contender_parser(prog: str, description: str, only: list[str]) -> argparse.ArgumentParser:
    """The options of a bench that fits contenders on a recipe's stage (this one and ``bench.speed``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--recipe", default="mnist_bn")
    p.add_argument("--stage", default=None, help="a stage of the recipe (default: the first)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per fit; the first is a warm-up, not timed")
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=only)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain-Lightning baseline")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own); 1 avoids OpenMP spin-waits on a shared CPU")
    add_results_arguments(p)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=100")
    return p


def contender_setup(p: argparse.ArgumentParser, args: argparse.Namespace, bench: str) -> tuple[Path | None, str, DictConfig]:
    """Check the options, set the threads, quiet the logs; return the results file (``None``:
    don't write), the stage's name and config."""
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (one warm-up)")
    target = results_target(p, args, bench)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    return (target, *stage_config(args.recipe, args.stage, args.overrides))


def main(argv: list[str] | None = None) -> int:
    p = contender_parser("python -m bench.baselines", __doc__.split("\n\n")[0], ["dnnkit", "raw", "floor", "lightning"])
    args = p.parse_args(argv)
    target, name, cfg = contender_setup(p, args, "baselines")
    fits = {}
    try:
        for c in args.only:
            try:
                fits[c] = fit_contender(c, name, cfg, args.epochs, args.workers)
            except keras_peers.Skipped as err:
                print(err, flush=True)
                continue
            print(f"{c:<12} val/acc {fits[c].val_acc:.4f}, epochs " + " ".join(f"{s:.2f}" for s in fits[c].wall) + " s", flush=True)
    finally:
        close_peers()
    publish("baselines", report(fits, args.recipe, name, args.epochs, command_line("python -m bench.baselines", argv)), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
