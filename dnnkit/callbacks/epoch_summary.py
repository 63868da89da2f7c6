"""``EpochSummary``: one line per epoch with the logged metrics, and a history to plot."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

log = logging.getLogger(__name__)


class EpochSummary(L.Callback):
    """Print ``epoch  3/20  train/loss 0.1234  val/loss 0.0987  val/acc 0.9712  (2.1 s)`` at the
    end of each training epoch (after its validation), above the progress bar, and keep the rows in
    :attr:`history`. The lines go to the ``dnnkit`` logger (:mod:`dnnkit.console`): stdout by
    default, and ``train.log`` under ``python -m dnnkit.train``.

    Works on any LightningModule: it reads ``trainer.callback_metrics``.

    Args:
        keys: metric keys to show, in order; ``None`` shows every epoch-level metric.
        verbose: print the lines (the history is kept either way).

    Example::

        >>> import tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> summary = EpochSummary(keys=["train/loss", "val/acc"])
        >>> trainer = L.Trainer(max_epochs=2, callbacks=[summary], logger=False, enable_progress_bar=False,
        ...                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(Classifier(MLP(784, [8], 10)), TensorLoader(x, y, 16), TensorLoader(x, y, 64))  # doctest: +ELLIPSIS
        epoch 1/2  train/loss ...  val/acc ...  (... s)
        epoch 2/2  train/loss ...  val/acc ...  (... s)
        >>> len(summary.history), sorted(summary.history[-1])
        (2, ['epoch', 'train/loss', 'val/acc', 'val/loss'])
    """

    def __init__(self, keys: list[str] | None = None, verbose: bool = True) -> None:
        self.keys = list(keys) if keys else None
        self.verbose = verbose
        self.history: list[dict[str, float]] = []
        self._start = time.perf_counter()

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # validation has run by now and the epoch means of step metrics are computed
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and not k.endswith("_step")}
        metrics = {k.removesuffix("_epoch"): v for k, v in metrics.items()}
        row = {"epoch": trainer.current_epoch + 1, **metrics}
        self.history.append(row)
        self._print(trainer, row)

    @rank_zero_only
    def _print(self, trainer: L.Trainer, row: dict[str, float]) -> None:
        if not self.verbose:
            return
        keys = self.keys or sorted(k for k in row if k != "epoch")
        bounded = trainer.max_epochs is not None and trainer.max_epochs > 0  # not with max_steps alone (-1)
        width = len(str(trainer.max_epochs)) if bounded else 3
        parts = [f"epoch {row['epoch']:>{width}}" + (f"/{trainer.max_epochs}" if bounded else "")]
        parts += [f"{k} {row[k]:.4f}" for k in keys if k in row and math.isfinite(row[k])]
        parts.append(f"({time.perf_counter() - self._start:.1f} s)")
        log.info("%s", "  ".join(parts))

    @override
    def state_dict(self) -> dict:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
