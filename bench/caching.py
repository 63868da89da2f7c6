"""Caching frozen layers: the ``reuse`` recipe's frozen stage, cached vs uncached.

The stage trains a 784-300-50-50-20-10 ReLU network on MNIST's 55,000 training images with
hidden1-2 (reused from the ``clipping`` stage) frozen. Uncached, every step pushes each batch
through the frozen 784-300-50 bottom; cached, that bottom's outputs are computed once and the
steps see 50 floats per image. Both runs go through the recipe runner (``fit_stage``) with the
same seed, so they see the same batches in the same order::

    python -m bench.caching                 # ~1 minute on 2 idle cores
    python -m bench.caching --epochs 5 --rounds 2 --threads 1

Prints, per run, the median training-epoch time (validation excluded), the one-off cost of
building the cache, validation and test accuracy; then the speed-up and the accuracy gap, and
the same speed-up for a raw PyTorch loop (no Lightning) over the same data for reference. The
tables go into ``docs/RESULTS.md``, between ``<!-- bench:caching:begin -->`` and
``<!-- bench:caching:end -->`` (``--results PATH`` for another file, ``--no-write`` to only
print); Hydra overrides of the recipe may follow the options.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench.common import EpochTimer, add_results_arguments, command_line, md_table, median, publish, raw_fit, recipe_config, results_target
from dnnkit.data.feature_cache import FeatureLoader, compute_features
from dnnkit.nn import MLP
from dnnkit.nn.freeze import freeze, frozen_bottom, skip, unskip
from dnnkit.runner import fit_stage
from dnnkit.stages import stage_configs

TIMER = {"_target_": "bench.common.EpochTimer"}


def raw_loop_epochs(cfg: DictConfig, epochs: int) -> tuple[float, float]:
    """Median epoch seconds of the raw PyTorch loop (no Lightning, no validation) on the stage's
    training data, hidden1-2 frozen: uncached and cached epochs alternated."""
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    model = MLP(784, [300, 50, 50, 20], 10, activation="relu")
    freeze(model, "hidden[12]")
    bottom, frozen = frozen_bottom(model, ["hidden1", "hidden2"])
    loader = dm.train_dataloader()
    cached_loader = FeatureLoader(compute_features(bottom, loader), loader)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    times = {True: [], False: []}
    for _ in range(epochs):
        for cached in (False, True):
            (skip if cached else unskip)(frozen)  # cached: the model takes hidden2's outputs as its input
            times[cached] += raw_fit(model, opt, cached_loader if cached else loader, 1).wall
    unskip(frozen)
    return median(times[False]), median(times[True])


def report(runs: dict[bool, list], raw: tuple[float, float], epochs: int, rounds: int, command: str) -> str:
    """The markdown block: the runs' table, the speed-up and accuracy gaps, the raw loop's ratio."""
    rows, summary = [], {}
    for cached in (False, True):
        train = [t for _, timer in runs[cached] for t in timer.train_seconds]
        build = [timer.build_seconds for _, timer in runs[cached] if timer.build_seconds]
        val = statistics.fmean(r.metrics["val/acc"] for r, _ in runs[cached])
        test = statistics.fmean(r.metrics["test/acc"] for r, _ in runs[cached])
        summary[cached] = (median(train), val, test)
        rows.append(("cached" if cached else "uncached", f"{summary[cached][0]:.2f}",
                     f"{median(build):.2f}" if build else "-", f"{val:.4f}", f"{test:.4f}"))
    speedup = summary[False][0] / summary[True][0]
    gap = 100 * abs(summary[False][2] - summary[True][2])
    lines = [
        f"Command: `{command}`  ",
        f"The `reuse` recipe's frozen stage: hidden1-2 frozen, {epochs} epochs, {torch.get_num_threads()} threads, "
        f"{rounds} round(s).",
        "",
        *md_table(["run", "training epoch, median (s)", "cache build (s)", "val/acc", "test/acc"], rows),
        "",
        f"Speed-up of a training epoch with the cache: **{speedup:.2f}x** (target >= 2x). "
        f"Test accuracy gap: {gap:.2f} points (target <= 0.3); val gap {100 * abs(summary[False][1] - summary[True][1]):.2f}.",
        f"Raw PyTorch loop for reference: {raw[0]:.2f} s vs {raw[1]:.2f} s per epoch, {raw[0] / raw[1]:.2f}x.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.caching", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the median is reported)")
    parser.add_argument("--source-epochs", type=int, default=2, help="epochs of the clipping stage that provides hidden1-2")
    parser.add_argument("--rounds", type=int, default=1, help="uncached/cached pairs, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--runs", "--out", dest="runs", type=Path, default=None,
                        help="run folder (default: a temporary one); --out is its old name")
    add_results_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe, e.g. data.val_size=1000")
    args = parser.parse_args(argv)
    target = results_target(parser, args, "caching")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.runs or Path(tempfile.mkdtemp(prefix="bench_caching_"))
    cfg = recipe_config("reuse", ["trainer.enable_progress_bar=false", f"trainer.max_epochs={args.epochs}", *args.overrides])
    stages = dict(stage_configs(cfg))
    source = OmegaConf.merge(stages["clipping"], {"trainer": {"max_epochs": args.source_epochs}})
    print(f"clipping stage ({args.source_epochs} epochs) for hidden1-2 ...", flush=True)
    done = {"clipping": [fit_stage("clipping", source, 0, out / "clipping", done={})]}
    runs: dict[bool, list] = {False: [], True: []}
    for r in range(args.rounds):
        for cached in (False, True):
            run_cfg = OmegaConf.merge(stages["frozen_cached"], {"callbacks": {"layer_freezing": {"cache": cached}, "timer": TIMER}})
            print(f"frozen stage, {'cached' if cached else 'uncached'} (round {r + 1}) ...", flush=True)
            result = fit_stage("frozen_cached", run_cfg, 0, out / f"{'cached' if cached else 'uncached'}{r}", done)
            runs[cached].append((result, EpochTimer.last))
    raw = raw_loop_epochs(stages["frozen_cached"], max(3, args.epochs))
    publish("caching", report(runs, raw, args.epochs, args.rounds, command_line("python -m bench.caching", argv)), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
