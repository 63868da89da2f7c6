"""A convolutional network whose layers carry names, as the MLP's do.

Layers are ``conv1 … convN``, then ``hidden1 … hiddenM`` and ``output``, so freezing, reuse,
surgery and the gradient diagnosis select them by name (``"conv[12]"``, ``"conv.*"``,
``"hidden1|output"``). Each ``conv<i>`` is a small ``nn.Sequential`` of ``conv -> bn (optional)
-> act -> pool (optional) -> dropout (optional)``; each ``hidden<i>`` is the MLP's
:class:`~dnnkit.nn.mlp.DenseBlock`, and the first dense layer flattens the feature maps first
(its ``flatten`` child), so every top-level child maps the previous one's output: the network
is an ``nn.Sequential`` of its named layers, and a frozen bottom of it (``conv1``, ``conv2``,
even ``hidden1``) can be cached. Init, activation and batch-norm options are the MLP's; with
batch norm a conv or linear layer has no bias (BN's beta replaces it).

The feature-map sizes are worked out at construction from ``input_size``, so a pooling that
would shrink the maps below 1x1 is one error naming the layer, before anything trains.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dnnkit.errors import DnnkitError, choose, number
from dnnkit.nn.activations import default_init, make_activation
from dnnkit.nn.init import init_module_
from dnnkit.nn.mlp import DenseBlock, check_layer_options

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
PADDINGS = ("same", "valid")


class ConvBlock(nn.Sequential):
    """One conv layer: ``conv``, then ``bn``, ``act``, ``pool`` and ``dropout`` where asked for."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int = 3,
        padding: str | int = "same",
        activation: str = "relu",
        activation_kwargs: dict | None = None,
        batch_norm: bool = True,
        bn_momentum: float = 0.1,
        pool: int = 1,
        pool_type: str = "max",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(c_in, c_out, kernel_size, padding=padding, bias=not batch_norm))
        if batch_norm:
            self.add_module("bn", nn.BatchNorm2d(c_out, momentum=bn_momentum))
        self.add_module("act", make_activation(activation, **(activation_kwargs or {})))
        if pool > 1:
            self.add_module("pool", POOLS[pool_type](pool))
        if dropout:
            self.add_module("dropout", nn.AlphaDropout(dropout) if activation == "selu" else nn.Dropout(dropout))


def flattening(block: nn.Sequential) -> nn.Sequential:
    """``block`` with an ``nn.Flatten`` as its first child (no weights: the state_dict keys stay)."""
    block._modules = {"flatten": nn.Flatten(), **block._modules}
    return block


def _per_layer(key: str, value, n: int, low: int) -> list[int]:
    """``value`` (one integer for every conv layer, or a list of one per layer) as a list of ``n``."""
    values = [value] * n if not isinstance(value, Sequence) or isinstance(value, str) else list(value)
    if len(values) != n:
        raise DnnkitError(f"model.{key} must be one integer or a list of {n} (one per conv layer), got {value!r}")
    for i, v in enumerate(values, start=1):
        if key == "pool" and v in (None, 0):
            values[i - 1] = v = 1  # no pooling
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise DnnkitError(f"model.{key} of conv{i} must be an integer >= {low}, got {v!r}")
    return values


def _size(value, what: str) -> tuple[int, int]:
    hw = [value, value] if not isinstance(value, Sequence) or isinstance(value, str) else list(value)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
        raise DnnkitError(f"{what} must be a positive integer or [height, width], got {value!r}")
    return hw[0], hw[1]


