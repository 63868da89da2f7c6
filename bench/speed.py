"""Epochs per second of dnnkit against a hand-written PyTorch loop and plain Lightning.

``python -m bench.speed`` times, for the network of a recipe (default ``+recipe=mnist_bn``:
784-300-200-10, batch norm, SGD 0.01, batch 200, 55,000 training / 5,000 validation images):

* ``dnnkit``: the fit loop exactly as ``python -m dnnkit.train`` runs it
  (:func:`dnnkit.runner.fit_stage` on the composed config: progress bar, EpochSummary, CSV
  logger, best/last checkpoints);
* ``dnnkit-bare``: the same without progress bar, logger and checkpoints;
* ``raw``: a hand-written PyTorch loop over the same in-memory tensors (the floor);
* ``floor``: Lightning's own floor, the raw loop's work as a minimal LightningModule over the
  same loader in a Trainer with no callbacks, logger, progress bar or checkpoints;
* ``lightning``: plain Lightning over torchvision's MNIST ``Dataset`` in a ``DataLoader``.

All in one process, same batch size, alternated: each round runs one fit of each contender
(the order rotates), each fit ``--epochs`` epochs of which the first is a warm-up and not
counted. An epoch is training plus validation, timed from one epoch start to the next. The
table shows medians, and the ratios dnnkit/raw (goals <= 1.15 and <= 1.10) and lightning/dnnkit (goal >= 3):
as the ratio of the medians and, steadier on a shared machine whose speed drifts between
rounds, as the median of each round's ratio (both contenders timed within the same minute).

Examples::

    python -m bench.speed                                   # mnist_bn, 3 rounds x (1 + 2) epochs
    python -m bench.speed --rounds 5 --only dnnkit raw
    python -m bench.speed --recipe transfer --stage B_on_A  # any recipe's stage
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bench.baselines import MinimalLightning, PlainLightning, dnnkit_split_indices, raw_fit, torchvision_loaders
from bench.timing import EpochTimer, median
from dnnkit.runner import device_summary, fit_stage
from dnnkit.stages import config_dir, stage_configs

CONTENDERS = ("dnnkit", "dnnkit-bare", "raw", "floor", "lightning")
GOALS_VS_RAW = {"issue 2": 1.15, "issue 7": 1.10}
GOAL_VS_LIGHTNING = 3.0


def stage_config(recipe: str, stage: str | None = None, overrides: list[str] | None = None) -> tuple[str, DictConfig]:
    """``(stage name, config)`` of one stage of ``+recipe=NAME`` (the first by default), as a
    plain mutable config."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"+recipe={recipe}", *(overrides or [])])
    stages = stage_configs(cfg)
    names = [n for n, _ in stages]
    name, scfg = next(((n, c) for n, c in stages if n == stage), stages[0]) if stage in (None, *names) else (None, None)
    if name is None:
        raise SystemExit(f"stage {stage!r} not in recipe {recipe!r}; stages: {names}")
    return name, OmegaConf.create(OmegaConf.to_container(scfg, resolve=False))


def time_dnnkit(name: str, cfg: DictConfig, epochs: int, bare: bool = False) -> tuple[list[float], list[float], float]:
    """Per-epoch wall and CPU seconds, and the total fit seconds, of ``dnnkit.runner.fit_stage`` on ``cfg``."""
    cfg = cfg.copy()
    cfg.trainer.max_epochs = epochs
    cfg.test = False
    cfg.callbacks = dict(cfg.get("callbacks") or {})
    cfg.callbacks["timer"] = {"_target_": "bench.timing.EpochTimer"}
    if bare:
        for key in ("checkpoint", "last_checkpoint", "progress_bar", "epoch_summary"):
            cfg.callbacks[key] = None
        cfg.logger = None
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_checkpointing = False
    with tempfile.TemporaryDirectory(prefix="dnnkit-bench-") as tmp:
        result = fit_stage(name, cfg, int(cfg.get("seed", 0)), Path(tmp), {})
    return EpochTimer.last.epoch_seconds, EpochTimer.last.epoch_cpu_seconds, result.fit_seconds


def time_raw(cfg: DictConfig, epochs: int) -> tuple[list[float], list[float], float]:
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    model = instantiate(cfg.model, _convert_="all")
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    start = time.perf_counter()
    wall, cpu = raw_fit(model, optimizer, dm.split("train"), dm.split("val"), epochs, dm.batch_size, dm.eval_batch_size, dm.seed)
    return wall, cpu, time.perf_counter() - start


def time_floor(cfg: DictConfig, epochs: int) -> tuple[list[float], list[float], float]:
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    dm = instantiate(cfg.data, _convert_="all")
    module = MinimalLightning(instantiate(cfg.model, _convert_="all"), instantiate(cfg.optimizer))
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return timer.epoch_seconds, timer.epoch_cpu_seconds, time.perf_counter() - start


