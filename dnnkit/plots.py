"""Every PNG dnnkit draws: learning curves, image grids (inputs beside reconstructions, learned
filters as tiles), the gradient-health plot, the LR range test and per-key panels (``schedules.png``).

matplotlib is imported inside the functions, with the non-interactive Agg backend, so importing
this module costs nothing and works without a display. Curves stay distinguishable beyond ten
lines, where matplotlib's colour cycle repeats: :func:`series_styles` then cycles line styles and
markers together with the colours.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dnnkit.io import atomic_savefig, atomic_write_with

if TYPE_CHECKING:
    from dnnkit.nn.health import Finding
    from dnnkit.results import StageResult

log = logging.getLogger(__name__)

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "x", "*")  # 7 markers, 4 styles, 10 colours: 140 distinct lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_styles(n: int, colors: list | None = None, marker: str | None = None) -> list[dict]:
    """Line keywords (``color``, ``linestyle``, ``marker``) for ``n`` curves on one axis.

    Up to ten curves: ``colors`` (default: matplotlib's ten-colour cycle, ``C0`` ... ``C9``),
    solid lines and ``marker``. Beyond ten the colours repeat (or, from a colour map, grow too
    alike to tell apart), so line style and marker cycle with them: every one of the first 140
    curves gets its own (colour, line style, marker).

    Example::

        >>> series_styles(2, marker="o")
        [{'color': 'C0', 'linestyle': '-', 'marker': 'o'}, {'color': 'C1', 'linestyle': '-', 'marker': 'o'}]
        >>> series_styles(12)[10]
        {'color': 'C0', 'linestyle': '-.', 'marker': 'D'}
    """
    colors = list(colors) if colors is not None else [f"C{i % 10}" for i in range(n)]
    if n <= 10:
        return [{"color": colors[i], "linestyle": "-", "marker": marker} for i in range(n)]
    return [{"color": colors[i], "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)]}
            for i in range(n)]


# ----------------------------------------------------------------------------- learning curves


def save_curves(results: list[StageResult], path: Path, metric: str | None = None, metrics: list[str] | None = None) -> Path | None:
    """Plot a metric per epoch for every stage and seed; return the PNG path, or None (and say
    why) when no stage has per-epoch values of it. The metric is ``metric``, else the first of
    ``metrics`` that has per-epoch values (``test/acc`` has none), else ``val/acc``, ``val/loss``
    or ``train/loss``."""
    candidates = [metric] if metric else [*(metrics or []), "val/acc", "val/loss", "train/loss"]
    metric = next((m for m in candidates if any(m in h for r in results for h in r.history)), None)
    if metric is None:
        log.info("no curves.png: no stage logged %s per epoch", " or ".join(dict.fromkeys(candidates)))
        return None
    curves = [(r, [(h["epoch"], h[metric]) for h in r.history if metric in h]) for r in results]
    curves = [(r, c) for r, c in curves if c]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (r, points), style in zip(curves, series_styles(len(curves), marker="o")):
        seeds = sum(1 for o in results if o.stage == r.stage)
        label = r.stage if seeds == 1 else f"{r.stage} (seed {r.seed})"
        ax.plot(*zip(*points), markersize=3, label=label, **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- image grids


def image_side(n_pixels: int) -> int | None:
    """28 for 784 pixels; ``None`` when the vector is not a square image."""
    side = math.isqrt(n_pixels)
    return side if side * side == n_pixels else None


def tile(images: torch.Tensor, ncols: int, pad: int = 1, normalize_each: bool = False) -> torch.Tensor:
    """A (H, W) grid of ``images`` (N, h, w), ``min(ncols, N)`` to a row, white (1.0) between and
    around the tiles; each tile scaled to [0, 1] if ``normalize_each``
    (``torchvision.utils.make_grid``).

    Example::

        >>> tile(torch.rand(6, 4, 4), ncols=3).shape
        torch.Size([11, 16])
    """
    from torchvision.utils import make_grid

    images = images.detach().float().cpu()
    grid = make_grid(images.unsqueeze(1), nrow=ncols, padding=pad, normalize=normalize_each, scale_each=True, pad_value=1.0)
    if len(images) == 1:  # make_grid returns a lone image as it is, without the border
        grid = torch.nn.functional.pad(grid, (pad, pad, pad, pad), value=1.0)
    return grid[0]  # make_grid repeats a grey channel three times


def save_grid(path: str | Path, grid: torch.Tensor, scale: int = 3) -> Path:
    """Write a (H, W) tensor in [0, 1] as a grey PNG, each pixel ``scale`` x ``scale``."""
    plt = _pyplot()
    path = Path(path)
    big = grid.clamp(0, 1).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    atomic_write_with(path, lambda f: plt.imsave(f, big.numpy(), cmap="gray", vmin=0.0, vmax=1.0, format="png"))
    return path


def save_reconstructions(path: str | Path, inputs: torch.Tensor, outputs: torch.Tensor) -> Path | None:
    """Two rows: ``inputs`` above their ``outputs`` (flattened square images in [0, 1])."""
    side = image_side(inputs[0].numel())
    if side is None:
        return None
    both = torch.cat([inputs.flatten(1), outputs.flatten(1)]).view(-1, side, side)
    return save_grid(path, tile(both, ncols=len(inputs)))


def save_filters(path: str | Path, weight: torch.Tensor, n: int = 64) -> Path | None:
    """The first ``n`` rows of a first-layer weight (units x pixels) as tiles, each scaled to [0, 1]."""
    side = image_side(weight.shape[1])
    if side is None:
        return None
    w = weight[:n].view(-1, side, side)
    return save_grid(path, tile(w, ncols=math.ceil(math.sqrt(len(w))), normalize_each=True))


# ----------------------------------------------------------------------------- gradient health


def save_health_plot(history: list[dict], path: str | Path, findings: list[Finding] | None = None) -> Path:
    """Per-layer gradient norms (left) and update-to-weight ratios (right) over the steps of a
    gradient-health history (:mod:`dnnkit.nn.health`); the findings as the title."""
    from dnnkit.nn.health import layer_list

    plt = _pyplot()
    layers = list(history[0]["grad"])
    steps = [h["step"] for h in history]
    colors = plt.cm.viridis([i / max(1, len(layers) - 1) for i in range(len(layers))])  # bottom to top
    styles = series_styles(len(layers), colors=list(colors))
    markevery = max(1, len(steps) // 10)  # markers (beyond ten layers) on a few points, not on every sample
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "grad", "gradient norm per layer"), (axes[1], "update", "update / weight per step")):
        for name, style in zip(layers, styles):
            values = [h[key].get(name, math.nan) for h in history]
            ax.plot(steps, [v if v and math.isfinite(v) and v > 0 else math.nan for v in values], label=name,
                    markersize=4, markevery=markevery, **style)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if findings:
        fig.suptitle("; ".join(f"{f.problem}: {layer_list(f.layers)}" for f in findings), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- confusion matrix


def save_confusion_plot(path: str | Path, matrix: torch.Tensor, class_names: list[str], title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted) as a PNG: each cell coloured by
    its share of the row (per-class recall on the diagonal), counts written in up to 20 classes."""
    plt = _pyplot()
    counts = matrix.detach().cpu().long()
    shares = counts.float() / counts.sum(1, keepdim=True).clamp(min=1)
    n = len(counts)
    side = min(12.0, 2.5 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names, ticks = [str(c) for c in class_names], list(range(n))
    long = max(map(len, names), default=0) > 2  # "Sandal", not "7": slanted
    ax.set_xticks(ticks, names, rotation=45 if long else 0, ha="right" if long else "center", fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if shares[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def save_search_plot(path: str | Path, search: dict) -> Path:
    """A reuse search (:mod:`dnnkit.search`): its monitor against k, the number of source layers
    reused, one line per mode, the pick circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    tries = [t for t in search["tries"] if t["value"] is not None]
    for mode in dict.fromkeys(t["mode"] for t in search["tries"]):
        points = sorted((t["k"], t["value"]) for t in tries if t["mode"] == mode)
        if points:
            ax.plot(*zip(*points), marker="o", label=mode.replace("_", "-"))
    best = next((t for t in tries if t["try"] == search["pick"]), None)
    if best:
        ax.scatter([best["k"]], [best["value"]], s=200, facecolors="none", edgecolors="black", zorder=3, label=f"pick: {best['try']}")
    ax.set_xlabel("k: lowest source layers reused")
    ax.set_ylabel(search["monitor"])
    ax.set_xticks(sorted({t["k"] for t in search["tries"]}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, Path(path), dpi=100)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------- learning rates


def save_lr_find(finder, path: str | Path, suggestion: float | None = None, rule: str = "steepest") -> Path:
    """The LR range test's loss against the rate (Lightning's ``_LRFinder.plot``: a log axis in
    ``exponential`` mode), the ``suggestion`` (chosen by ``rule``) marked with a line and a title."""
    plt = _pyplot()
    fig = finder.plot(suggest=False)
    ax = fig.axes[0]
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", linewidth=1, label=f"suggestion ({rule}) {suggestion:.3g}")
        ax.legend(fontsize=8)
    ax.set_title(f"LR range test: {len(finder.results['lr'])} steps, {finder.lr_min:.0e} to {finder.lr_max:.0e}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path


def save_panels(results: list[StageResult], path: Path, keys: list[str]) -> Path | None:
    """One panel per key of ``keys`` (e.g. ``val/acc`` and ``lr/epoch``), each with one line per
    stage and seed over the epochs; a key named ``lr`` or ``lr/...`` on a log axis. None (and a
    line saying why) when no stage has any of the keys per epoch."""
    keys = [k for k in keys if any(k in h for r in results for h in r.history)]
    if not keys:
        log.info("no %s: no stage logged its keys per epoch", Path(path).name)
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    styles = series_styles(len(results), marker="o")
    for ax, key in zip(axes[0], keys):
        for r, style in zip(results, styles):
            points = [(h["epoch"], h[key]) for h in r.history if key in h]
            seeds = sum(1 for o in results if o.stage == r.stage)
            if points:
                ax.plot(*zip(*points), markersize=3, label=r.stage if seeds == 1 else f"{r.stage} (seed {r.seed})", **style)
        if key == "lr" or key.startswith("lr/"):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path
