"""Freeze and unfreeze layers by name, plain PyTorch (no Trainer needed).

``freeze(model, "hidden[12]")`` stops gradients (``requires_grad=False``) *and* pins the layers
in eval mode: ``requires_grad=False`` alone does not stop batch norm's running statistics from
moving, and Lightning (or your own code) calling ``model.train()`` would put a frozen batch-norm
layer back into training mode. A pinned layer ignores ``.train()`` from any parent, so its
weights *and* buffers stay bit-identical however it is trained; its dropout is off too (a frozen
layer computes what it computes at inference). :func:`unfreeze` undoes both.

Either form the book uses selects what is frozen: ``frozen="hidden[12]"``, or
``trainable="hidden[34]|output"`` (every other layer with parameters or buffers is frozen).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn.mlp import MLP
from dnnkit.nn.select import select_layers


def _train_pinned(self: nn.Module, mode: bool = True) -> nn.Module:
    # replaces nn.Module.train on a frozen layer: whatever the caller asks, stay in eval mode
    return nn.Module.train(self, False)


def pin_eval(module: nn.Module) -> None:
    """Put ``module`` (and everything under it) into eval mode and keep it there."""
    for sub in module.modules():
        sub.train = functools.partial(_train_pinned, sub)  # unlike a bound method, it pickles (torch.save(model))
    nn.Module.train(module, False)


def unpin_eval(module: nn.Module, mode: bool = True) -> None:
    """Let ``module`` follow ``.train()`` again and set it to ``mode``."""
    for sub in module.modules():
        sub.__dict__.pop("train", None)
    module.train(mode)


def is_pinned(module: nn.Module) -> bool:
    return "train" in module.__dict__


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def complement(module: nn.Module, trainable: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The outermost layers of ``module`` with parameters or buffers that hold no layer of
    ``trainable`` and lie in none: "everything else" at the coarsest grain."""
    out: dict[str, nn.Module] = {}

    def walk(prefix: str, mod: nn.Module) -> None:
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if full in trainable or not _has_state(child):
                continue
            if any(t.startswith(full + ".") for t in trainable):
                walk(full + ".", child)
            else:
                out[full] = child

    walk("", module)
    return out


def resolve(module: nn.Module, frozen: str | None = None, trainable: str | None = None) -> dict[str, nn.Module]:
    """The layers (by qualified name) that ``frozen`` or ``trainable`` leaves frozen.

    Example::

        >>> from dnnkit.nn import MLP
        >>> list(resolve(MLP(hidden=[8, 8, 8, 8]), trainable="hidden[34]|output"))
        ['hidden1', 'hidden2']
    """
    if (frozen is None) == (trainable is None):
        raise DnnkitError(f"give exactly one of frozen= or trainable= (got frozen={frozen!r}, trainable={trainable!r})")
    if frozen is not None:
        return select_layers(module, frozen)
    return complement(module, select_layers(module, trainable))


def freeze(module: nn.Module, frozen: str | None = None, trainable: str | None = None) -> dict[str, nn.Module]:
    """Freeze the layers selected by ``frozen`` (or all but ``trainable``); return them by name.

    Example::

        >>> from dnnkit.nn import MLP
        >>> net = MLP(hidden=[8, 8, 8], batch_norm=True)
        >>> list(freeze(net, "hidden[12]"))
        ['hidden1', 'hidden2']
        >>> net.train().hidden1.bn.training, net.hidden1.linear.weight.requires_grad, net.hidden3.training
        (False, False, True)
    """
    layers = resolve(module, frozen, trainable)
    for layer in layers.values():
        layer.requires_grad_(False)
        pin_eval(layer)
    return layers


def unfreeze(module: nn.Module, layers: str | dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Make ``layers`` (a pattern, or what :func:`freeze` returned) trainable again."""
    if isinstance(layers, str):
        layers = select_layers(module, layers)
    for layer in layers.values():
        layer.requires_grad_(True)
        unpin_eval(layer, module.training)
    return layers


def describe(layers: dict[str, nn.Module]) -> str:
    """``hidden1, hidden2 (235,500 parameters)`` for logs."""
    n = sum(p.numel() for layer in layers.values() for p in layer.parameters())
    return f"{', '.join(layers) or '(none)'} ({n:,} parameters)"


# ----------------------------------------------------------------------------- caching support


class NotABottom(Exception):
    """The frozen layers are not the bottom of a sequential model (so their outputs cannot be cached)."""


def frozen_bottom(module: nn.Module, names: list[str]) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]:
    """If the layers ``names`` are the first children of a model whose forward applies its
    children in order (an :class:`~dnnkit.nn.MLP` or an ``nn.Sequential``) inside ``module``,
    return a function computing their output from an input batch, and the layers.

    Example::

        >>> from dnnkit.nn import MLP
        >>> wrapper = nn.Module(); wrapper.model = MLP(784, [30, 20, 10], 2)
        >>> bottom, layers = frozen_bottom(wrapper, ["model.hidden1", "model.hidden2"])
        >>> bottom(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 20])
    """
    if not names:
        raise NotABottom("nothing is frozen")
    parents = {n.rpartition(".")[0] for n in names}
    if len(parents) != 1:
        raise NotABottom(f"the frozen layers {names} do not share one parent")
    parent_name = parents.pop()
    parent = module.get_submodule(parent_name) if parent_name else module
    if not isinstance(parent, (MLP, nn.Sequential)):
        raise NotABottom(f"{parent_name or 'the module'} is a {type(parent).__name__}, not an MLP or nn.Sequential")
    children = [n for n, _ in parent.named_children()]
    local = [n.rpartition(".")[2] for n in names]
    if local != children[: len(local)] or len(local) == len(children):
        raise NotABottom(f"the frozen layers {local} are not the bottom of {children}")
    layers = [getattr(parent, n) for n in local]
    flatten = isinstance(parent, MLP)

    @torch.no_grad()
    def bottom(x: torch.Tensor) -> torch.Tensor:
        if flatten:
            x = x.flatten(1)
        for layer in layers:
            x = type(layer).forward(layer, x)  # the class's forward, even while skip() is on
        return x

    return bottom, layers


def _passthrough(x, *args, **kwargs):
    return x


def skip(layers: list[nn.Module]) -> None:
    """Make ``layers`` pass their input through (their weights stay in the state_dict):
    the model then takes the cached outputs of these layers as its input."""
    for layer in layers:
        layer.forward = _passthrough


def unskip(layers: list[nn.Module]) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)
