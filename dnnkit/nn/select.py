"""Select layers by name or regular expression, never by index.

A pattern is matched (``re.fullmatch``) against every dotted suffix of a module's qualified
name, so ``"hidden[12]"`` selects ``hidden1`` in a bare MLP and ``model.hidden1`` inside a
LightningModule that holds the MLP as ``self.model``, while ``"layer4.*"`` selects
torchvision's ``layer4`` (and nothing below it is selected twice). A pattern that matches
nothing is an error listing the layer names that exist.
"""

from __future__ import annotations

import re

from torch import nn

from dnnkit.errors import DnnkitError


def _suffixes(name: str):
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def layer_names(module: nn.Module, depth: int = 2) -> list[str]:
    """Qualified names of the modules at most ``depth`` levels down, for error messages."""
    return [n for n, _ in module.named_modules() if n and n.count(".") < depth]


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise DnnkitError(f"layer pattern {pattern!r} is not a valid regular expression: {err}") from None


def match_name(pattern: str | re.Pattern, name: str) -> bool:
    """Whether ``pattern`` fullmatches ``name`` or one of its dotted suffixes."""
    regex = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    return any(regex.fullmatch(s) for s in _suffixes(name))


def select_layers(module: nn.Module, pattern: str, *, required: bool = True) -> dict[str, nn.Module]:
    """The outermost submodules of ``module`` whose names match ``pattern``, in module order.

    Example::

        >>> from dnnkit.nn import MLP
        >>> list(select_layers(MLP(hidden=[8, 8, 8]), "hidden[12]"))
        ['hidden1', 'hidden2']
    """
    regex = compile_pattern(pattern)
    chosen: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if not name or any(name.startswith(c + ".") for c in chosen):
            continue
        if match_name(regex, name):
            chosen[name] = sub
    if required and not chosen:
        raise DnnkitError(
            f"layer pattern {pattern!r} matches no layer of {type(module).__name__}; "
            f"layers are: {', '.join(layer_names(module))}"
        )
    return chosen


def select_parameters(module: nn.Module, pattern: str, *, required: bool = True) -> dict[str, nn.Parameter]:
    """Parameters (by qualified name) of the layers that ``pattern`` selects."""
    params = {}
    for name, sub in select_layers(module, pattern, required=required).items():
        for pname, p in sub.named_parameters():
            params[f"{name}.{pname}"] = p
    return params
