"""Weight initialisation by name, with TF's ``variance_scaling_initializer`` semantics.

Every scheme draws weights with variance ``scale / n`` where ``n`` is the layer's fan-in,
fan-out or their average (``mode``):

==========  =====  ==============  =========================================
scheme      scale  default mode    book / Keras name
==========  =====  ==============  =========================================
he          2      fan_in          He (``he_normal``); ReLU family and ELU
xavier      1      fan_avg         Xavier/Glorot (``glorot_normal``); tanh, sigmoid
lecun       1      fan_in          LeCun (``lecun_normal``); SELU
==========  =====  ==============  =========================================

``distribution`` is ``normal`` (std = sqrt(scale/n)), ``uniform`` (limit = sqrt(3*scale/n)) or
``truncated_normal``: cut at two standard deviations with the std first divided by
0.87962566, so the *resulting* std is sqrt(scale/n), as Keras's ``HeNormal``,
``GlorotNormal`` and ``LecunNormal`` do, and TF's ``variance_scaling_initializer`` from TF 1.14
on (TF <= 1.9, the seed's era, truncated *without* the rescale, so its std was 0.88 of that;
PyTorch's ``kaiming_normal_`` is not truncated and knows no ``fan_avg``). Two more schemes: ``normal`` draws N(0, std^2) (the book's naive
N(0, 1) that makes gradients vanish), and ``torch`` leaves PyTorch's default
U(+-1/sqrt(fan_in)) in place. Biases are set to zero except under ``torch``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dnnkit.errors import DnnkitError, choose, number

SCALES = {"he": 2.0, "kaiming": 2.0, "xavier": 1.0, "glorot": 1.0, "lecun": 1.0}
DEFAULT_MODES = {"he": "fan_in", "kaiming": "fan_in", "xavier": "fan_avg", "glorot": "fan_avg", "lecun": "fan_in"}
SCHEMES = [*SCALES, "normal", "torch"]
DISTRIBUTIONS = ["normal", "uniform", "truncated_normal"]
MODES = ["fan_in", "fan_out", "fan_avg"]
# std of a unit normal truncated at +-2 std; dividing by it restores the intended std
TRUNCATED_STD = 0.87962566103423978


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """Fan-in and fan-out of a Linear (out, in) or Conv (out, in, *kernel) weight."""
    if weight.dim() < 2:
        raise DnnkitError(f"cannot compute fans of a tensor with shape {tuple(weight.shape)}; need >= 2 dims")
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def target_std(weight: torch.Tensor, scheme: str, mode: str | None = None, std: float = 1.0) -> float:
    """The standard deviation ``scheme`` aims for on ``weight`` (what the tests check against)."""
    choose("init scheme", scheme, SCHEMES)
    if scheme == "normal":
        return std
    if scheme == "torch":
        return 1.0 / math.sqrt(3.0 * fans(weight)[0])
    mode = choose("init mode", mode or DEFAULT_MODES[scheme], MODES)
    fan_in, fan_out = fans(weight)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    return math.sqrt(SCALES[scheme] / n)


@torch.no_grad()
def init_weight_(
    weight: torch.Tensor,
    scheme: str = "he",
    distribution: str = "normal",
    mode: str | None = None,
    std: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill ``weight`` in place by ``scheme``; see the module docstring for the formulas.

    Example::

        >>> w = torch.empty(300, 784)
        >>> _ = init_weight_(w, "he", "truncated_normal")
        >>> abs(w.std().item() / (2 / 784) ** 0.5 - 1) < 0.05
        True
    """
    number("std", std, 0)
    choose("init distribution", distribution, DISTRIBUTIONS)
    if scheme == "torch":
        choose("init scheme", scheme, SCHEMES)
        bound = target_std(weight, "torch") * math.sqrt(3.0)
        return weight.uniform_(-bound, bound, generator=generator)
    sigma = target_std(weight, scheme, mode, std)
    if distribution == "normal":
        return weight.normal_(0.0, sigma, generator=generator)
    if distribution == "uniform":
        limit = sigma * math.sqrt(3.0)
        return weight.uniform_(-limit, limit, generator=generator)
    s = sigma / TRUNCATED_STD
    return nn.init.trunc_normal_(weight, 0.0, s, -2 * s, 2 * s, generator=generator)


def init_module_(
    module: nn.Module, scheme: str = "he", distribution: str = "normal", mode: str | None = None, std: float = 1.0
) -> nn.Module:
    """Initialise every Linear and Conv layer inside ``module``; biases to zero.

    Example::

        >>> net = init_module_(nn.Sequential(nn.Linear(4, 3), nn.ELU()), "he")
        >>> bool((net[0].bias == 0).all())
        True
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            init_weight_(layer.weight, scheme, distribution, mode, std)
            if layer.bias is not None and scheme != "torch":
                nn.init.zeros_(layer.bias)
    return module
