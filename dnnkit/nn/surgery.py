"""Layer surgery: reuse pretrained layers by name; drop, replace or add layers by name.

``reuse_layers(model, source, "hidden[123]")`` copies the parameters *and* buffers (batch-norm
running statistics) of the matching layers from a Lightning checkpoint, a saved state_dict or
a module. Layers are found in the source by name, whatever prefix the source's module put in
front (``model.hidden1`` in a Classifier checkpoint, ``hidden1`` in a bare MLP).

``restack(mlp, drop="hidden[45]|output", add=[20])`` removes the upper layers of an
:class:`~dnnkit.nn.MLP` (or the dense layers of a :class:`~dnnkit.nn.CNN`) and puts new hidden layers and a new output on top, so the seed's
"reuse hidden1-3, add a new hidden4 of 20 units and a new output" is one call (and, in a
recipe, one ``reuse:`` entry). ``replace_layer(model, "output", nn.Linear(50, 2))`` swaps one
layer by name.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from dnnkit.errors import DnnkitError, number
from dnnkit.nn.activations import default_init
from dnnkit.nn.cnn import CNN, flattening
from dnnkit.nn.init import init_module_
from dnnkit.nn.mlp import MLP, DenseBlock
from dnnkit.nn.select import layer_names, select_layers


def read_state_dict(source: str | Path | dict | nn.Module) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a checkpoint/state_dict file, a dict or a module.

    Files are read with ``torch.load(weights_only=True)``: a file that would run code when
    unpickled is refused, not executed.
    """
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DnnkitError(f"checkpoint {str(path)!r} does not exist")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch.load fails on junk with any of a dozen types
            text = str(err).strip()
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            if unsafe:
                raise DnnkitError(
                    f"refusing to load {str(path)!r}: besides tensors it holds {unsafe.group(1)!r}, which would "
                    "run when unpickled; dnnkit loads checkpoints with weights_only=True and executes nothing. "
                    "Re-save only the state_dict from a trusted copy"
                ) from None
            first = text.splitlines()[0] if text else type(err).__name__
            raise DnnkitError(
                f"cannot load {str(path)!r} as a checkpoint with weights_only=True "
                f"(truncated, not a checkpoint, or it holds code): {first}"
            ) from None
    if not isinstance(source, dict):
        raise DnnkitError(f"expected a state_dict or a Lightning checkpoint, got {type(source).__name__}")
    state = source.get("state_dict", source)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _owner(key: str, tail: str) -> str | None:
    """The prefix of ``key`` that ends with layer name ``tail`` (``'model.hidden1.'``), if any."""
    if key.startswith(tail + "."):
        return tail + "."
    i = key.find("." + tail + ".")
    return key[: i + len(tail) + 2] if i >= 0 else None


def _source_prefix(layer_name: str, state: dict[str, torch.Tensor], source_prefix: str = "") -> str:
    """The prefix under which the source holds ``layer_name`` (longest name suffix first), each
    suffix looked for as ``source_prefix`` + suffix."""
    for tail in (source_prefix + t for t in _suffixes(layer_name)):
        owners = {o for k in state if (o := _owner(k, tail))}
        if len(owners) == 1:
            return owners.pop()
        if len(owners) > 1:
            raise DnnkitError(f"layer {layer_name!r} is ambiguous in the source: {sorted(o[:-1] for o in owners)}")
    names = sorted({k.rsplit(".", 1)[0] for k in state})
    raise DnnkitError(f"the source has no layer {source_prefix + layer_name!r}; its layers: {', '.join(names)}")


