"""Confusion matrices: what a classifier mixes up, at test time and in ``python -m dnnkit.evaluate``.

:class:`ConfusionMetrics` gathers predictions with torchmetrics (``MulticlassAccuracy`` micro
and per class, ``MulticlassConfusionMatrix``) and summarises them (:meth:`ConfusionMetrics.summary`):
accuracy, per-class accuracy, the most-confused pairs and the matrix. :func:`save_confusion`
writes that as ``confusion.json`` and ``confusion.png`` (atomically).

:class:`SaveTestConfusion`, a callback the runner adds to every stage, keeps the logits the module
computes in its own ``test_step`` (a forward hook, removed after the test): the test-time matrix
costs no extra pass over the test set.

Example::

    >>> metrics = ConfusionMetrics(3, ["cat", "dog", "emu"])
    >>> metrics.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
    >>> s = metrics.summary("test")
    >>> s["accuracy"], s["per_class"][2]["accuracy"], s["most_confused"][0]["true"], s["matrix"][2]
    (0.75, 0.5, 'emu', [0, 1, 1])
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from typing_extensions import override

from dnnkit.io import atomic_write

log = logging.getLogger(__name__)

TOP_PAIRS = 5


class ConfusionMetrics(torch.nn.Module):
    """torchmetrics' accuracy (micro and per class) and confusion matrix over ``num_classes``;
    :meth:`update` takes logits ``(B, num_classes)`` or predicted classes ``(B,)``."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        names = list(class_names or [])
        self.class_names = names if len(names) == num_classes else [str(i) for i in range(num_classes)]
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")  # as dnnkit.Classifier logs test/acc
        self.per_class = MulticlassAccuracy(num_classes, average=None)
        self.matrix = MulticlassConfusionMatrix(num_classes)
        self.images = 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        preds = logits.argmax(1) if logits.dim() == 2 else logits
        for metric in (self.accuracy, self.per_class, self.matrix):
            metric.update(preds, target)
        self.images += len(target)

    def summary(self, split: str, **extra) -> dict:
        """What ``confusion.json`` holds: accuracy, per-class accuracy (None for a class with no
        image), the most-confused pairs (true, predicted, count, share of the true class's
        images), and the matrix (rows: true class, columns: predicted)."""
        matrix = self.matrix.compute().cpu().long()
        per_class = self.per_class.compute().cpu().tolist()
        support = matrix.sum(1).tolist()
        names = self.class_names
        rows = [{"index": i, "class": names[i], "images": int(n), "accuracy": float(a) if n else None}
                for i, (a, n) in enumerate(zip(per_class, support))]
        off = matrix.clone()
        off.fill_diagonal_(0)
        pairs = []
        for flat in torch.argsort(off.flatten(), descending=True, stable=True)[:TOP_PAIRS].tolist():
            t, p = divmod(flat, self.num_classes)
            count = int(off[t, p])
            if count:
                pairs.append({"true": names[t], "predicted": names[p], "count": count, "share": count / support[t]})
        return {"split": split, "images": int(matrix.sum()), "accuracy": float(self.accuracy.compute()),
                "classes": names, "per_class": rows, "most_confused": pairs, "matrix": matrix.tolist(), **extra}


def confusion_files(folder: str | Path, split: str = "test") -> tuple[Path, Path]:
    """``confusion.json``/``.png`` for the test split, ``confusion_<split>.json``/``.png`` for another.

    Example::

        >>> [p.name for p in confusion_files(".", "val")]
        ['confusion_val.json', 'confusion_val.png']
    """
    stem = "confusion" if split == "test" else f"confusion_{split}"
    return Path(folder) / f"{stem}.json", Path(folder) / f"{stem}.png"


def save_confusion(folder: str | Path, summary: dict, title: str = "", plot: bool = True) -> tuple[Path, Path]:
    """Write ``summary`` (:meth:`ConfusionMetrics.summary`) as JSON and, with ``plot``, its
    matrix as a PNG (:func:`plot_confusion` draws it later from the JSON)."""
    json_path, png_path = confusion_files(folder, summary["split"])
    atomic_write(json_path, json.dumps(summary, indent=1))
    if plot:
        _draw(png_path, summary, title)
    return json_path, png_path


