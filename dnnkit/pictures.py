"""Image grids as PNG: inputs beside reconstructions, learned features (filters) as tiles."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def image_side(n_pixels: int) -> int | None:
    """28 for 784 pixels; ``None`` when the vector is not a square image."""
    side = math.isqrt(n_pixels)
    return side if side * side == n_pixels else None


def tile(images: torch.Tensor, ncols: int, pad: int = 1, normalize_each: bool = False) -> torch.Tensor:
    """A (H, W) grid of ``images`` (N, h, w); each tile scaled to [0, 1] if ``normalize_each``.

    Example::

        >>> tile(torch.rand(6, 4, 4), ncols=3).shape
        torch.Size([11, 16])
    """
    images = images.detach().float().cpu()
    if normalize_each:
        lo = images.flatten(1).min(1).values[:, None, None]
        hi = images.flatten(1).max(1).values[:, None, None]
        images = (images - lo) / (hi - lo).clamp_min(1e-8)
    n, h, w = images.shape
    nrows = -(-n // ncols)
    grid = torch.ones(nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = images[i]
    return grid


def save_grid(path: str | Path, grid: torch.Tensor, scale: int = 3) -> Path:
    """Write a (H, W) tensor in [0, 1] as a grey PNG, each pixel ``scale`` x ``scale``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    big = grid.clamp(0, 1).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    plt.imsave(path, big.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
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
