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

import json
import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from dnnkit.errors import DnnkitError
from dnnkit.io import atomic_torch_save, atomic_write_with
from dnnkit.nn.fold import fold_batchnorm

log = logging.getLogger(__name__)

FORMAT = "dnnkit.inference_model/1"


def _json_able(what: str, value) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise DnnkitError(f"{what} must be JSON-able (numbers, strings, lists, dicts), got {value!r}: {err}") from None


_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(cls: type[nn.Module], *names: str) -> type[nn.Module]:
    """Allow ``cls`` in model files under its dotted path (and ``names``). Only registered
    classes are ever built from a file: a ``_target_`` is looked up here, never imported.

    Example::

        >>> class Tiny(nn.Linear): ...
        >>> register_model(Tiny, "my_project.Tiny") is Tiny
        True
        >>> _model_class("my_project.Tiny") is Tiny
        True
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise DnnkitError(f"register_model takes an nn.Module class, got {cls!r}")
    for name in (f"{cls.__module__}.{cls.__qualname__}", *names):
        _REGISTRY[name] = cls
    return cls


def _dnnkit_models() -> None:
    from dnnkit.nn.cnn import CNN
    from dnnkit.nn.mlp import MLP
    from dnnkit.nn.zoo import ZooNet

    register_model(MLP, "dnnkit.nn.MLP")
    register_model(CNN, "dnnkit.nn.CNN")
    register_model(ZooNet, "dnnkit.nn.ZooNet")


def _model_class(target) -> type[nn.Module]:
    if "dnnkit.nn.MLP" not in _REGISTRY:
        _dnnkit_models()
    if not isinstance(target, str) or target not in _REGISTRY:
        raise DnnkitError(
            f"config['_target_'] must name an nn.Module class, got {target!r}: only registered model classes are built "
            f"from files, nothing is imported by name (known: {', '.join(sorted(_REGISTRY))}; "
            "dnnkit.nn.export.register_model adds your own)"
        )
    return _REGISTRY[target]


def build_model(config: dict, device: str | torch.device | None = None) -> nn.Module:
    """``cls(**kwargs)`` from a ``{"_target_": "pkg.Class", **kwargs}`` dict (no nested targets),
    ``cls`` a registered model class (:func:`register_model`); on ``device`` (``"meta"``: shapes
    only, no memory)."""
    if not isinstance(config, dict) or "_target_" not in config:
        raise DnnkitError(f"a model config is a dict with a '_target_' class path, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    nested = [k for k, v in kwargs.items() if isinstance(v, dict) and "_target_" in v]
    if nested:
        raise DnnkitError(f"model config arguments {nested} hold nested '_target_' objects; only plain values are supported")
    cls = _model_class(config["_target_"])
    if hasattr(cls, "standalone_config"):  # weights come from the file: never download or read others
        kwargs = cls.standalone_config(kwargs)
    try:
        with torch.device(device) if device is not None else _nothing():
            return cls(**kwargs)
    except DnnkitError:
        raise
    except (TypeError, ValueError) as err:
        raise DnnkitError(f"cannot build {config['_target_']} from the saved config: {err}") from None


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _check_shapes(model: nn.Module, state: dict, path: Path) -> None:
    """The saved tensors match the config's model, checked on the meta device before anything
    is allocated (a config can ask for far more memory than its file holds)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if expected.keys() != saved.keys():
        missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
        raise DnnkitError(f"{str(path)!r}: the weights do not fit the saved config (missing {missing[:5]}, unexpected {extra[:5]})")
    wrong = [f"{k}: {saved[k]} saved, {expected[k]} in the config's model" for k in expected if expected[k] != saved[k]]
    if wrong:
        raise DnnkitError(f"{str(path)!r}: the weights do not fit the saved config ({'; '.join(wrong[:3])})")


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
    atomic_torch_save(payload, folder / "model.pt")
    written["model.pt"] = folder / "model.pt"
    if example_input is not None:
        written["model.pt2"] = _save_program(folded, example_input, folder / "model.pt2")
    return written


def _save_program(folded: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    x = example_input.detach().cpu()
    # a batch of 2 keeps the batch dimension symbolic; cloned, because the program stores its
    # example input with the whole storage of a view (1,000 test images of a sliced batch)
    x = (x[:2] if len(x) >= 2 else torch.cat([x, x])).clone()
    program = torch.export.export(folded, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    atomic_write_with(path, lambda f: torch.export.save(program, f))
    return path


@torch.no_grad()
def save_program(folder: str | Path) -> Path:
    """Write ``folder/model.pt2`` from ``folder/model.pt``: the same folded network as a
    ``torch.export`` program, traced on zeros of the input shape ``model.pt`` keeps
    (``meta["input"]["shape"]``). The runner calls it after the results table, as tracing costs
    about a second a stage; a run stopped before it gets the file on ``resume=true``.

    Example::

        >>> import tempfile
        >>> config = {"_target_": "dnnkit.nn.MLP", "hidden": [30]}
        >>> folder = tempfile.mkdtemp()
        >>> _ = save_inference_model(build_model(config), folder, config, meta={"input": {"shape": [1, 28, 28]}})
        >>> save_program(folder).name
        'model.pt2'
    """
    folder = Path(folder)
    model = load_inference_model(folder / "model.pt")
    shape = (model.inference_meta.get("input") or {}).get("shape")
    if not shape:
        raise DnnkitError(f"{str(folder / 'model.pt')!r} does not record its input shape (meta['input']['shape'])")
    return _save_program(model, torch.zeros(2, *shape), folder / "model.pt2")


def load_inference_model(path: str | Path) -> nn.Module:
    """The folded eval-mode model saved by :func:`save_inference_model`, read with
    ``weights_only=True``. Its ``inference_meta`` attribute holds the saved ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise DnnkitError(f"inference model {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DnnkitError(f"cannot load {str(path)!r} with weights_only=True: {first}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        name, _, version = str(found).rpartition("/")
        if name == FORMAT.rpartition("/")[0] and version.isdigit() and int(version) > int(FORMAT.rpartition("/")[2]):
            raise DnnkitError(f"{str(path)!r} was made by a newer dnnkit (format {found!r}; this one reads {FORMAT!r}): upgrade dnnkit")
        raise DnnkitError(f"{str(path)!r} is not a dnnkit inference model (format {found!r}, expected {FORMAT!r})")
    if not isinstance(data.get("state_dict"), dict):
        raise DnnkitError(f"{str(path)!r} holds no state_dict")
    _check_shapes(fold_batchnorm(build_model(data["config"], device="meta"), inplace=True, warn=False), data["state_dict"], path)
    model = fold_batchnorm(build_model(data["config"]), inplace=True, warn=False)
    model.load_state_dict(data["state_dict"])
    model.inference_meta = data.get("meta", {})
    return model.eval()
