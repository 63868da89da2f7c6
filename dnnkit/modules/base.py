"""``DnnkitModule``: the LightningModule dnnkit's modules derive from."""

from __future__ import annotations

import lightning as L

from dnnkit.schedules import lightning_scheduler


class DnnkitModule(L.LightningModule):
    """A ``LightningModule`` whose per-step bookkeeping costs less; nothing else changes.

    Lightning records the hook it is in (``module._current_fx_name = "training_step"``, and back)
    around every module hook and every callback hook: ~45 writes per training step. Each goes
    through ``nn.Module.__setattr__`` (its parameter, buffer and submodule checks, ~2.5 us on this
    2-core CPU), ~0.13 ms per step, 5% of the mnist_bn network's step (``python -m bench.speed``).
    The value is a string, never a parameter, buffer or submodule, so this class stores it
    directly, which is where ``nn.Module.__setattr__`` puts it too.
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def require_last_epoch(self, why: str = "") -> None:
        """Refuse a checkpoint callback that keeps a "best" epoch, for a module whose result is
        its last one (the pretrainers); ``why`` is added to the message."""
        from dnnkit.errors import DnnkitError

        ckpt = self.trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "monitor", None) is not None:
            raise DnnkitError(
                f"{type(self).__name__}'s result is its last epoch, but the checkpoint callback monitors "
                f"{ckpt.monitor!r}{why}: set callbacks.checkpoint.monitor=null"
            )

    def with_scheduler(self, optimizer):
        """What ``configure_optimizers`` returns for ``optimizer``: the optimizer alone, or with the
        scheduler that ``self.scheduler_factory`` makes (:func:`dnnkit.schedules.lightning_scheduler`;
        ``monitor`` defaults to ``val/loss``)."""
        if getattr(self, "scheduler_factory", None) is None:
            return optimizer
        scheduler = lightning_scheduler(self.scheduler_factory, optimizer, self._trainer)
        scheduler.setdefault("monitor", "val/loss")
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
