"""``EarlyStopping``: Lightning's, also resuming exactly from a checkpoint written after it stopped;
and the preflight's check that its ``monitor`` is a key something logs."""

from __future__ import annotations

import lightning as L
from hydra.utils import get_object
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from typing_extensions import override

from dnnkit.errors import DnnkitError


class EarlyStopping(LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` (same arguments, same counting). Its state is in every
    checkpoint, so a fit resumed mid-run continues the count; a fit resumed from the checkpoint
    of the epoch at which it stopped (killed before the run recorded the fit) ends there, where
    Lightning's would train another epoch (``trainer.should_stop`` is not saved)."""

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path and self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            trainer.should_stop = True


def stopped_early(callbacks) -> bool:
    """Whether an early-stopping callback among ``callbacks`` ended the fit."""
    return any(isinstance(c, LightningEarlyStopping) and c.stopping_reason != EarlyStoppingReason.NOT_STOPPED for c in callbacks)


def _class(cb) -> type | None:
    try:
        return get_object(cb["_target_"]) if isinstance(cb, dict) and isinstance(cb.get("_target_"), str) else None
    except Exception:  # noqa: BLE001 - instantiating it reports what is wrong
        return None


def check_monitor(name: str, cb: dict, spec: dict, fit_keys: list[str]) -> None:
    """An early-stopping callback (``strict``, Lightning's default) whose ``monitor`` neither the
    module (``fit_keys``) nor a callback of the stage (a ``logged_keys`` class attribute) logs
    would fail at the first validation: one error before training, listing the keys."""
    target = _class(cb)
    if not (isinstance(target, type) and issubclass(target, LightningEarlyStopping)) or not cb.get("strict", True):
        return
    declared = [k for c in (spec.get("callbacks") or {}).values() for k in getattr(_class(c), "logged_keys", None) or ()]
    monitor = cb.get("monitor")
    if monitor not in {*fit_keys, *declared}:
        raise DnnkitError(f"callbacks.{name}.monitor={monitor!r} is never logged while fitting, so early stopping could "
                          f"never decide; valid: {', '.join(sorted({*fit_keys, *declared}))} (or strict: false)")
