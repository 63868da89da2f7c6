"""Overhead of GradientHealth: training-loop time with and without it, side by side.

Runs the same fit (a 10x100 ELU + batch-norm MLP on MNIST, batch 200) alternately without and
with the callback, ``--repeats`` times each in one process, and prints the median loop time of
each and the overhead in percent (medians, and the median of the paired ratios). The loop time runs
from the epoch's start to the end of its last callback (the callback logs once per epoch), so
setup and the end-of-fit report (plot, summary) are not in it; the report is timed separately.
The figures go into ``docs/RESULTS.md``, between ``<!-- bench:gradient_health_overhead:begin -->``
and ``<!-- bench:gradient_health_overhead:end -->`` (``--results PATH`` for another file,
``--no-write`` to only print)::

    python -m bench.gradient_health_overhead --every 25 --steps 250 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch

from bench.common import EpochTimer, add_results_arguments, command_line, md_table, median, publish, results_target
from dnnkit import Classifier
from dnnkit.callbacks import GradientHealth
from dnnkit.data import MNISTDataModule
from dnnkit.nn import MLP


def loop_seconds(health: GradientHealth | None, steps: int, datamodule, tmp: str) -> tuple[float, float]:
    """(the training loop's seconds, the rest of the fit's) of one fit of ``steps`` steps."""
    torch.manual_seed(0)
    module = Classifier(MLP(784, [100] * 10, 10, activation="elu", batch_norm=True))
    timer = EpochTimer()
    callbacks = ([health] if health else []) + [timer]  # the timer last: it sees the others' epoch end
    trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, default_root_dir=tmp, accelerator="cpu")
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    total = time.perf_counter() - start
    loop = timer.train_seconds[0]
    return loop, total - loop


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.gradient_health_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=25, help="GradientHealth's every_n_steps")
    parser.add_argument("--steps", type=int, default=250, help="training steps per fit")
    parser.add_argument("--repeats", type=int, default=5, help="pairs of fits (without, with)")
    parser.add_argument("--val-size", type=int, default=5000, help="images held out of training, as in the seed")
    parser.add_argument("--tmp", default=None, help="the fits' folder (default: a temporary one)")
    add_results_arguments(parser)
    args = parser.parse_args(argv)
    target = results_target(parser, args, "gradient_health_overhead")
    datamodule = MNISTDataModule("mnist", val_size=args.val_size)
    with tempfile.TemporaryDirectory(prefix="dnnkit_bench_health_") as fresh:
        tmp = args.tmp or fresh
        loop_seconds(None, 20, datamodule, tmp)  # warm up: data into memory, kernels
        base, watched, ratios, report = [], [], [], []
        for _ in range(args.repeats):
            b, _ = loop_seconds(None, args.steps, datamodule, tmp)
            w, rest = loop_seconds(GradientHealth(every_n_steps=args.every, verbose=False), args.steps, datamodule, tmp)
            base.append(b), watched.append(w), ratios.append(w / b), report.append(rest)
    mb, mw = median(base), median(watched)
    overhead, paired = 100 * (mw / mb - 1), 100 * (median(ratios) - 1)
    row = (args.every, args.steps, args.repeats, f"{mb:.3f} ({1000 * mb / args.steps:.2f} ms/step)",
           f"{mw:.3f} ({1000 * mw / args.steps:.2f} ms/step)", f"{overhead:+.1f}%", f"**{paired:+.1f}%**", f"{median(report):.2f}")
    lines = [
        f"Command: `{command_line('python -m bench.gradient_health_overhead', argv)}`  ",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Loop times of the pairs: without "
        f"{[round(v, 3) for v in base]} s, with {[round(v, 3) for v in watched]} s.",
        "",
        *md_table(["every_n_steps", "steps", "pairs", "without, median (s)", "with, median (s)", "overhead (medians)",
                   "overhead (median of paired ratios)", "fit outside the loop, with (s)"], [row]),
    ]
    publish("gradient_health_overhead", "\n".join(lines) + "\n", target)
    return {"without": base, "with": watched, "overhead_pct": overhead, "paired_overhead_pct": paired, "report": report}


if __name__ == "__main__":
    main()
