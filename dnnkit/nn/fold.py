"""Fold batch norm into the layer before it, so predictions cost what a network without it costs.

In eval mode a BatchNorm is a fixed per-channel affine map,
``y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta``. When ``x`` comes straight
from a Linear or Conv layer ``x = W u + b``, the two collapse into one layer with

    scale = gamma / sqrt(running_var + eps)
    W' = scale * W            (per output unit / channel)
    b' = scale * (b - running_mean) + beta

(torch's own ``torch.nn.utils.fusion.fuse_conv_bn_weights`` / ``fuse_linear_bn_weights``, run in
float64), so the folded network does no per-layer normalisation work at all.

Which pairs fold, found in two ways:

1. **Module order**: a BatchNorm that directly follows an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` in
   an ``nn.Sequential`` (or a subclass that keeps Sequential's ``forward``, such as dnnkit's
   hidden and conv layers). It is removed from the Sequential, and a plain Sequential left
   holding only the folded layer is replaced by it: dnnkit's MLP with batch norm folds into
   exactly the layer structure (and state_dict keys) of the same MLP built with
   ``batch_norm=False, output_batch_norm=False``; the CNN likewise.
2. **The traced forward** (``torch.fx``): every other BatchNorm, held as an attribute and called
   from a ``forward`` (a ResNet's ``bn1``, ``layer1.0.bn2``, ...). The model (or, where its
   forward cannot be traced, such as a ZooNet's input adapter, the smallest modules around
   the BatchNorm that can) is traced symbolically; a BatchNorm whose input is the output of a
   Linear/Conv layer that nothing else uses is folded into it and replaced by ``nn.Identity``,
   so the model keeps its own ``forward`` and class. Nothing of the trace is kept: the fold is
   a function of the module structure alone, so a model rebuilt from its config and folded
   again has the same state_dict keys (what :func:`dnnkit.nn.export.load_inference_model` does).

Either way the BatchNorm needs running statistics and as many features as the layer's outputs.
A BatchNorm that cannot be folded (after an activation, after an addition, in a forward that
cannot be traced, without running statistics) is left in place, listed in the returned
model's ``unfolded_batchnorms`` (name -> reason) and named in a warning.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NOT_IN_ORDER = "it is not the child of an nn.Sequential right after a Linear/Conv layer"


def _follows_sequential_order(module: nn.Module) -> bool:
    """A Sequential whose forward is Sequential's own: children run in registration order."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _out_size(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _why_not(layer: nn.Module | None, bn: _BatchNorm) -> str | None:
    """``None`` if ``bn`` can be folded into ``layer``, else the reason it cannot."""
    if layer is None:
        return NOT_IN_ORDER
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
    created if the layer has none), with torch's fusion helpers computing in float64; the
    results are stored in the layer's dtype."""
    dtype, device = layer.weight.dtype, layer.weight.device
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
    weight, new_bias = fuse(layer.weight.double(), bias, mean, var, bn.eps, gamma, beta)
    layer.weight.copy_(weight.to(dtype))
    new_bias = new_bias.detach().to(dtype=dtype, device=device)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=layer.weight.requires_grad)
    else:
        layer.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module, *, inplace: bool = False, warn: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm folded into the layer before
    it and removed (see the module docstring for which fold and how).

    The input model is not touched (unless ``inplace=True``). The result carries
    ``folded_batchnorms`` (names of the BatchNorms folded away, in module order) and
    ``unfolded_batchnorms`` (name -> why it stayed); ``warn=True`` also names the unfolded ones
    in a warning. Outputs equal the original's in eval mode up to float rounding.

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
        >>> import torchvision
        >>> resnet = fold_batchnorm(torchvision.models.resnet18())  # BNs called from forward(): traced
        >>> len(resnet.folded_batchnorms), resnet.unfolded_batchnorms, type(resnet.layer1[0].bn1).__name__
        (20, {}, 'Identity')
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batchnorm expects an nn.Module, got {type(model).__name__}")
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    every = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]  # module order of the input
    folded, unfolded = _fold_in_order(model, names)
    rest = [m for m in model.modules() if isinstance(m, _BatchNorm) and names[id(m)] not in unfolded]
    unfolded.update({names[id(m)]: NOT_IN_ORDER for m in rest})
    for name in _fold_traced(model, rest, names, unfolded):
        folded.append(name)
        del unfolded[name]
    model.folded_batchnorms = [n for n in every if n in folded]
    model.unfolded_batchnorms = {n: unfolded[n] for n in every if n in unfolded}
    if unfolded and warn:
        listing = "; ".join(f"{n or '<model>'}: {why}" for n, why in model.unfolded_batchnorms.items())
        warnings.warn(f"fold_batchnorm left {len(unfolded)} BatchNorm layer(s) in place: {listing}", stacklevel=2)
    return model