class CNN(nn.Sequential):
    """Convolutional network with named layers ``conv1..convN``, ``hidden1..hiddenM``, ``output``.

    Args:
        in_channels: image channels (1 for MNIST).
        input_size: image side in pixels, or ``[height, width]``.
        channels: output channels per conv layer, bottom first.
        kernel_size: one size for every conv layer or a list of one per layer.
        padding: ``same`` (keeps the size), ``valid`` (none) or a number of pixels.
        pool: pooling window (= stride) after each conv layer, one for all or one per layer;
            ``1`` (or ``null``) is none.
        pool_type: ``max`` or ``avg``.
        hidden: units per dense layer after the convolutions (may be empty).
        n_outputs: logits.
        activation, activation_kwargs, batch_norm, bn_momentum, output_batch_norm, init,
            init_distribution, init_mode, init_std: as in :class:`~dnnkit.nn.MLP` (batch norm
            is ``BatchNorm2d`` after each conv, ``BatchNorm1d`` after each dense layer).
        conv_dropout: dropout rate after each conv block (alpha dropout for SELU).
        dropout: dropout rate after each dense hidden layer.

    Example::

        >>> net = CNN(1, 28, channels=[8, 16], pool=2, hidden=[32], n_outputs=10)
        >>> [name for name, _ in net.named_children()]
        ['conv1', 'conv2', 'hidden1', 'output']
        >>> net.feature_shapes, net(torch.zeros(2, 1, 28, 28)).shape
        ([(8, 14, 14), (16, 7, 7)], torch.Size([2, 10]))
        >>> CNN(1, 28, channels=[8, 8, 8, 8, 8], pool=2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        dnnkit.errors.DnnkitError: model.pool: conv5's pooling by 2 shrinks its 1x1 feature maps to 0x0 (below 1x1; ...
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 28,
        channels: Sequence[int] = (32, 64),
        kernel_size: int | Sequence[int] = 3,
        padding: str | int = "same",
        pool: int | Sequence[int] | None = 2,
        pool_type: str = "max",
        hidden: Sequence[int] = (128,),
        n_outputs: int = 10,
        activation: str = "relu",
        activation_kwargs: dict | None = None,
        batch_norm: bool = True,
        bn_momentum: float = 0.1,
        output_batch_norm: bool = False,
        conv_dropout: float = 0.0,
        dropout: float = 0.0,
        init: str | None = None,
        init_distribution: str = "normal",
        init_mode: str | None = None,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        number("in_channels", in_channels, 1, integer=True)
        number("n_outputs", n_outputs, 1, integer=True)
        height, width = _size(input_size, "model.input_size")
        for key, value in (("channels", channels), ("hidden", hidden)):
            if not isinstance(value, Sequence) or isinstance(value, str) \
                    or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
                raise DnnkitError(f"model.{key} must be a list of positive sizes such as [32, 64], got {value!r}")
        channels, hidden = list(channels), list(hidden)
        if not channels:
            raise DnnkitError("model.channels must name at least one conv layer, got []; for no convolutions use model=mlp")
        kernels = _per_layer("kernel_size", kernel_size, len(channels), 1)
        pools = _per_layer("pool", pool, len(channels), 1)
        choose("model.pool_type", pool_type, POOLS)
        if isinstance(padding, str):
            choose("model.padding", padding, PADDINGS)
        else:
            number("model.padding", padding, 0, integer=True)
        number("conv_dropout", conv_dropout, 0, 1, high_open=True)
        check_layer_options(dropout, bn_momentum, init_std, batch_norm or output_batch_norm)
        self.input_shape = (in_channels, height, width)
        self.conv_channels, self.hidden_sizes, self.n_outputs = channels, hidden, n_outputs
        self.activation, self.activation_kwargs = activation, dict(activation_kwargs or {})
        self.batch_norm, self.bn_momentum, self.dropout = batch_norm, bn_momentum, dropout
        self.feature_shapes = self._shapes(kernels, padding, pools)
        c_in = in_channels
        for i, (c_out, k, p) in enumerate(zip(channels, kernels, pools), start=1):
            block = ConvBlock(c_in, c_out, k, padding, activation, activation_kwargs, batch_norm, bn_momentum, p, pool_type, conv_dropout)
            self.add_module(f"conv{i}", block)
            c_in = c_out
        sizes = [self.flat_size, *hidden]
        for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), start=1):
            self.add_module(f"hidden{i}", self.dense_block(n_in, n_out, first=i == 1))
        self.output = nn.Linear(sizes[-1], n_outputs)
        if output_batch_norm:
            self.output = nn.Sequential()
            self.output.add_module("linear", nn.Linear(sizes[-1], n_outputs, bias=False))
            self.output.add_module("bn", nn.BatchNorm1d(n_outputs, momentum=bn_momentum))
        if not hidden:  # the output layer takes the feature maps itself
            self.output = flattening(self.output if output_batch_norm else nn.Sequential(OrderedDict(linear=self.output)))
        init_module_(self, init or default_init(activation), init_distribution, init_mode, init_std)

    def _shapes(self, kernels: list[int], padding: str | int, pools: list[int]) -> list[tuple[int, int, int]]:
        """``(channels, height, width)`` after each conv block; a size below 1 is an error naming the layer."""
        _, h, w = self.input_shape
        shapes: list[tuple[int, int, int]] = []
        for i, (c, k, p) in enumerate(zip(self.conv_channels, kernels, pools), start=1):
            done = ", ".join(f"conv{j} {hj}x{wj}" for j, (_, hj, wj) in enumerate(shapes, start=1))
            trail = f"input {self.input_shape[1]}x{self.input_shape[2]}" + (f" -> {done}" if done else "")
            pad = 0 if padding == "valid" else (k - 1) if padding == "same" else 2 * padding
            ch, cw = h + pad - k + 1, w + pad - k + 1
            if ch < 1 or cw < 1:
                raise DnnkitError(
                    f"model.kernel_size: conv{i}'s {k}x{k} kernel does not fit its {h}x{w} input ({trail}): "
                    "use padding=same, smaller kernels or fewer conv layers"
                )
            if ch // p < 1 or cw // p < 1:
                raise DnnkitError(
                    f"model.pool: conv{i}'s pooling by {p} shrinks its {ch}x{cw} feature maps to {ch // p}x{cw // p} "
                    f"(below 1x1; {trail}): use fewer conv layers, smaller pools, or pool=1 on some layers"
                )
            h, w = ch // p, cw // p
            shapes.append((c, h, w))
        return shapes

    @property
    def flat_size(self) -> int:
        """Values in the top conv layer's feature maps: the first dense layer's inputs."""
        c, h, w = self.feature_shapes[-1]
        return c * h * w

    def dense_block(self, n_in: int, n_out: int, first: bool = False) -> DenseBlock:
        """A dense hidden layer with this network's make-up; the ``first`` flattens the maps first."""
        block = DenseBlock(n_in, n_out, self.activation, self.activation_kwargs, self.batch_norm, self.bn_momentum, self.dropout)
        return flattening(block) if first else block

    def conv_layers(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if n.startswith("conv")]

    def hidden_layers(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if n.startswith("hidden")]

    def export_config(self, config: dict) -> dict:
        """``config`` (this CNN's constructor arguments) updated to build the network's current
        shape, which :func:`dnnkit.nn.surgery.restack` may have changed since construction.

        Example::

            >>> CNN(1, 28, [4], hidden=[8]).export_config({"channels": [4], "hidden": [8]})
            {'channels': [4], 'hidden': [8], 'n_outputs': 10, 'output_batch_norm': False}
        """
        output_bn = isinstance(self.output, nn.Sequential) and hasattr(self.output, "bn")
        return {**config, "hidden": list(self.hidden_sizes), "n_outputs": self.n_outputs, "output_batch_norm": output_bn}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the top hidden layer (the flattened top feature maps without dense layers)."""
        for name, layer in self.named_children():
            if name != "output":
                x = layer(x)
        return x if self.hidden_layers() else x.flatten(1)
