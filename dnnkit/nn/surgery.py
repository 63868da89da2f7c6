"""Layer surgery: reuse pretrained layers by name.

``reuse_layers(model, source, "hidden[123]")`` copies the parameters *and* buffers (batch-norm
running statistics) of the matching layers from a Lightning checkpoint, a saved state_dict or
a module. Layers are found in the source by name, whatever prefix the source's module put in
front (``model.hidden1`` in a Classifier checkpoint, ``hidden1`` in a bare MLP).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn.select import select_layers


def load_state_dict(source: str | Path | dict | nn.Module) -> dict[str, torch.Tensor]:
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


def _source_prefix(layer_name: str, state: dict[str, torch.Tensor]) -> str:
    """The prefix under which the source holds ``layer_name`` (longest name suffix first)."""
    for tail in _suffixes(layer_name):
        owners = {o for k in state if (o := _owner(k, tail))}
        if len(owners) == 1:
            return owners.pop()
        if len(owners) > 1:
            raise DnnkitError(f"layer {layer_name!r} is ambiguous in the source: {sorted(o[:-1] for o in owners)}")
    names = sorted({k.rsplit(".", 1)[0] for k in state})
    raise DnnkitError(f"the source has no layer {layer_name!r}; its layers: {', '.join(names)}")


@torch.no_grad()
def reuse_layers(model: nn.Module, source: str | Path | dict | nn.Module, layers: str = "hidden.*") -> dict[str, list[str]]:
    """Copy the layers of ``model`` that match ``layers`` from ``source``; return what was copied.

    Example::

        >>> from dnnkit.nn import MLP
        >>> a, b = MLP(784, [30, 20, 10], 8), MLP(784, [30, 20, 5], 2)
        >>> report = reuse_layers(b, a, "hidden[12]")
        >>> sorted(report)
        ['hidden1', 'hidden2']
        >>> torch.equal(a.hidden1.linear.weight, b.hidden1.linear.weight)
        True
    """
    state = load_state_dict(source)
    report: dict[str, list[str]] = {}
    for name, layer in select_layers(model, layers).items():
        prefix = _source_prefix(name, state)
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
