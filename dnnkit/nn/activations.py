"""Activations by name, with their parameters.

``make_activation("leaky_relu", negative_slope=0.2)`` returns an ``nn.Module``. Notes that
trip people up:

* ``rrelu`` draws each slope from U(lower, upper) in training and uses the fixed slope
  (lower + upper) / 2 in eval mode (``nn.RReLU`` does this; the functional ``F.rrelu``
  defaults to ``training=False`` and would never randomise).
* ``selu`` only self-normalises with LeCun-normal init, standardised inputs, no batch norm and
  no plain dropout (use alpha dropout); :func:`default_init` picks LeCun for it.
* ``prelu`` learns its slope (one per layer by default, ``num_parameters`` for one per unit).
"""

from __future__ import annotations

from torch import nn

from dnnkit.errors import DnnkitError, choose

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "rrelu": nn.RReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "prelu": nn.PReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}

# The init that keeps each activation's signal variance steady (book, table 11-1).
_INIT_FOR = {"selu": "lecun", "sigmoid": "xavier", "tanh": "xavier", "identity": "xavier"}


def make_activation(name: str, **kwargs) -> nn.Module:
    """Build the activation ``name`` with its keyword parameters.

    Example::

        >>> make_activation("elu", alpha=1.0)
        ELU(alpha=1.0)
    """
    cls = ACTIVATIONS[choose("activation", name, ACTIVATIONS)]
    if name == "rrelu" and kwargs.get("lower", 1 / 8) > kwargs.get("upper", 1 / 3):
        raise DnnkitError(f"rrelu needs lower <= upper (slopes are drawn from U(lower, upper)), got {kwargs!r}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise DnnkitError(f"bad parameters {kwargs!r} for activation {name!r}: {err}") from None


def default_init(activation: str) -> str:
    """He for the ReLU family and ELU, LeCun for SELU, Xavier for sigmoid and tanh."""
    return _INIT_FOR.get(choose("activation", activation, ACTIVATIONS), "he")
