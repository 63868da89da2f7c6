"""Overhead of GradientHealth: training-loop time with and without it, side by side.

Runs the same fit (a 10x100 ELU + batch-norm MLP on MNIST, batch 200) alternately without and
with the callback, ``--repeats`` times each in one process, and prints the median loop time of
each and the overhead in percent (also the median of the paired ratios). The loop time runs
from the epoch's start to the end of its last callback (the callback logs once per epoch), so
setup and the end-of-fit report (plot,
summary) are not in it; the report is timed separately.

    python bench/gradient_health_overhead.py --every 25 --steps 250 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from dnnkit import Classifier
from dnnkit.callbacks import GradientHealth
from dnnkit.data import MNISTDataModule
from dnnkit.nn import MLP


class LoopTimer(L.Callback):
    """From the epoch's start to its end (after every other callback's epoch-end work)."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def loop_seconds(health: GradientHealth | None, steps: int, datamodule, tmp: str) -> tuple[float, float]:
    torch.manual_seed(0)
    module = Classifier(MLP(784, [100] * 10, 10, activation="elu", batch_norm=True))
    timer = LoopTimer()
    callbacks = ([health] if health else []) + [timer]  # the timer last: it sees the others' epoch end
    trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, default_root_dir=tmp, accelerator="cpu")
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    total = time.perf_counter() - start
    loop = timer.end - timer.start
    return loop, total - loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", default="/tmp/dnnkit_bench_health")
    args = parser.parse_args()
    datamodule = MNISTDataModule("mnist")
    loop_seconds(None, 20, datamodule, args.tmp)  # warm up: data into memory, kernels
    base, watched, ratios, report = [], [], [], []
    for _ in range(args.repeats):
        b, _ = loop_seconds(None, args.steps, datamodule, args.tmp)
        w, rest = loop_seconds(GradientHealth(every_n_steps=args.every, verbose=False), args.steps, datamodule, args.tmp)
        base.append(b), watched.append(w), ratios.append(w / b), report.append(rest)
    mb, mw = statistics.median(base), statistics.median(watched)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps, every_n_steps={args.every}, "
          f"{args.repeats} pairs")
    print(f"without: median {mb:.3f} s ({1000 * mb / args.steps:.2f} ms/step)  runs {[round(v, 3) for v in base]}")
    print(f"with:    median {mw:.3f} s ({1000 * mw / args.steps:.2f} ms/step)  runs {[round(v, 3) for v in watched]}")
    print(f"overhead: {100 * (mw / mb - 1):+.1f}% (medians), {100 * (statistics.median(ratios) - 1):+.1f}% (median of paired ratios)")
    print(f"fit time outside the loop with the callback (setup + report, plot): median {statistics.median(report):.2f} s")


if __name__ == "__main__":
    main()
