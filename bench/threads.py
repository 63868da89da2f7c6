"""``threads=auto`` against fixed thread counts, on a quiet machine and beside one busy process.

``python -m bench.threads`` fits the network of a recipe's stage (default ``+recipe=mnist_bn``:
784-300-200-10, batch norm, SGD, batch 200) with dnnkit's fit loop
(:func:`dnnkit.runner.fit_stage`, progress bar, logger and checkpoints off) for each contender:
``threads=1``, ``threads=2`` (``--counts``) and ``threads=auto``
(:class:`dnnkit.callbacks.AutoThreads`, whose probes are inside the timed epochs). Two
conditions: ``quiet`` (nothing else started), and ``busy``: a child process that burns one core
(a pure-Python loop) from before the condition's first fit to after its last.

Each round runs one fit of each contender, in an order that rotates; the rounds alternate the
conditions (quiet, busy, quiet, ...), so a drift in the machine's load hits both. A fit's time
is its training time per epoch (epoch start to validation start, every epoch counted, the first
included, since that is where ``auto`` probes), shown as milliseconds per step. The table has
medians and min-max per condition and contender, and the ratios auto / best fixed count
(the median of each round's ratio to that round's fastest fixed count; goals: <= 1.0 quiet,
allowing 2% noise, and <= 1.2 busy) and 2 threads / 1 thread.

The tables go into ``docs/RESULTS.md``, between ``<!-- bench:threads:begin -->`` and
``<!-- bench:threads:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print).

Examples::

    python -m bench.threads                              # 3 rounds x 2 conditions x 3 fits of 2 epochs
    python -m bench.threads --rounds 1 --conditions quiet --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from bench.common import EpochTimer, add_results_arguments, command_line, median, publish, quiet, results_target, stage_config
from dnnkit.runner import device_summary, fit_stage
from dnnkit.threads import usable_cores

GOALS = {"quiet": 1.02, "busy": 1.2}  # auto / the best fixed count
BURN = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy(on: bool = True, limit: float = 3600.0):
    """One child process burning a core (a pure-Python loop, at most ``limit`` seconds) while the
    block runs; nothing with ``on=False``. Yields the child's pid (None when off)."""
    if not on:
        yield None
        return
    child = subprocess.Popen([sys.executable, "-c", BURN.format(limit=limit)], stdin=subprocess.DEVNULL)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def fit_once(name: str, cfg: DictConfig, threads, epochs: int) -> tuple[float, float]:
    """One dnnkit fit with ``threads=``: (training seconds per epoch, the count at the end)."""
    cfg = cfg.copy()
    cfg.trainer.max_epochs, cfg.test, cfg.export, cfg.threads = epochs, False, False, threads
    cfg.callbacks = {k: v for k, v in (cfg.get("callbacks") or {}).items()
                     if k not in ("checkpoint", "last_checkpoint", "progress_bar", "epoch_summary")}
    cfg.callbacks["timer"] = {"_target_": "bench.common.EpochTimer"}
    cfg.logger = None
    cfg.trainer.enable_progress_bar = cfg.trainer.enable_checkpointing = False
    with tempfile.TemporaryDirectory(prefix="dnnkit-bench-threads-") as tmp:
        result = fit_stage(name, cfg, int(cfg.get("seed", 0)), Path(tmp), {})
    return median(EpochTimer.last.train_seconds), result.metrics.get("threads", float("nan"))


def run(name: str, cfg: DictConfig, contenders: list, conditions: list[str], rounds: int, epochs: int) -> dict:
    """``{condition: {contender: [(seconds per epoch, count), ...]}}``, one entry per round."""
    times = {c: {str(t): [] for t in contenders} for c in conditions}
    for r in range(rounds):
        for condition in conditions:
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            with busy(condition == "busy"):
                for threads in order:
                    seconds, count = fit_once(name, cfg, threads, epochs)
                    times[condition][str(threads)].append((seconds, count))
                    print(f"round {r + 1}/{rounds}  {condition:<5}  threads={threads!s:<5} {seconds:.3f} s/epoch "
                          f"(count at the end: {count:g})", flush=True)
    return times


def ratios(rows: dict[str, list[tuple[float, float]]], a: str, fixed: list[str]) -> list[float]:
    """Per round: contender ``a``'s time over the fastest of ``fixed`` in that round."""
    return [t[0] / min(rows[f][i][0] for f in fixed) for i, t in enumerate(rows[a])]


def report(times: dict, steps: int, command: str, load: tuple) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {device_summary()}, {usable_cores()} usable cores, load average {load[0][0]:.1f} at start, "
        f"{load[1][0]:.1f} at end. dnnkit's fit loop, training time per epoch ({steps} steps), every epoch counted; "
        "`busy`: one other process burning a core.",
        "",
        "| condition | threads | median ms/step | min-max ms/step | median s/epoch | count at the end (auto) |",
        "|---|---|---|---|---|---|",
    ]
    for condition, rows in times.items():
        for threads, fits in rows.items():
            s = [f[0] for f in fits]
            counts = sorted({int(f[1]) for f in fits if f[1] == f[1]}) if threads == "auto" else []
            lines.append(f"| {condition} | {threads} | {1000 * median(s) / steps:.2f} | {1000 * min(s) / steps:.2f}-"
                         f"{1000 * max(s) / steps:.2f} | {median(s):.3f} | {', '.join(map(str, counts)) or '-'} |")
    lines += ["", "| condition | ratio | median of the rounds' ratios | min-max | goal |", "|---|---|---|---|---|"]
    for condition, rows in times.items():
        fixed = [t for t in rows if t != "auto"]
        if "auto" in rows and fixed:
            r = ratios(rows, "auto", fixed)
            goal = GOALS[condition]
            lines.append(f"| {condition} | auto / best fixed | **{median(r):.2f}** | {min(r):.2f}-{max(r):.2f} | "
                         f"<= {goal}: {'met' if median(r) <= goal else 'NOT met'} |")
        if "1" in rows and "2" in rows:
            r = ratios(rows, "2", ["1"])
            lines.append(f"| {condition} | 2 threads / 1 thread | {median(r):.2f} | {min(r):.2f}-{max(r):.2f} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="mnist_bn")
    p.add_argument("--stage", default=None, help="a stage of the recipe (default: the first)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per fit, all timed (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="fits per contender and condition, alternated")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2], help="the fixed counts (default: 1 2)")
    p.add_argument("--conditions", nargs="+", choices=list(GOALS), default=list(GOALS))
    add_results_arguments(p)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=100")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1:
        p.error("--rounds and --epochs must be >= 1")
    if not all(1 <= c <= usable_cores() for c in args.counts):
        p.error(f"--counts must be in [1, {usable_cores()}] (the usable cores), got {args.counts}")
    target = results_target(p, args, "threads")
    quiet()
    name, cfg = stage_config(args.recipe, args.stage, args.overrides)
    from dnnkit.build import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    steps = len(datamodule.train_dataloader())
    load_start = os.getloadavg()
    times = run(name, cfg, [*args.counts, "auto"], args.conditions, args.rounds, args.epochs)
    publish("threads", report(times, steps, command_line("python -m bench.threads", argv), (load_start, os.getloadavg())), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
