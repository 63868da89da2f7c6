"""The seed's published curves beside ours: validation accuracy per epoch of mnist_bn,
mnist_clipping and reuse, with the seed's published points on the same axes.

Run (about 1.5 minutes on 2 idle cores)::

    python -m bench.seed_curves                      # runs the three recipes, writes docs/img/seed_curves.png
    python -m bench.seed_curves --runs DIR [DIR ...] # plots finished run folders instead

The table goes into ``docs/RESULTS.md``, between ``<!-- bench:seed_curves:begin -->`` and
``<!-- bench:seed_curves:end -->``, whose section shows the plot (``--results PATH`` for another
file; ``--no-write`` only prints, and plots only where ``--out`` says).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import add_results_arguments, command_line, md_table, publish, results_target, train_command

PLOT = Path("docs/img/seed_curves.png")

# (recipe, stage) -> the seed's published validation accuracy after epoch 1 and epoch 20
PUBLISHED = {
    ("mnist_bn", "mnist_bn"): {1: 0.8894, 20: 0.9712},
    ("mnist_clipping", "mnist_clipping"): {1: 0.5956, 20: 0.9638},
    ("reuse", "reuse"): {1: 0.896, 20: 0.9656},
}


def run_recipes(root: Path, overrides: list[str] | None = None) -> list[Path]:
    dirs = []
    for recipe, _ in PUBLISHED:
        out = root / recipe
        subprocess.run(train_command(recipe, out, overrides or []), check=True)
        dirs.append(out)
    return dirs


def curves(run_dirs: list[Path]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    found = {}
    for run in run_dirs:
        for result in json.loads((run / "results.json").read_text()):
            for recipe, stage in PUBLISHED:
                if stage == result["stage"]:
                    found[(recipe, stage)] = [(h["epoch"], h["val/acc"]) for h in result["history"] if "val/acc" in h]
    return found


def plot(found, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (recipe, stage), points in found.items():
        (line,) = ax.plot(*zip(*points), marker="o", markersize=3, label=f"{recipe} (dnnkit)")
        pub = PUBLISHED[(recipe, stage)]
        ax.scatter(list(pub), list(pub.values()), marker="*", s=120, color=line.get_color(), edgecolor="black", zorder=3,
                   label=f"{recipe} (seed)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (first 5,000 training images)")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(found, command: str) -> str:
    """The markdown block: the table (the section around it shows the plot)."""
    rows = []
    for (recipe, stage), points in found.items():
        ours, pub = dict(points), PUBLISHED[(recipe, stage)]
        rows.append((recipe, f"{pub[1]:.4f}", f"{ours.get(1, float('nan')):.4f}", f"{pub[20]:.4f}", f"{ours.get(20, float('nan')):.4f}"))
    lines = [
        f"Command: `{command}`",
        "",
        *md_table(["recipe", "epoch 1 (seed)", "epoch 1 (dnnkit)", "epoch 20 (seed)", "epoch 20 (dnnkit)"], rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed_curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, help="finished run folders (default: run the recipes now)")
    parser.add_argument("--out", type=Path, default=None, help=f"the plot (default: {PLOT}, none with --no-write)")
    add_results_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe runs (not with --runs)")
    args = parser.parse_args(argv)
    target = results_target(parser, args, "seed_curves")
    dirs = args.runs or run_recipes(Path(tempfile.mkdtemp(prefix="seed_curves_")), args.overrides)
    found = curves(dirs)
    if not found:
        parser.error(f"no results of {sorted({s for _, s in PUBLISHED})} in {[str(d) for d in dirs]}")
    out = args.out or (None if args.no_write else PLOT)
    if out is not None:
        plot(found, out)
        print(f"plot: {out}")
    publish("seed_curves", report(found, command_line("python -m bench.seed_curves", argv)), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
