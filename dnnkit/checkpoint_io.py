"""``AtomicCheckpointIO``: Lightning's checkpoint writer, atomic (see :mod:`dnnkit.io`).

Lightning's ``TorchCheckpointIO`` truncates ``last.ckpt`` and then writes it: a kill or a full
disk in between leaves a 0-byte or cut-short file where the previous good checkpoint was, and
the run cannot resume. This one writes a temporary file in the same folder, fsyncs and renames;
a failed write keeps the previous checkpoint and says so in one line. ``python -m dnnkit.train``
uses it for every Trainer; in your own: ``Trainer(plugins=[AtomicCheckpointIO()])``.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from dnnkit.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` is atomic on a local filesystem."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
