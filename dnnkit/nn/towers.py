"""Two towers that compare a pair of images (Hands-On ML 1e, ch. 11, exercise 10).

Each tower is a stack of dense layers ``hidden1 … hiddenN`` (the :class:`~dnnkit.nn.MLP`'s
layers, same names and make-up); the two towers' top outputs are concatenated, go through a
small ``join`` layer and a one-logit ``output`` ("same digit or not"). As in the book the towers
share nothing (``tower_a.hidden1 …``, ``tower_b.hidden1 …``); ``shared=True`` runs both images
through one tower (a Siamese network, half the parameters), whose layers are then the top-level
``hidden1 …``. Either way the layer names let ``reuse`` copy a tower into an MLP's hidden layers
(:func:`dnnkit.nn.surgery.reuse_layers` with ``source_prefix="tower_a."`` for separate towers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from dnnkit.errors import DnnkitError, number
from dnnkit.nn.activations import default_init
from dnnkit.nn.init import init_module_
from dnnkit.nn.mlp import DenseBlock


class Tower(nn.Module):
    """Dense layers ``hidden1 … hiddenN`` without an output layer; input images are flattened."""

    def __init__(self, n_inputs: int, hidden: Sequence[int], activation: str = "elu", batch_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [n_inputs, *hidden]
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), start=1):
            self.add_module(f"hidden{i}", DenseBlock(n_in, n_out, activation, batch_norm=batch_norm, dropout=dropout))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.children():
            x = layer(x)
        return x


class Towers(nn.Module):
    """Same/different network over image pairs ``(B, 2, H, W)`` (or ``(B, 2, F)``): one logit each.

    Args:
        n_inputs: values in one image of the pair (784 for MNIST).
        hidden: units of each tower's hidden layers, bottom first (the book: five of 100).
        join: units of the layer on the two towers' concatenated outputs (the book: 10).
        shared: one tower for both images (``hidden1 …``) instead of two (``tower_a``, ``tower_b``).
        activation, batch_norm, dropout: the hidden layers' make-up, as :class:`~dnnkit.nn.MLP`'s.
        init, init_distribution: the weight init (``None``: the activation's, He for ELU).

    Example::

        >>> net = Towers(784, [100] * 5, join=10)
        >>> [n for n, _ in net.named_children()], net(torch.zeros(3, 2, 28, 28)).shape
        (['tower_a', 'tower_b', 'join', 'output'], torch.Size([3, 1]))
        >>> [n for n, _ in Towers(784, [20, 20], shared=True).named_children()]
        ['hidden1', 'hidden2', 'join', 'output']
    """

    def __init__(
        self,
        n_inputs: int = 784,
        hidden: Sequence[int] = (100, 100, 100, 100, 100),
        join: int = 10,
        shared: bool = False,
        activation: str = "elu",
        batch_norm: bool = False,
        dropout: float = 0.0,
        init: str | None = None,
        init_distribution: str = "normal",
    ) -> None:
        super().__init__()
        number("model.n_inputs", n_inputs, 1, integer=True)
        number("model.join", join, 1, integer=True)
        if isinstance(hidden, str) or not isinstance(hidden, Sequence) or not hidden \
                or any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden):
            raise DnnkitError(f"model.hidden must be a non-empty list of positive layer sizes such as [100, 100], got {hidden!r}")
        if not isinstance(shared, bool):
            raise DnnkitError(f"model.shared must be true or false, got {shared!r}")
        number("model.dropout", dropout, 0, 1, high_open=True)
        self.hidden_sizes, self.shared, self.activation = list(hidden), shared, activation
        self.n_outputs = 1
        if shared:
            for name, layer in Tower(n_inputs, hidden, activation, batch_norm, dropout).named_children():
                self.add_module(name, layer)
        else:
            self.tower_a = Tower(n_inputs, hidden, activation, batch_norm, dropout)
            self.tower_b = Tower(n_inputs, hidden, activation, batch_norm, dropout)
        self.join = DenseBlock(2 * hidden[-1], join, activation, batch_norm=batch_norm)
        self.output = nn.Linear(join, 1)
        init_module_(self, init or default_init(activation), init_distribution)

    def tower(self, x: torch.Tensor, which: str = "a") -> torch.Tensor:
        """The top hidden layer's output of tower ``which`` (``a`` or ``b``; the one tower if shared)."""
        if not self.shared:
            return (self.tower_a if which == "a" else self.tower_b)(x)
        x = x.flatten(1)
        for i in range(1, len(self.hidden_sizes) + 1):
            x = getattr(self, f"hidden{i}")(x)
        return x

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != 2:
            raise DnnkitError(f"Towers takes image pairs of shape (B, 2, ...), got {tuple(x.shape)}")
        a, b = self.tower(x[:, 0], "a"), self.tower(x[:, 1], "b")
        return self.output(self.join(torch.cat([a, b], dim=1)))
