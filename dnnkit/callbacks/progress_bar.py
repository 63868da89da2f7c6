"""``ProgressBar``: Lightning's TQDM bar, redrawn by time rather than every N steps."""

from __future__ import annotations

import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

from dnnkit.errors import number


class ProgressBar(TQDMProgressBar):
    """Lightning's ``TQDMProgressBar``, redrawn at most every ``min_interval`` seconds (and at the
    end of each bar), whatever the step time.

    A redraw (metrics read, formatted, written) costs ~0.25 ms on a 2-core CPU. Lightning's
    ``refresh_rate=N`` counts steps, which fits one model only: N=1 redraws after each of the
    mnist_bn MLP's ~2.6 ms steps, ~9% of its time, and N=50 leaves a large model's bar frozen for
    minutes.

    With ``tty_only`` (the default) the bar is drawn only when stdout is a terminal: output
    redirected to a file gets the epoch lines, not thousands of ``\\r`` frames.

    Example::

        >>> import tempfile, torch, lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> from dnnkit.modules import Classifier
        >>> from dnnkit.nn import MLP
        >>> x, y = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,))
        >>> bar = ProgressBar(min_interval=0.5)
        >>> trainer = L.Trainer(max_steps=4, callbacks=[bar], logger=False, enable_model_summary=False,
        ...                     enable_checkpointing=False, default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(Classifier(MLP(784, [8], 10)), TensorLoader(x, y, 16))
        >>> trainer.progress_bar_callback is bar, bar.is_enabled   # stdout is no terminal here: no bar drawn
        (True, False)
    """

    def __init__(self, min_interval: float = 0.5, process_position: int = 0, leave: bool = False, tty_only: bool = True) -> None:
        number("min_interval (seconds)", min_interval, 0)
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        self.min_interval = min_interval
        self.tty_only = tty_only
        self._drawn_at = -math.inf  # the first call draws, however long the machine has been up

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.tty_only and not sys.stdout.isatty():
            self.disable()

    @override
    def _should_update(self, current: int, total: int) -> bool:
        now = time.monotonic()
        if self.is_enabled and (current == total or now - self._drawn_at >= self.min_interval):
            self._drawn_at = now
            return True
        return False