def plot_confusion(folder: str | Path, split: str = "test") -> Path | None:
    """Draw ``confusion.png`` from ``confusion.json`` in ``folder`` where the JSON is there and
    the PNG not (or older); the PNG's path, or None when there was nothing to draw."""
    json_path, png_path = confusion_files(folder, split)
    if not json_path.is_file() or newer(png_path, json_path):
        return None
    _draw(png_path, json.loads(json_path.read_text()))
    return png_path


def newer(path: Path, than: Path) -> bool:
    """``path`` exists and was written no earlier than ``than``."""
    return path.is_file() and path.stat().st_mtime_ns >= than.stat().st_mtime_ns


def _draw(png_path: Path, summary: dict, title: str = "") -> None:
    from dnnkit.plots import save_confusion_plot

    heading = title or f"{summary['split']}: accuracy {summary['accuracy']:.4f} on {summary['images']} images"
    save_confusion_plot(png_path, torch.tensor(summary["matrix"]), summary["classes"], heading)


def pairs_text(summary: dict, limit: int = 3) -> str:
    """The most-confused pairs in one line: ``'4 -> 9' 12, '7 -> 2' 5``.

    Example::

        >>> pairs_text({"most_confused": [{"true": "4", "predicted": "9", "count": 12, "share": 0.1}]})
        '4 -> 9: 12'
    """
    return ", ".join(f"{p['true']} -> {p['predicted']}: {p['count']}" for p in summary["most_confused"][:limit]) or "-"


class SaveTestConfusion(L.Callback):
    """Save ``confusion.json`` and ``confusion.png`` of a classifier's test in ``folder``
    (``plot=False``: the JSON only; the runner draws the PNGs after the results table).

    The logits come from a forward hook on the LightningModule (its ``test_step`` calls
    ``self(x)``), the labels from the batch ``(x, y)``; a module whose outputs are not
    ``(B, num_classes)`` logits of the batch's labels gets no files. Under DDP each rank gathers
    what it tested and rank 0 writes its own (dnnkit's test loader gives every rank the whole split).
    """

    def __init__(self, folder: str | Path, plot: bool = True) -> None:
        self.folder = Path(folder)
        self.plot = plot
        self._hook = None
        self._logits: torch.Tensor | None = None
        self._metrics: ConfusionMetrics | None = None
        self._usable = True

    def _keep(self, module, args, output) -> None:
        self._logits = output if isinstance(output, torch.Tensor) else None

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._metrics, self._logits, self._usable = None, None, isinstance(getattr(pl_module, "num_classes", None), int)
        if self._usable:
            self._hook = pl_module.register_forward_hook(self._keep)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        logits, self._logits = self._logits, None
        if not self._usable:
            return
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) >= 2 else None
        n = pl_module.num_classes
        if (logits is None or not isinstance(y, torch.Tensor) or dataloader_idx != 0 or logits.dim() != 2
                or logits.shape != (len(y), n) or y.dim() != 1 or y.dtype.is_floating_point):
            self._usable = False
            log.info("no confusion.json: the module's outputs in test_step are not (batch, %s) logits of the batch's labels", n)
            return
        if self._metrics is None:
            names = list(getattr(trainer.datamodule, "class_names", None) or [])
            self._metrics = ConfusionMetrics(n, names).to(logits.device)
        self._metrics.update(logits.detach(), y)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        metrics, self._metrics = self._metrics, None
        if metrics is None or not self._usable or not trainer.is_global_zero:
            return
        try:  # files beside the stage's results: failing to draw them must not lose the stage
            save_confusion(self.folder, metrics.summary("test", checkpoint=str(trainer.ckpt_path or "")), plot=self.plot)
        except Exception as err:  # noqa: BLE001
            log.warning("could not save the test confusion matrix in %s: %s", self.folder, err)
