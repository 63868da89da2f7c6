"""ONNX export: ``model.onnx`` converted from a stage's ``model.pt2`` and checked against it.

``export.onnx=true`` (``pip install 'dnnkit[onnx]'``: onnx, onnxruntime, onnxscript) makes every
exporting stage write ``model.onnx`` beside ``model.pt`` and ``model.pt2``: the same folded
network, converted by ``torch.onnx.export(dynamo=True)`` from the ``torch.export`` program, with
a dynamic batch size (input ``images``, output ``logits``). Before it is written, onnxruntime
runs it on a batch of one and on a larger batch of the stage's test images; the logits must
match ``model.pt2``'s to ``ATOL`` (1e-5), else nothing is written and the export says why.

The ``export`` key is a bool or a dict (:func:`export_options`)::

    >>> export_options(True), export_options(False), export_options({"model": True, "onnx": True})
    ((True, False), (False, False), (True, True))
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from dnnkit.errors import DnnkitError
from dnnkit.io import atomic_write

log = logging.getLogger(__name__)

ATOL = 1e-5
PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # the [onnx] extra; torch.onnx.export(dynamo=True) needs onnxscript
EXPORT_KEYS = ("model", "onnx")
QUIET = ("onnxscript", "onnx_ir")


def export_options(value) -> tuple[bool, bool]:
    """``(model, onnx)`` from the config's ``export``: ``true``/``false`` (model.pt and model.pt2,
    or nothing) or ``{model: bool, onnx: bool}`` (``export.onnx=true`` on the command line).

    Example::

        >>> export_options({"model": False, "onnx": True})
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: export.onnx=true needs export.model=true: model.onnx is converted from model.pt2
    """
    if isinstance(value, bool):
        return value, False
    if isinstance(value, Mapping) and set(value) <= set(EXPORT_KEYS) and all(isinstance(value.get(k, False), bool) for k in value):
        model, onnx = bool(value.get("model", True)), bool(value.get("onnx", False))
        if onnx and not model:
            raise DnnkitError("export.onnx=true needs export.model=true: model.onnx is converted from model.pt2")
        return model, onnx
    shown = dict(value) if isinstance(value, Mapping) else value
    raise DnnkitError(f"export must be true, false or {{model: true|false, onnx: true|false}}, got {shown!r}")


def missing_packages() -> list[str]:
    """The packages of the ``[onnx]`` extra that are not installed."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


def check_onnx_export(value) -> None:
    """Before training: ``export`` is valid and, with ``onnx``, its packages are installed."""
    _, onnx = export_options(value)
    missing = missing_packages()
    if onnx and missing:
        raise DnnkitError(f"export.onnx=true needs {', '.join(missing)} (not installed): pip install 'dnnkit[onnx]'")


def onnx_session(data: bytes | str | Path):
    """An onnxruntime CPU session over an ONNX model (bytes or a file)."""
    import onnxruntime

    source = data if isinstance(data, bytes) else str(data)
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def run_onnx(session, x: torch.Tensor) -> torch.Tensor:
    """The session's first output on ``x`` (a float batch), as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])


def onnx_difference(session, program: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[float, int]:
    """The largest ``|onnx - program|`` over ``batches``, and the batch size where it was."""
    worst, where = 0.0, 0
    for x in batches:
        with torch.no_grad():
            expected = program(x)
        diff = float((run_onnx(session, x) - expected).abs().max()) if x.numel() else 0.0
        if diff > worst or not where:
            worst, where = diff, len(x)
    return worst, where


def check_batches(example: torch.Tensor) -> list[torch.Tensor]:
    """A batch of one and one of up to 64 (never 2, the size the program was traced with)."""
    x = example.detach().cpu().float()
    big = x[:64] if len(x) >= 3 else torch.cat([x] * 3)[:3]
    return [x[:1], big]


def convert(program, x: torch.Tensor) -> bytes:
    """A ``torch.export`` program as ONNX bytes (input ``images``, output ``logits``, batch dynamic)."""
    quiet = [logging.getLogger(name) for name in QUIET]  # their optimizer passes say "Removed 4 unused nodes" at INFO
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        onnx_program = torch.onnx.export(
            program, (x,), dynamo=True, verbose=False, input_names=["images"], output_names=["logits"], dynamic_shapes=({0: "batch"},)
        )
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return onnx_program.model_proto.SerializeToString()


def save_onnx(folder: str | Path, example: torch.Tensor, atol: float = ATOL) -> Path:
    """Convert ``folder/model.pt2`` (written by :func:`dnnkit.nn.export.save_inference_model`)
    to ``folder/model.onnx``; write it only if onnxruntime's logits match the program's to
    ``atol`` on a batch of one and on a larger batch of ``example`` (inputs as the model takes
    them). Raises a :class:`DnnkitError` saying why otherwise. Usage (tests/test_onnx.py runs it;
    a conversion takes seconds, too long for a docstring example)::

        save_inference_model(net, folder, config, x[:2])   # model.pt, model.pt2
        save_onnx(folder, x)                                # model.onnx, or an error saying why not
    """
    folder = Path(folder)
    missing = missing_packages()
    if missing:
        raise DnnkitError(f"cannot write model.onnx: {', '.join(missing)} not installed (pip install 'dnnkit[onnx]')")
    pt2 = folder / "model.pt2"
    if not pt2.is_file():
        raise DnnkitError(f"cannot write model.onnx: {str(pt2)!r} does not exist")
    program = torch.export.load(str(pt2))  # our own file, written just before: see docs/export.md, "Loading safely"
    batches = check_batches(example)
    data = convert(program, batches[1][:2])
    worst, size = onnx_difference(onnx_session(data), program.module(), batches)
    if not worst <= atol:
        raise DnnkitError(
            f"model.onnx was not written: its logits differ from model.pt2's by {worst:.3g} on a batch of {size} (tolerance {atol:g})"
        )
    atomic_write(folder / "model.onnx", data)
    log.info("model.onnx: matches model.pt2 to %.1e on batches of %s", worst, " and ".join(str(len(b)) for b in batches))
    return folder / "model.onnx"
