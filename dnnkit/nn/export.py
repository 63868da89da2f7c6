"""Inference models: a trained network saved folded and in eval mode, for fast predictions.

:func:`save_inference_model` writes two files into a folder:

- ``model.pt``: a plain dict that ``torch.load(path, weights_only=True)`` reads:
  ``{"format", "config", "state_dict", "meta"}``. ``config`` is the model's constructor call in
  JSON-able form (``{"_target_": "dnnkit.nn.MLP", "hidden": [300, 200], ...}``), ``state_dict``
  holds the *folded* weights, ``meta`` whatever the caller wants to keep beside them (input
  scaling, class names, the test accuracy). :func:`load_inference_model` rebuilds the model
  from ``config``, folds it the same way (so the layer structure matches) and loads the weights.
- ``model.pt2``: the folded network as a ``torch.export`` program with a dynamic batch size,
  loadable without dnnkit: ``torch.export.load("model.pt2").module()``. TorchScript
  (``torch.jit.trace``/``script``) is deprecated in torch 2.14 (``FutureWarning``: "switch to
  torch.compile or torch.export"), so this replaces a ``.ts`` file.
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.nn.fold import fold_batchnorm

log = logging.getLogger(__name__)

FORMAT = "dnnkit.inference_model/1"


def _json_able(what: str, value) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise DnnkitError(f"{what} must be JSON-able (numbers, strings, lists, dicts), got {value!r}: {err}") from None


def _model_class(target) -> type[nn.Module]:
    if not isinstance(target, str) or "." not in target:
        raise DnnkitError(f"config['_target_'] must be a dotted class path such as 'dnnkit.nn.MLP', got {target!r}")
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise DnnkitError(f"cannot import the model class {target!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DnnkitError(f"config['_target_'] must name an nn.Module class, got {target!r}")
    return cls


def build_model(config: dict) -> nn.Module:
    """``cls(**kwargs)`` from a ``{"_target_": "pkg.Class", **kwargs}`` dict (no nested targets)."""
    if not isinstance(config, dict) or "_target_" not in config:
        raise DnnkitError(f"a model config is a dict with a '_target_' class path, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    nested = [k for k, v in kwargs.items() if isinstance(v, dict) and "_target_" in v]
    if nested:
        raise DnnkitError(f"model config arguments {nested} hold nested '_target_' objects; only plain values are supported")
    return _model_class(config["_target_"])(**kwargs)


@torch.no_grad()
def save_inference_model(
    model: nn.Module,
    folder: str | Path,
    config: dict,
    example_input: torch.Tensor | None = None,
    meta: dict | None = None,
) -> dict[str, Path]:
    """Fold ``model`` and save it as ``folder/model.pt`` (and ``folder/model.pt2`` when
    ``example_input`` is given); return the paths written.

    ``config`` must rebuild ``model``'s architecture: ``build_model(config)`` gives a model with
    the same state_dict keys. The model is copied to the CPU; the original is not touched.

    Example::

        >>> import tempfile
        >>> from dnnkit.nn import MLP
        >>> config = {"_target_": "dnnkit.nn.MLP", "hidden": [30], "batch_norm": True}
        >>> net = build_model(config).eval()
        >>> folder = tempfile.mkdtemp()
        >>> sorted(save_inference_model(net, folder, config, torch.zeros(2, 1, 28, 28)))
        ['model.pt', 'model.pt2']
        >>> fast = load_inference_model(f"{folder}/model.pt")
        >>> x = torch.rand(3, 1, 28, 28)
        >>> torch.allclose(fast(x), net(x), atol=1e-5)
        True
    """
    _json_able("config", config)
    _json_able("meta", meta or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    folded = fold_batchnorm(model).cpu()
    written = {}
    payload = {"format": FORMAT, "config": config, "state_dict": folded.state_dict(), "meta": meta or {}}
    torch.save(payload, folder / "model.pt")
    written["model.pt"] = folder / "model.pt"
    if example_input is not None:
        x = example_input.detach().cpu()
        x = x[:2] if len(x) >= 2 else torch.cat([x, x])  # a batch of 2 keeps the batch dimension symbolic
        program = torch.export.export(folded, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, folder / "model.pt2")
        written["model.pt2"] = folder / "model.pt2"
    return written


def load_inference_model(path: str | Path) -> nn.Module:
    """The folded eval-mode model saved by :func:`save_inference_model`, read with
    ``weights_only=True``. Its ``inference_meta`` attribute holds the saved ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise DnnkitError(f"inference model {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DnnkitError(f"cannot load {str(path)!r} with weights_only=True: {first}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DnnkitError(f"{str(path)!r} is not a dnnkit inference model (format {found!r}, expected {FORMAT!r})")
    model = fold_batchnorm(build_model(data["config"]), inplace=True, warn=False)
    model.load_state_dict(data["state_dict"])
    model.inference_meta = data.get("meta", {})
    return model.eval()
