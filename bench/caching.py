"""Caching frozen layers: the ``reuse`` recipe's frozen stage, cached vs uncached.

The stage trains a 784-300-50-50-20-10 ReLU network on MNIST's 55,000 training images with
hidden1-2 (reused from the ``clipping`` stage) frozen. Uncached, every step pushes each batch
through the frozen 784-300-50 bottom; cached, that bottom's outputs are computed once and the
steps see 50 floats per image. Both runs go through the recipe runner (``fit_stage``) with the
same seed, so they see the same batches in the same order:

    python -m bench.caching                 # ~1 minute on 2 idle cores
    python -m bench.caching --epochs 5 --rounds 2 --threads 1

Prints, per run, the median training-epoch time (validation excluded), the one-off cost of
building the cache, validation and test accuracy; then the speed-up and the accuracy gap, and
the same speed-up for a raw PyTorch loop (no Lightning) over the same data for reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dnnkit.data import MNISTDataModule
from dnnkit.data.loader import TensorLoader
from dnnkit.nn import MLP
from dnnkit.runner import fit_stage
from dnnkit.stages import stage_configs

TIMES: list[dict] = []  # filled by EpochTimer at the end of each fit


class EpochTimer(L.Callback):
    """Training time of each epoch (up to its validation) and the cache's build time."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.training:
            self.epochs.append(time.perf_counter() - self._start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if len(self.epochs) < trainer.current_epoch + 1:  # no validation this epoch
            self.epochs.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer, pl_module) -> None:
        build = getattr(trainer.datamodule, "build_seconds", None)
        TIMES.append({"epochs": list(self.epochs), "build": build})


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    from dnnkit.stages import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=["+recipe=reuse", "trainer.enable_progress_bar=false", *overrides])


def raw_loop_ratio(model: MLP, epochs: int) -> tuple[float, float]:
    """Median epoch seconds of a bare PyTorch loop, uncached vs cached, hidden1-2 frozen."""
    dm = MNISTDataModule("mnist", batch_size=200, seed=0)
    images, labels = dm.split("train")
    loader = TensorLoader(images, labels, 200, shuffle=True, seed=0)
    bottom = torch.nn.Sequential(torch.nn.Flatten(), model.hidden1, model.hidden2).eval().requires_grad_(False)
    top = torch.nn.Sequential(model.hidden3, model.hidden4, model.output)
    opt = torch.optim.SGD(top.parameters(), lr=0.01)
    with torch.no_grad():
        feats = torch.cat([bottom(loader.batch(torch.arange(i, min(len(labels), i + 2000)))[0]) for i in range(0, len(labels), 2000)])

    def epoch(cached: bool) -> float:
        start = time.perf_counter()
        order = torch.randperm(len(labels))
        for i in range(0, len(labels), 200):
            idx = order[i : i + 200]
            if cached:
                x = feats[idx]
            else:
                with torch.no_grad():
                    x = bottom(loader.batch(idx)[0])
            loss = F.cross_entropy(top(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    times = {True: [], False: []}
    for _ in range(epochs):
        for cached in (False, True):
            times[cached].append(epoch(cached))
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the median is reported)")
    parser.add_argument("--source-epochs", type=int, default=2, help="epochs of the clipping stage that provides hidden1-2")
    parser.add_argument("--rounds", type=int, default=1, help="uncached/cached pairs, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_caching_"))
    # the runner instantiates bench.caching.EpochTimer: that module, not this __main__, holds its TIMES
    from bench.caching import TIMES as times_recorded

    timer = {"_target_": "bench.caching.EpochTimer"}
    stages = dict(stage_configs(compose([f"trainer.max_epochs={args.epochs}"])))
    source = OmegaConf.merge(stages["clipping"], {"trainer": {"max_epochs": args.source_epochs}})
    print(f"clipping stage ({args.source_epochs} epochs) for hidden1-2 ...", flush=True)
    done = {"clipping": [fit_stage("clipping", source, 0, out / "clipping", done={})]}
    runs: dict[bool, list] = {False: [], True: []}
    for r in range(args.rounds):
        for cached in (False, True):
            cfg = OmegaConf.merge(stages["frozen_cached"], {"callbacks": {"layer_freezing": {"cache": cached}, "timer": timer}})
            print(f"frozen stage, {'cached' if cached else 'uncached'} (round {r + 1}) ...", flush=True)
            result = fit_stage("frozen_cached", cfg, 0, out / f"{'cached' if cached else 'uncached'}{r}", done)
            runs[cached].append((result, times_recorded[-1]))

    print(f"\nreuse recipe, frozen stage: hidden1-2 frozen, 55,000 images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads, {args.rounds} round(s)")
    print(f"{'run':<10} {'epoch (median)':>15} {'cache build':>12} {'val/acc':>8} {'test/acc':>9}")
    summary = {}
    for cached in (False, True):
        epochs = [t for _, times in runs[cached] for t in times["epochs"]]
        build = [times["build"] for _, times in runs[cached] if times["build"]]
        val = statistics.fmean(r.metrics["val/acc"] for r, _ in runs[cached])
        test = statistics.fmean(r.metrics["test/acc"] for r, _ in runs[cached])
        summary[cached] = (statistics.median(epochs), val, test)
        build_s = f"{statistics.median(build):.2f} s" if build else "-"
        print(f"{'cached' if cached else 'uncached':<10} {summary[cached][0]:>13.2f} s {build_s:>12} {val:>8.4f} {test:>9.4f}")
    speedup = summary[False][0] / summary[True][0]
    gap = 100 * abs(summary[False][2] - summary[True][2])
    print(f"\nspeed-up of a training epoch with the cache: {speedup:.2f}x (target >= 2x)")
    print(f"test accuracy gap: {gap:.2f} points (target <= 0.3); val gap {100 * abs(summary[False][1] - summary[True][1]):.2f}")
    model = MLP(784, [300, 50, 50, 20], 10, activation="relu")
    plain, cached = raw_loop_ratio(model, max(3, args.epochs))
    print(f"raw PyTorch loop for reference: {plain:.2f} s vs {cached:.2f} s per epoch, {plain / cached:.2f}x")


if __name__ == "__main__":
    main()