@torch.no_grad()
def reuse_layers(
    model: nn.Module, source: str | Path | dict | nn.Module, layers: str = "hidden.*", source_prefix: str | None = None
) -> dict[str, list[str]]:
    """Copy the layers of ``model`` that match ``layers`` from ``source``; return what was copied.

    ``source_prefix`` names where the layers sit in the source when it holds them under another
    name: ``source_prefix="tower_a."`` copies the source's ``tower_a.hidden1`` into ``hidden1``
    (one tower of a :class:`~dnnkit.nn.towers.Towers` into an MLP; ``reuse.source_prefix``).

    Example::

        >>> from dnnkit.nn import MLP
        >>> a, b = MLP(784, [30, 20, 10], 8), MLP(784, [30, 20, 5], 2)
        >>> report = reuse_layers(b, a, "hidden[12]")
        >>> sorted(report)
        ['hidden1', 'hidden2']
        >>> torch.equal(a.hidden1.linear.weight, b.hidden1.linear.weight)
        True
        >>> from dnnkit.nn.towers import Towers
        >>> pairs, c = Towers(784, [30, 20]), MLP(784, [30, 20], 10)
        >>> sorted(reuse_layers(c, pairs, "hidden.*", source_prefix="tower_a."))
        ['hidden1', 'hidden2']
        >>> torch.equal(pairs.tower_a.hidden2.linear.weight, c.hidden2.linear.weight)
        True
    """
    if source_prefix is not None and (not isinstance(source_prefix, str) or not source_prefix.endswith(".")):
        raise DnnkitError(f"reuse.source_prefix must be a layer path ending with '.', such as 'tower_a.', got {source_prefix!r}")
    state = read_state_dict(source)
    report: dict[str, list[str]] = {}
    for name, layer in select_layers(model, layers).items():
        prefix = _source_prefix(name, state, source_prefix or "")
        own = layer.state_dict()
        copied = []
        for key, tensor in own.items():
            src = state.get(prefix + key)
            if src is None:
                raise DnnkitError(f"the source's layer {prefix[:-1]!r} has no {key!r} for {name}.{key}")
            if src.shape != tensor.shape:
                raise DnnkitError(
                    f"shape mismatch in layer {name!r}: {key} is {tuple(tensor.shape)} in the model "
                    f"but {tuple(src.shape)} in the source"
                )
            tensor.copy_(src)
            copied.append(key)
        report[name] = copied
    return report


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the submodule called ``name`` (dotted) is; return the old one.

    Example::

        >>> net = MLP(784, [30, 20], 10)
        >>> old = replace_layer(net, "output", nn.Linear(20, 2))
        >>> net(torch.zeros(1, 784)).shape
        torch.Size([1, 2])
    """
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = parent.get_submodule(child)
    except AttributeError:
        raise DnnkitError(f"{type(model).__name__} has no layer {name!r}; layers are: {', '.join(layer_names(model))}") from None
    setattr(parent, child, new)
    return old


def restack(
    model: MLP | CNN,
    drop: str | None = None,
    add: Sequence[int] = (),
    n_outputs: int | None = None,
    init: str | None = None,
    init_distribution: str = "normal",
) -> MLP | CNN:
    """Drop the top layers of ``model`` (an MLP or a CNN) that match ``drop``, add hidden layers of
    ``add`` units and a new output layer of ``n_outputs`` logits; in place, kept layers keep their weights.

    New hidden layers are named on from the last kept one (``hidden4`` ...) and copy the kept
    top layer's make-up (activation, batch norm, dropout); they and the new output are
    initialised by ``init`` (default: the scheme the activation calls for). A new output is
    built whenever ``add`` or ``n_outputs`` is given or ``output`` is dropped. Layers added here
    are listed in ``model.new_layers`` (:func:`reusable_layers` leaves them out). A CNN keeps
    its conv layers: ``drop`` takes dense layers only, all of them if need be (the new ones
    then take the flattened feature maps, with the CNN's own make-up).

    Example::

        >>> a = MLP(784, [300, 50, 50, 50, 50], 10, activation="relu")
        >>> b = restack(copy.deepcopy(a), drop="hidden[45]|output", add=[20])
        >>> [n for n, _ in b.named_children()], b.hidden_sizes
        (['hidden1', 'hidden2', 'hidden3', 'hidden4', 'output'], [300, 50, 50, 20])
        >>> torch.equal(a.hidden3.linear.weight, b.hidden3.linear.weight)
        True
        >>> cnn = restack(CNN(1, 28, [8, 16], hidden=[32]), drop="hidden1|output", add=[64], n_outputs=2)
        >>> [n for n, _ in cnn.named_children()], cnn.hidden_sizes, cnn(torch.zeros(2, 1, 28, 28)).shape
        (['conv1', 'conv2', 'hidden1', 'output'], [64], torch.Size([2, 2]))
    """
    if not isinstance(model, (MLP, CNN)):
        raise DnnkitError(f"restack works on a dnnkit MLP or CNN (named hidden layers), got {type(model).__name__}; use replace_layer")
    add = list(add or [])
    if any(not isinstance(n, int) or n <= 0 for n in add):
        raise DnnkitError(f"add must be a list of positive layer sizes, got {add!r}")
    number("n_outputs", n_outputs, 1, integer=True, optional=True)
    order = [n for n, _ in model.named_children()]
    dropped = list(select_layers(model, drop)) if drop else []
    if any("." in n for n in dropped) or dropped != order[len(order) - len(dropped):]:
        raise DnnkitError(
            f"drop={drop!r} selects {dropped}; only whole top layers can be dropped, "
            f"a top part of {order}"
        )
    convs = [n for n in dropped if n.startswith("conv")]
    if isinstance(model, CNN) and convs:
        raise DnnkitError(f"drop={drop!r} selects the conv layers {convs}; restack drops a CNN's dense layers only (hidden*, output)")
    hidden = [n for n in order if n.startswith("hidden") and n not in dropped]
    if not hidden and isinstance(model, MLP):
        raise DnnkitError(f"drop={drop!r} leaves no hidden layer of {order}")
    top = getattr(model, hidden[-1]) if hidden else None
    for name in dropped:
        delattr(model, name)
    sizes = model.hidden_sizes[: len(hidden)]
    n_in = sizes[-1] if sizes else model.flat_size
    new_output = "output" in dropped or bool(add) or n_outputs is not None
    if "output" in order and "output" not in dropped and new_output:
        delattr(model, "output")
    new = []
    scheme = init or default_init(model.activation)
    for units in add:
        if top is None:  # a CNN without dense layers left: its own make-up, the first one flattens
            block = model.dense_block(n_in, units, first=not new)
        else:
            block = DenseBlock(n_in, units, batch_norm=hasattr(top, "bn"))
            block.act = copy.deepcopy(top.act)
            if hasattr(top, "dropout"):  # the same kind too: SELU's AlphaDropout stays AlphaDropout
                block.dropout = copy.deepcopy(top.dropout)
            if hasattr(top, "bn"):
                block.bn.momentum = top.bn.momentum
        init_module_(block, scheme, init_distribution)
        name = f"hidden{len(hidden) + len(new) + 1}"
        model.add_module(name, block)
        new.append(name)
        sizes.append(units)
        n_in = units
    if new_output:
        model.n_outputs = n_outputs or model.n_outputs
        model.output = nn.Linear(n_in, model.n_outputs)
        if isinstance(model, CNN) and not sizes:  # straight from the feature maps
            model.output = flattening(nn.Sequential(OrderedDict(linear=model.output)))
        init_module_(model.output, scheme, init_distribution)
        new.append("output")
    model.hidden_sizes = sizes
    model.new_layers = [*getattr(model, "new_layers", []), *new]
    return model


def reusable_layers(model: nn.Module) -> str:
    """A pattern for the layers of an MLP or CNN that :func:`restack` did not add (``hidden.*``
    for an MLP it never touched, ``conv.*|hidden.*`` for such a CNN): what a ``reuse:`` without
    ``layers`` copies."""
    new = getattr(model, "new_layers", None)
    if not new:
        return "conv.*|hidden.*" if isinstance(model, CNN) else "hidden.*"
    return "|".join(re.escape(n) for n, _ in model.named_children() if n not in new)
