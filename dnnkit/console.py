"""dnnkit's one output channel: the ``dnnkit`` logger.

Every line dnnkit shows (stage headers, epoch lines, freezing notes, diagnoses, the results
table) is a ``logging`` record of a logger under ``dnnkit``. Out of the box that logger writes
the bare message to stdout through :class:`ConsoleHandler` (above a live progress bar, on rank 0
only), so callbacks in your own Trainer print their lines with no logging set up. Under
``python -m dnnkit.train``, :func:`route_to_root` hands dnnkit's and Lightning's records to the
handlers Hydra configures (``conf/hydra/job_logging/dnnkit.yaml``): the terminal and the run's
``train.log``, which so holds everything the terminal showed, with timestamps.

Example::

    >>> import logging
    >>> logging.getLogger("dnnkit").propagate   # until route_to_root() is called
    False
"""

from __future__ import annotations

import logging
import sys

ROOT = "dnnkit"
# Lightning says these once per Trainer; dnnkit builds one Trainer per stage and seed.
ONCE_PER_RUN = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Restoring states from the checkpoint path at",
    "Restored all states from the checkpoint at",
    "Loaded model weights from the checkpoint at",
)


def _rank() -> int:
    rank_zero_only = getattr(sys.modules.get("lightning_utilities.core.rank_zero"), "rank_zero_only", None)
    return int(getattr(rank_zero_only, "rank", 0) or 0)


class RankZero(logging.Filter):
    """Pass records only in the process of global rank 0 (every record outside DDP)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _rank() == 0


class OncePerRun(logging.Filter):
    """Pass only the first record starting with each of ``prefixes``; others always pass."""

    def __init__(self, prefixes: tuple[str, ...] = ONCE_PER_RUN) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        prefix = next((p for p in self.prefixes if message.startswith(p)), None)
        if prefix is None:
            return True
        if prefix in self.seen:
            return False
        self.seen.add(prefix)
        return True


class ConsoleHandler(logging.StreamHandler):
    """Write records to the current ``sys.stdout`` with ``tqdm.write``, so a line lands above
    a progress bar instead of through it; a record with ``extra={"console": False}`` is for the
    log file only."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream)
        self._fixed_stream = stream is not None
        self.addFilter(RankZero())

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "console", True) is False:
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream if self._fixed_stream else sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)


def _own_logger() -> logging.Logger:
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def route_to_root() -> None:
    """Send dnnkit's and Lightning's records to the root logger's handlers (Hydra's terminal and
    ``train.log``) instead of their own; Lightning's device and checkpoint-restore lines once."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.propagate = True
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning = logging.getLogger(name)
        for handler in [h for h in lightning.handlers if type(h) is logging.StreamHandler]:
            lightning.removeHandler(handler)  # the ones Lightning adds at import
        lightning.propagate = True
    once = OncePerRun()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(once)
    logging.captureWarnings(True)  # warnings reach train.log too, formatted as Python prints them


_own_logger()
