"""``LastCheckpoint``: ``last.ckpt`` every N seconds (or N optimizer steps) and at the end of every
epoch, so that a run killed at any moment resumes (``resume=true`` / ``ckpt_path=last``) from at
most that far back, and a finished run's ``last.ckpt`` always holds its final weights.

Seconds are the default because a step-count fits only one model: 100 steps are a minute of a
large network and a third of a second of the mnist_bn MLP, which would then spend ~3% of its
time writing checkpoints (each ~5 ms on this CPU).

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it also writes a
top-k checkpoint, so a run whose best epoch is not its last ends with an older ``last.ckpt``;
and its ``every_n_train_steps`` excludes ``every_n_epochs``. This subclass does both and keeps
everything else (writes on rank 0 only, atomic writes, its place after the other callbacks so
their states are current when it saves).
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from dnnkit.callbacks.checkpoint import CachedStateKey, ConfinedState
from dnnkit.errors import number


class LastCheckpoint(ConfinedState, CachedStateKey, ModelCheckpoint):
    """Write ``<dirpath>/last.ckpt`` mid-epoch when ``every_n_seconds`` have passed since the last
    write or every ``every_n_train_steps`` steps, and at each epoch end.

    Args:
        every_n_seconds: seconds of training between mid-epoch saves (``None``: not by time).
        every_n_train_steps: optimizer steps between mid-epoch saves (0: not by steps).
        dirpath: the folder; default the trainer's ``<log_dir>/checkpoints``, like ModelCheckpoint.

    Example::

        >>> import tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> class Killed(L.Callback):  # stands in for a kill -9 at step 5
        ...     def on_train_batch_end(self, trainer, *args):
        ...         if trainer.global_step == 5:
        ...             raise RuntimeError("killed at step 5")
        >>> root = tempfile.mkdtemp()
        >>> def trainer(*callbacks):
        ...     return L.Trainer(max_steps=8, callbacks=[LastCheckpoint(every_n_train_steps=2), *callbacks], logger=False,
        ...                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
        >>> model = Classifier(MLP(784, [8], 10))
        >>> trainer(Killed()).fit(model, TensorLoader(x, y, 8))           # killed at step 5 ...
        Traceback (most recent call last):
            ...
        RuntimeError: killed at step 5
        >>> torch.load(f"{root}/checkpoints/last.ckpt", weights_only=False)["global_step"]
        4
        >>> resumed = trainer()
        >>> resumed.fit(model, TensorLoader(x, y, 8), ckpt_path="last")  # ... goes on from step 4
        >>> resumed.global_step
        8
    """

    def __init__(self, every_n_seconds: float | None = 60.0, every_n_train_steps: int = 0, dirpath: str | None = None) -> None:
        number("every_n_train_steps", every_n_train_steps, 0, integer=True)
        number("every_n_seconds", every_n_seconds, 0, optional=True)
        super().__init__(
            dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )
        self.every_n_seconds = every_n_seconds
        self._saved_at = time.monotonic()

    def _save_last_now(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._saved_at = time.monotonic()

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._saved_at = time.monotonic()

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.is_last_batch:
            # the epoch-end save follows validation. A save now would also stop that one (same
            # global step), and a resume from it would take the epoch, unvalidated, for finished.
            return
        n = self._every_n_train_steps
        due = bool(n) and trainer.global_step % n == 0
        if not due and self.every_n_seconds is not None:
            due = time.monotonic() - self._saved_at >= self.every_n_seconds
            if trainer.world_size > 1:  # rank 0's clock decides: every rank takes part in a save
                due = trainer.strategy.broadcast(due)
        if due:
            self._save_last_now(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_now(trainer)  # validation has run: the epoch's metrics and callback states are in

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass
