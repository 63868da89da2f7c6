"""A multilayer perceptron whose layers carry the book's names.

Layers are ``hidden1 … hiddenN`` and ``output``, so freezing, reuse and diagnosis select them
by name (``"hidden[12]"``). Each hidden layer is a small ``nn.Sequential`` of
``linear -> bn (optional) -> act -> dropout (optional)``, batch norm *before* the activation as
in the seed (Ioffe & Szegedy). With batch norm the Linear has no bias (BN's beta replaces it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from dnnkit.errors import DnnkitError, number
from dnnkit.nn.activations import default_init, make_activation
from dnnkit.nn.init import init_module_


def check_layer_options(dropout: float, bn_momentum: float, init_std: float, uses_batch_norm: bool) -> None:
    """The options the MLP and the CNN share: a dropout rate in [0, 1), ``bn_momentum`` in (0, 1]
    (a warning above 0.5, where a Keras/TF momentum was probably meant), a positive ``init_std``."""
    number("dropout", dropout, 0, 1, high_open=True)
    number("bn_momentum", bn_momentum, 0, 1, low_open=True)
    number("init_std", init_std, 0, low_open=True)
    if uses_batch_norm and bn_momentum > 0.5:
        warnings.warn(
            f"bn_momentum={bn_momentum} weights each new batch by {bn_momentum}: PyTorch convention. "
            f"Keras/TF momentum {bn_momentum} is bn_momentum={1 - bn_momentum:.3g} here.",
            stacklevel=3,  # the network's constructor's caller
        )


class DenseBlock(nn.Sequential):
    """One hidden layer: ``linear``, then ``bn``, ``act`` and ``dropout`` where asked for."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation: str = "elu",
        activation_kwargs: dict | None = None,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.add_module("linear", nn.Linear(n_in, n_out, bias=not batch_norm))
        if batch_norm:
            self.add_module("bn", nn.BatchNorm1d(n_out, momentum=bn_momentum))
        self.add_module("act", make_activation(activation, **(activation_kwargs or {})))
        if dropout:
            drop = nn.AlphaDropout(dropout) if activation == "selu" else nn.Dropout(dropout)
            self.add_module("dropout", drop)


class MLP(nn.Module):
    """Fully connected network with named layers ``hidden1..hiddenN`` and ``output``.

    Args:
        n_inputs: input features; images are flattened first, so 784 for 28x28.
        hidden: units per hidden layer, bottom first.
        n_outputs: logits.
        activation: a name from :data:`dnnkit.nn.activations.ACTIVATIONS`.
        activation_kwargs: its parameters, e.g. ``{"negative_slope": 0.2}``.
        batch_norm: BatchNorm1d between each hidden Linear and its activation.
        bn_momentum: PyTorch convention, the weight of the *new* batch: Keras/TF
            ``momentum=0.9`` is ``0.1`` here, 0.99 is 0.01.
        output_batch_norm: batch norm on the logits too (the seed's batch-norm network does it).
        dropout: dropout rate after each hidden activation (alpha dropout for SELU).
        init: ``he``, ``xavier``/``glorot``, ``lecun``, ``normal`` or ``torch``; ``None`` picks
            from the activation (He for the ReLU family and ELU, LeCun for SELU, Xavier for
            sigmoid/tanh).
        init_distribution: ``normal``, ``uniform`` or ``truncated_normal``.
        init_mode: ``fan_in``, ``fan_out`` or ``fan_avg``; ``None`` is the scheme's own.
        init_std: the std of ``init="normal"``.

    Example::

        >>> net = MLP(784, [300, 100], 10, activation="elu", batch_norm=True)
        >>> [name for name, _ in net.named_children()]
        ['hidden1', 'hidden2', 'output']
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        n_inputs: int = 784,
        hidden: Sequence[int] = (300, 100),
        n_outputs: int = 10,
        activation: str = "elu",
        activation_kwargs: dict | None = None,
        batch_norm: bool = False,
        bn_momentum: float = 0.1,
        output_batch_norm: bool = False,
        dropout: float = 0.0,
        init: str | None = None,
        init_distribution: str = "normal",
        init_mode: str | None = None,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(hidden, Sequence) or isinstance(hidden, str):
            raise DnnkitError(f"hidden must be a list of layer sizes such as [300, 100], got {hidden!r}")
        hidden = list(hidden)
        number("n_inputs", n_inputs, 1, integer=True)
        number("n_outputs", n_outputs, 1, integer=True)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden):
            raise DnnkitError(f"hidden must be a non-empty list of positive layer sizes, got {hidden!r}")
        check_layer_options(dropout, bn_momentum, init_std, batch_norm or output_batch_norm)
        self.n_inputs, self.n_outputs, self.activation = n_inputs, n_outputs, activation
        self.hidden_sizes = hidden
        sizes = [n_inputs, *hidden]
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), start=1):
            block = DenseBlock(n_in, n_out, activation, activation_kwargs, batch_norm, bn_momentum, dropout)
            self.add_module(f"hidden{i}", block)
        self.output = nn.Linear(sizes[-1], n_outputs, bias=not output_batch_norm)
        if output_batch_norm:
            self.output = nn.Sequential()
            self.output.add_module("linear", nn.Linear(sizes[-1], n_outputs, bias=False))
            self.output.add_module("bn", nn.BatchNorm1d(n_outputs, momentum=bn_momentum))
        init_module_(self, init or default_init(activation), init_distribution, init_mode, init_std)

    def export_config(self, config: dict) -> dict:
        """``config`` (this MLP's constructor arguments) updated to build the network's current
        shape, which :func:`dnnkit.nn.surgery.restack` may have changed since construction.

        Example::

            >>> MLP(784, [300, 100], 10).export_config({"hidden": [300, 100], "n_outputs": 10})
            {'hidden': [300, 100], 'n_outputs': 10, 'output_batch_norm': False}
        """
        output_bn = isinstance(self.output, nn.Sequential) and hasattr(self.output, "bn")
        return {**config, "hidden": list(self.hidden_sizes), "n_outputs": self.n_outputs, "output_batch_norm": output_bn}

    def hidden_layers(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if n.startswith("hidden")]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the top hidden layer."""
        x = x.flatten(1)
        for layer in self.hidden_layers():
            x = layer(x)
        return x

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x))
