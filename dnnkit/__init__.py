"""dnnkit: training deep networks well, as PyTorch Lightning parts.

Three ways in: ``python -m dnnkit.train +recipe=NAME``; subclass :class:`Classifier`; or put
dnnkit's callbacks into your own ``Trainer``.
"""

from dnnkit.errors import DnnkitError
from dnnkit.modules import Classifier

__version__ = "0.1.0"
__all__ = ["Classifier", "DnnkitError", "__version__"]
