"""Contrastive (SimCLR) building blocks in plain PyTorch: the NT-Xent loss and the projection head.

SimCLR (Chen et al., 2020): two augmented views of each image go through the encoder and a small
projection head; NT-Xent ("normalised temperature-scaled cross-entropy") pulls each view's
projection towards its pair's and away from the other ``2N - 2`` projections of the batch. The
head is dropped after pretraining: the encoder's features below it transfer better.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dnnkit.errors import DnnkitError, number


def check_temperature(temperature) -> float:
    """``temperature`` as a float, or one DnnkitError line if it is not > 0."""
    return float(number("module.temperature", temperature, 0, low_open=True))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The NT-Xent loss of ``N`` pairs of projections ``z1[i]``, ``z2[i]`` (each ``(N, D)``).

    Cosine similarities of the ``2N`` projections, divided by ``temperature``; each row is a
    softmax over the other ``2N - 1`` (itself masked out) whose target is the row's pair; the mean
    cross-entropy over the ``2N`` rows.

    Example::

        >>> z = torch.randn(8, 4)
        >>> bool(nt_xent(z, z + 0.01 * torch.randn(8, 4), 0.5) < nt_xent(z, torch.randn(8, 4), 0.5))
        True
    """
    if z1.shape != z2.shape or z1.dim() != 2 or len(z1) < 2:
        raise DnnkitError(f"nt_xent needs two (N, D) batches of the same shape with N >= 2, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


def feature_size(model: nn.Module) -> int:
    """The width of ``model.features(x)``: the input size of the model's output ``Linear``."""
    output = getattr(model, "output", None)
    linears = [m for m in output.modules() if isinstance(m, nn.Linear)] if isinstance(output, nn.Module) else []
    if not linears or not callable(getattr(model, "features", None)):
        raise DnnkitError(
            "contrastive pretraining needs a model with features(x) and an output Linear layer (dnnkit.nn.MLP, CNN), "
            f"got {type(model).__name__}"
        )
    return linears[0].in_features


class ProjectionHead(nn.Sequential):
    """SimCLR's nonlinear head: ``Linear -> ReLU`` per hidden size, then a ``Linear`` to ``out``.

    Example::

        >>> ProjectionHead(100, [128], 64)(torch.zeros(3, 100)).shape
        torch.Size([3, 64])
    """

    def __init__(self, n_in: int, hidden: Sequence[int] = (128,), out: int = 64) -> None:
        super().__init__()
        if isinstance(hidden, (str, int)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise DnnkitError(f"module.head must be a list of positive layer sizes such as [128] (or []), got {hidden!r}")
        number("module.projection", out, 1, integer=True)
        sizes = [n_in, *hidden]
        for i, (a, b) in enumerate(zip(sizes, sizes[1:]), start=1):
            self.add_module(f"linear{i}", nn.Linear(a, b))
            self.add_module(f"act{i}", nn.ReLU())
        self.add_module("out", nn.Linear(sizes[-1], out))


__all__ = ["ProjectionHead", "check_temperature", "feature_size", "nt_xent"]
