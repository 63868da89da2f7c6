"""Fold batch norm into the layer before it, so predictions cost what a network without it costs.

In eval mode a BatchNorm is a fixed per-channel affine map,
``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta``. When ``x`` comes straight
from a Linear or Conv layer ``x = W u + b``, the two collapse into one layer with

    scale = gamma / sqrt(running_var + eps)
    W' = scale * W            (per output unit / channel)
    b' = scale * (b - running_mean) + beta

so the folded network does no per-layer normalisation work at all. dnnkit's MLP with batch
norm folds into exactly the layer structure (and state_dict keys) of the same MLP built with
``batch_norm=False, output_batch_norm=False``.

Which pairs fold: a BatchNorm that directly follows an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` in
the module order of an ``nn.Sequential`` (or a subclass that keeps Sequential's ``forward``,
such as dnnkit's hidden layers), with running statistics, and whose size matches the layer's
outputs. Everything else (a BN after an activation, a BN held as an attribute of a module
whose ``forward`` we cannot read, a BN without running statistics) is left in place, listed
in the returned model's ``unfolded_batchnorms`` (name -> reason) and named in a warning.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _follows_sequential_order(module: nn.Module) -> bool:
    """A Sequential whose forward is Sequential's own: children run in registration order."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _out_size(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _why_not(layer: nn.Module | None, bn: _BatchNorm) -> str | None:
    """``None`` if ``bn`` can be folded into ``layer``, else the reason it cannot."""
    if layer is None:
        return "it is not the child of an nn.Sequential right after a Linear/Conv layer"
    if not isinstance(layer, FOLDABLE) or (isinstance(layer, _ConvNd) and layer.transposed):
        return f"it follows a {type(layer).__name__}, not a Linear/Conv layer"
    if bn.running_mean is None or bn.running_var is None:
        return "it has no running statistics (track_running_stats=False uses batch statistics in eval)"
    if bn.num_features != _out_size(layer):
        return f"its {bn.num_features} features do not match the {_out_size(layer)} outputs of the layer before it"
    return None


@torch.no_grad()
def fold_into(layer: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: _BatchNorm) -> None:
    """Fold ``bn``'s eval-mode transform into ``layer``'s weight and bias, in place (the bias is
    created if the layer has none). Computed in float64, stored in the layer's dtype."""
    dtype = layer.weight.dtype
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    weight = layer.weight.double() * scale.reshape(shape)
    layer.weight.copy_(weight.to(dtype))
    new_bias = (scale * (bias - mean) + beta).to(dtype=dtype, device=layer.weight.device)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module, *, inplace: bool = False, warn: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm folded into the layer before
    it and removed.

    The input model is not touched (unless ``inplace=True``). The result carries
    ``folded_batchnorms`` (names of the BatchNorms folded away) and ``unfolded_batchnorms``
    (name -> why it stayed); ``warn=True`` also names the unfolded ones in a warning. A
    Sequential left holding only the folded layer (the MLP's ``output``) is replaced by that
    layer. Outputs equal the original's in eval mode up to float rounding.

    Example::

        >>> from dnnkit.nn import MLP
        >>> net = MLP(784, [300, 200], 10, batch_norm=True, output_batch_norm=True).eval()
        >>> fast = fold_batchnorm(net)
        >>> fast.folded_batchnorms
        ['hidden1.bn', 'hidden2.bn', 'output.bn']
        >>> [n for n, _ in fast.hidden1.named_children()], type(fast.output).__name__
        (['linear', 'act'], 'Linear')
        >>> x = torch.randn(5, 1, 28, 28)
        >>> torch.allclose(fast(x), net(x), atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    pairs: list[tuple[nn.Module, str, nn.Module, _BatchNorm]] = []  # (container, bn child name, layer, bn)
    placed: set[int] = set()
    unfolded: dict[str, str] = {}
    for container in model.modules():
        if not _follows_sequential_order(container):
            continue
        previous = None
        for child_name, child in container.named_children():
            if isinstance(child, _BatchNorm):
                placed.add(id(child))
                reason = _why_not(previous, child)
                if reason is None:
                    pairs.append((container, child_name, previous, child))
                else:
                    unfolded[names[id(child)]] = reason
            previous = child
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and id(m) not in placed:
            unfolded[name] = _why_not(None, m)
    folded = []
    for container, child_name, layer, bn in pairs:
        fold_into(layer, bn)
        del container._modules[child_name]
        folded.append(names[id(bn)])
    _collapse(model, {id(container) for container, *_ in pairs})
    model.folded_batchnorms = folded
    model.unfolded_batchnorms = unfolded
    if unfolded and warn:
        listing = "; ".join(f"{n or '<model>'}: {why}" for n, why in unfolded.items())
        warnings.warn(f"fold_batchnorm left {len(unfolded)} BatchNorm layer(s) in place: {listing}", stacklevel=2)
    return model


def _collapse(model: nn.Module, emptied: set[int]) -> None:
    """Replace a plain ``nn.Sequential`` child that folding left with one Linear/Conv by that layer."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in emptied and type(child) is nn.Sequential and len(child) == 1 and isinstance(child[0], FOLDABLE):
                setattr(parent, child_name, child[0])
