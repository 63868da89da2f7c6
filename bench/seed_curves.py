"""The seed's published curves beside ours: validation accuracy per epoch of mnist_bn,
mnist_clipping and reuse, with the seed's published points on the same axes.

Run (about 1.5 minutes on 2 idle cores)::

    python -m bench.seed_curves                      # runs the three recipes, writes docs/seed_curves.png
    python -m bench.seed_curves --runs DIR [DIR ...] # plots finished run folders instead
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# (recipe, stage) -> the seed's published validation accuracy after epoch 1 and epoch 20
PUBLISHED = {
    ("mnist_bn", "mnist_bn"): {1: 0.8894, 20: 0.9712},
    ("mnist_clipping", "mnist_clipping"): {1: 0.5956, 20: 0.9638},
    ("reuse", "reuse"): {1: 0.896, 20: 0.9656},
}


def run_recipes(root: Path) -> list[Path]:
    dirs = []
    for recipe, _ in PUBLISHED:
        out = root / recipe
        cmd = [sys.executable, "-m", "dnnkit.train", f"+recipe={recipe}", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
        subprocess.run(cmd, check=True)
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
        ax.scatter(list(pub), list(pub.values()), marker="*", s=120, color=line.get_color(), edgecolor="black", zorder=3, label=f"{recipe} (seed)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (first 5,000 training images)")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", type=Path, help="finished run folders (default: run the recipes now)")
    parser.add_argument("--out", type=Path, default=Path("docs/seed_curves.png"))
    args = parser.parse_args(argv)
    dirs = args.runs or run_recipes(Path(tempfile.mkdtemp(prefix="seed_curves_")))
    found = curves(dirs)
    print("| recipe | epoch 1 (seed) | epoch 1 (dnnkit) | epoch 20 (seed) | epoch 20 (dnnkit) |")
    print("|---|---|---|---|---|")
    for (recipe, stage), points in found.items():
        ours, pub = dict(points), PUBLISHED[(recipe, stage)]
        print(f"| {recipe} | {pub[1]:.4f} | {ours.get(1, float('nan')):.4f} | {pub[20]:.4f} | {ours.get(20, float('nan')):.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(found, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