def time_lightning(cfg: DictConfig, epochs: int, num_workers: int = 0) -> tuple[list[float], list[float], float]:
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    dm = instantiate(cfg.data, _convert_="all")
    train_idx, val_idx = dnnkit_split_indices(dm)
    train, val = torchvision_loaders(dm.name, train_idx, val_idx, dm.batch_size, dm.eval_batch_size, dm.classes, num_workers)
    module = PlainLightning(instantiate(cfg.model, _convert_="all"), instantiate(cfg.optimizer))
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="lightning-bench-") as tmp:
        trainer = L.Trainer(max_epochs=epochs, callbacks=[timer], default_root_dir=tmp)
        start = time.perf_counter()
        trainer.fit(module, train, val)
        fit_seconds = time.perf_counter() - start
    return timer.epoch_seconds, timer.epoch_cpu_seconds, fit_seconds


def run(cfg: DictConfig, name: str, contenders, rounds: int, epochs: int, num_workers: int = 0) -> dict[str, dict]:
    """Alternate the contenders for ``rounds`` rounds; per contender the timed epochs (warm-up
    epochs dropped) and the fit times."""
    times = {c: {"epochs": [], "cpu": [], "fits": [], "rounds": []} for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            if c == "dnnkit":
                seconds, cpu, fit = time_dnnkit(name, cfg, epochs)
            elif c == "dnnkit-bare":
                seconds, cpu, fit = time_dnnkit(name, cfg, epochs, bare=True)
            elif c == "raw":
                seconds, cpu, fit = time_raw(cfg, epochs)
            elif c == "floor":
                seconds, cpu, fit = time_floor(cfg, epochs)
            else:
                seconds, cpu, fit = time_lightning(cfg, epochs, num_workers)
            times[c]["epochs"] += seconds[1:]
            times[c]["cpu"] += cpu[1:]
            times[c]["rounds"].append(median(seconds[1:]))
            times[c]["fits"].append(fit)
            print(
                f"round {r + 1}/{rounds}  {c:<12} epochs " + " ".join(f"{s:.2f}" for s in seconds)
                + " s, CPU " + " ".join(f"{s:.2f}" for s in cpu) + f" s  (fit {fit:.1f} s)",
                flush=True,
            )
    return times


def report(times: dict[str, dict], recipe: str, stage: str, command: str, load: tuple[tuple, tuple]) -> str:
    """The markdown section: a table of medians (wall-clock and CPU), the ratios and the goals."""
    wall = {c: median(t["epochs"]) for c, t in times.items()}
    cpu = {c: median(t["cpu"]) for c, t in times.items()}
    lines = [
        f"### Speed: `{recipe}` network (stage `{stage}`)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {device_summary()}, load average {load[0][0]:.1f} at start, {load[1][0]:.1f} at end. "
        "On a shared CPU wall-clock times wait for a free core; CPU seconds (this process's "
        "`time.process_time`) count only work done, so their ratios are the steadier ones.",
        "",
        "| loop | median s/epoch (wall) | epochs/s (wall) | median CPU s/epoch | timed epochs (wall min-max s) | median fit time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for c, t in times.items():
        e = t["epochs"]
        lines.append(
            f"| {c} | {wall[c]:.3f} | {1 / wall[c]:.2f} | {cpu[c]:.3f} | {len(e)} ({min(e):.2f}-{max(e):.2f}) "
            f"| {median(t['fits']):.1f} |"
        )
    lines += [
        "", "| ratio | median of the rounds' ratios (wall) | ratio of medians (wall) | ratio of medians (CPU) | goal |",
        "|---|---|---|---|---|",
    ]

    def row(a: str, b: str, goal) -> None:
        if a in wall and b in wall:
            rp = median([x / y for x, y in zip(times[a]["rounds"], times[b]["rounds"])])
            rw, rc = wall[a] / wall[b], cpu[a] / cpu[b]
            lines.append(f"| {a} / {b} | **{rp:.2f}** | {rw:.2f} | {rc:.2f} | {goal(rp) if callable(goal) else goal} |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    row("dnnkit", "raw", lambda r: ", ".join(f"<= {g:.2f} ({i}): {verdict(r <= g)}" for i, g in GOALS_VS_RAW.items()))
    row("dnnkit-bare", "raw", "")
    row("floor", "raw", "(Lightning's own loop, nothing switched on)")
    row("lightning", "dnnkit", lambda r: f">= {GOAL_VS_LIGHTNING:.0f} (dnnkit that many times faster): {verdict(r >= GOAL_VS_LIGHTNING)}")
    row("lightning", "raw", "")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="mnist_bn")
    p.add_argument("--stage", default=None, help="a stage of the recipe (default: the first)")
    p.add_argument("--rounds", type=int, default=3, help="fits per contender, alternated")
    p.add_argument("--epochs", type=int, default=3, help="epochs per fit; the first is a warm-up")
    p.add_argument("--only", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain-Lightning baseline")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own); 1 avoids OpenMP spin-waits on a shared CPU")
    p.add_argument("--out", default="docs/results/speed.md", help="write the markdown section here ('' = don't)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=100")
    args = p.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        p.error("--epochs must be >= 2 (one warm-up) and --rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("dnnkit").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    name, cfg = stage_config(args.recipe, args.stage, args.overrides)
    command = "python -m bench.speed" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    load_start = os.getloadavg()
    times = run(cfg, name, list(args.only), args.rounds, args.epochs, args.workers)
    text = report(times, args.recipe, name, command, (load_start, os.getloadavg()))
    print("\n" + text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