def _fold_in_order(model: nn.Module, names: dict[int, str]) -> tuple[list[str], dict[str, str]]:
    """Fold the pairs of adjacent children of Sequentials; return the names folded and, for the
    BatchNorms whose Sequential order rules folding out, why. A BatchNorm outside a Sequential,
    or first in one, is in neither: the traced forward decides."""
    pairs: list[tuple[nn.Module, str, nn.Module, _BatchNorm]] = []  # (container, bn child name, layer, bn)
    unfolded: dict[str, str] = {}
    for container in model.modules():
        if not _follows_sequential_order(container):
            continue
        previous = None
        for child_name, child in container.named_children():
            if isinstance(child, _BatchNorm) and previous is not None:
                reason = _why_not(previous, child)
                if reason is None:
                    pairs.append((container, child_name, previous, child))
                else:
                    unfolded[names[id(child)]] = reason
            previous = child
    folded = []
    for container, child_name, layer, bn in pairs:
        fold_into(layer, bn)
        del container._modules[child_name]
        folded.append(names[id(bn)])
    _collapse(model, {id(container) for container, *_ in pairs})
    return folded, unfolded


def _collapse(model: nn.Module, emptied: set[int]) -> None:
    """Replace a plain ``nn.Sequential`` child that folding left with one Linear/Conv by that layer."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if id(child) in emptied and type(child) is nn.Sequential and len(child) == 1 and isinstance(child[0], FOLDABLE):
                setattr(parent, child_name, child[0])


# ----------------------------------------------------------------------------- the traced forward


def _traces(module: nn.Module, wanted: set[int], failures: dict[int, str]) -> list[tuple[nn.Module, fx.Graph]]:
    """Symbolic traces of ``module``, or, where its forward cannot be traced, of its children
    that hold a module of ``wanted`` (ids), recursively; ``failures`` gets, per wanted module
    that no trace reaches, the innermost error."""
    inside = [m for m in module.modules() if id(m) in wanted]
    if not inside or id(module) in wanted:
        return []
    try:
        return [(module, fx.Tracer().trace(module))]
    except Exception as err:  # noqa: BLE001 - data-dependent control flow, unsupported ops, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        for m in inside:
            failures[id(m)] = f"the forward of {type(module).__name__} that calls it cannot be traced with torch.fx ({first})"
    return [trace for child in module.children() for trace in _traces(child, wanted, failures)]


def _describe(node) -> str:
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return "the forward's input"
    if node.op == "call_module":
        return f"the output of {node.target}"
    return f"the result of {getattr(node.target, '__name__', node.target)}"


def _fold_traced(model: nn.Module, bns: list[_BatchNorm], names: dict[int, str], unfolded: dict[str, str]) -> list[str]:
    """Fold ``bns`` (held outside Sequential order) where a traced forward shows a Linear/Conv
    layer feeding them alone; each folded BatchNorm becomes ``nn.Identity``. Returns the names
    folded; ``unfolded`` gets the reason for the others."""
    if not bns:
        return []
    wanted = {id(m) for m in bns}
    failures: dict[int, str] = {}
    shared = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    folded = []
    for root, graph in _traces(model, wanted, failures):
        calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        read = [n.target for n in graph.nodes if n.op == "get_attr"]
        for node in graph.nodes:
            if node.op != "call_module" or id(bn := root.get_submodule(node.target)) not in wanted:
                continue
            name, source = names[id(bn)], node.args[0] if node.args else None
            layer = root.get_submodule(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
            if calls[node.target] > 1 or shared[id(bn)] > 1:
                reason = "it is called more than once (or held under two names), so one fold cannot serve every call"
            elif layer is None:
                reason = f"its input is {_describe(source)}, not the output of a Linear/Conv layer"
            elif len(source.users) > 1 or calls[source.target] > 1 or shared[id(layer)] > 1:
                reason = f"the output of {names[id(layer)]} is used elsewhere too, which needs it unfolded"
            elif any(r == t or r.startswith(t + ".") for r in read for t in (node.target, source.target)):
                reason = "the forward reads its (or the layer's) weights directly"
            else:
                reason = _why_not(layer, bn)
            if reason is None:
                fold_into(layer, bn)
                parent, _, child = node.target.rpartition(".")
                setattr(root.get_submodule(parent) if parent else root, child, nn.Identity())
                folded.append(name)
            else:
                unfolded[name] = reason
            wanted.discard(id(bn))
    for bn in bns:
        if id(bn) in wanted:  # no trace calls it
            unfolded[names[id(bn)]] = failures.get(id(bn), "no traced forward calls it")
    return folded
