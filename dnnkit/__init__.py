"""dnnkit: training deep networks well, as PyTorch Lightning parts.

Three ways in: ``python -m dnnkit.train +recipe=NAME``; subclass :class:`Classifier`; or put
dnnkit's callbacks into your own ``Trainer``.

The top-level names are imported lazily, so ``import dnnkit.nn`` (plain PyTorch) loads no
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dnnkit import console as _console  # noqa: F401  (sets up the `dnnkit` logger)
from dnnkit.errors import DnnkitError

if TYPE_CHECKING:
    from dnnkit.modules import Classifier

__version__ = "0.1.0"
__all__ = ["Classifier", "DnnkitError", "__version__"]

_LAZY = {"Classifier": "dnnkit.modules"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
