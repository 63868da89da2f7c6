"""``DnnkitModule``: the LightningModule dnnkit's modules derive from."""

from __future__ import annotations

import lightning as L
import torch


class DnnkitModule(L.LightningModule):
    """A ``LightningModule`` whose per-step bookkeeping costs less; nothing else changes.

    Lightning records the hook it is in (``module._current_fx_name = "training_step"``, and back)
    around every module hook and every callback hook: ~45 writes per training step. Each goes
    through ``nn.Module.__setattr__`` (its parameter, buffer and submodule checks, ~2.5 us on this
    2-core CPU), ~0.13 ms per step, 5% of the mnist_bn network's step (``python -m bench.speed``).
    The value is a string, never a parameter, buffer or submodule, so this class stores it
    directly, which is where ``nn.Module.__setattr__`` puts it too.

    On a CPU run, a batch of CPU tensors is passed on as it is: Lightning's default walks the
    batch to move each tensor where it already is.
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        if device.type == "cpu" and isinstance(batch, (tuple, list)) and all(
            isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in batch
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
