"""Loggers that survive a resume.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a run
resumed with ``resume=true`` lost every epoch before the interruption. :class:`CSVLogger` keeps
the file: when the fit restarts at step *s* (the checkpoint's), it drops the rows of steps at or
after *s* (they are about to be logged again) and appends to the rest.
"""

from __future__ import annotations

import csv
import io
import os

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from dnnkit.io import atomic_write


class _KeepingWriter(ExperimentWriter):
    """``ExperimentWriter`` that appends to an existing ``metrics.csv`` instead of deleting it."""

    @override
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def drop_from(self, step: int) -> int:
        """Remove the saved rows of steps >= ``step``; return how many went."""
        if not os.path.isfile(self.metrics_file_path):
            return 0
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if r.get("step") in (None, "") or int(float(r["step"])) < step]
        if len(kept) < len(rows):
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write(self.metrics_file_path, text.getvalue())
        return len(rows) - len(kept)


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` (same arguments, same files) that keeps ``metrics.csv`` across
    a resume; call :meth:`resumed_at` with the restored step (the runner does, at fit start).

    Example::

        >>> import tempfile
        >>> logger = CSVLogger(tempfile.mkdtemp(), name="", version="")
        >>> logger.log_metrics({"val/acc": 0.5}, step=9); logger.save()
        >>> CSVLogger(logger.save_dir, name="", version="").experiment.metrics_keys
        ['step', 'val/acc']
    """

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def resumed_at(self, step: int) -> None:
        """Forget the saved rows of steps >= ``step``: a resumed fit logs them again."""
        self.save()
        self.experiment.drop_from(step)
