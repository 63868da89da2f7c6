"""The loggers of a stage (``logger=csv|tensorboard|mlflow|wandb``, several at once with
``logger=[csv,tensorboard]``; docs/tracking.md), built by :func:`build_loggers` in the run folder.

``conf/logger/<name>.yaml`` puts its logger under its own key (``logger.csv``, ``logger.mlflow``),
so a list of options composes one entry per logger, as ``conf/callbacks/`` does for callbacks. A
location its config leaves null is the run folder's (:func:`placement`), and a logger is given
only the arguments its constructor takes. A logger whose package is missing is one error naming
the extra to install (:func:`check_loggers`, called by the preflight).

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a run
resumed with ``resume=true`` lost every epoch before the interruption. :class:`CSVLogger` keeps
the file: when the fit restarts at step *s* (the checkpoint's), it drops the rows of steps at or
after *s* (they are about to be logged again) and appends to the rest.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import io
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.utils import get_class
from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger, MLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf
from typing_extensions import override

from dnnkit.build import instantiate
from dnnkit.errors import DnnkitError
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


# ----------------------------------------------------------------------------- TensorBoard, W&B


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` (same arguments, same files) whose hparams tab compares runs
    on the metrics they log: :meth:`log_hyperparams` without metrics declares ``hparams_metrics``
    (``val/acc``, ...) as the tab's columns, and TensorBoard reads their values from the run's own
    scalars, instead of logging a placeholder ``hp_metric`` of -1 (``default_hp_metric``)."""

    def __init__(self, *args, hparams_metrics: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hparams_metrics = list(hparams_metrics or [])

    @override
    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        super().log_hyperparams(params, metrics, step)
        if metrics is not None or not self.hparams_metrics:
            return
        if _TENSORBOARD_AVAILABLE:
            from torch.utils.tensorboard.summary import hparams
        else:
            from tensorboardX.summary import hparams
        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        writer = self.experiment._get_file_writer()  # as Lightning's own log_hyperparams writes them
        for summary in hparams(flat, dict.fromkeys(self.hparams_metrics, 0.0)):  # only the keys are read
            writer.add_summary(summary, step)


_WANDB_RUNS: set[str] = set()  # ids of the runs dnnkit's WandbLoggers started in this process
_WANDB_DIRS: dict[str, str] = {}  # the folders dnnkit pointed wandb's own files to (not the user's)


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` (same arguments) with one wandb run per stage, all its files in
    the run folder: Lightning would log a later stage (or sweep job) into the run an earlier one
    left open, so a run started here is finished before the next one starts; and wandb's service
    logs (``WANDB_CACHE_DIR``, ``WANDB_DATA_DIR``, else under ``~/.cache``) go to
    ``<save_dir>/wandb/`` unless the environment names other folders (dnnkit's own earlier
    choice does not count: the next stage's folder replaces it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # wandb warns that the setting has no effect
            self._wandb_init.pop("anonymous", None)
        root = Path(self.save_dir or ".")
        for variable, folder in (("WANDB_CACHE_DIR", root), ("WANDB_DATA_DIR", root / "wandb" / "data")):  # <root>/wandb/logs
            if os.environ.get(variable) in (None, _WANDB_DIRS.get(variable)):
                os.environ[variable] = _WANDB_DIRS[variable] = str(folder)

    @property
    @override
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            import wandb

            if wandb.run is not None and getattr(wandb.run, "id", None) in _WANDB_RUNS:
                wandb.finish()
            _WANDB_RUNS.add(getattr(LightningWandbLogger.experiment.fget(self), "id", None))
        return self._experiment


# ----------------------------------------------------------------------------- building a stage's loggers

# logger class -> (extra of dnnkit's pyproject.toml, modules any one of which it needs)
EXTRAS = ((LightningTensorBoardLogger, "tensorboard", ("tensorboard", "tensorboardX")),
          (MLFlowLogger, "mlflow", ("mlflow",)), (LightningWandbLogger, "wandb", ("wandb",)))


def logger_specs(config) -> dict[str, dict]:
    """``{key: spec}`` of the ``logger`` config: one entry per logger (``logger=[csv,tensorboard]``
    composes ``{csv: {...}, tensorboard: {...}}``), a null entry switched off; a lone ``{_target_:
    ...}`` (a config from before several loggers) is one logger."""
    if config is None:
        return {}
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config
    if not isinstance(config, dict):
        raise DnnkitError(f"logger must map names to loggers, e.g. {{csv: {{_target_: dnnkit.loggers.CSVLogger}}}}, got {config!r}")
    if "_target_" in config:
        return {"logger": config}
    for key, spec in config.items():
        if spec is not None and not (isinstance(spec, dict) and isinstance(spec.get("_target_"), str)):
            raise DnnkitError(f"logger.{key} must be a logger's config with a _target_ (or null), got {spec!r}")
    return {key: spec for key, spec in config.items() if spec is not None}


def logger_class(key: str, spec: dict) -> type:
    """The class ``spec`` names, once the package it needs is known to be installed."""
    try:
        cls = get_class(spec["_target_"])
    except Exception as err:  # noqa: BLE001 - Hydra's error names the module it tried
        raise DnnkitError(f"logger.{key}._target_={spec['_target_']!r} is not a class: {str(err).splitlines()[0]}") from None
    for base, extra, modules in EXTRAS:
        if issubclass(cls, base) and not any(importlib.util.find_spec(m) for m in modules):
            raise DnnkitError(f"logger.{key} ({cls.__name__}) needs the {modules[0]} package: pip install 'dnnkit[{extra}]'")
    return cls


def check_loggers(config) -> None:
    """Before training: every logger of ``config`` names a class whose package is installed."""
    for key, spec in logger_specs(config).items():
        logger_class(key, spec)


def constructor_arguments(cls: type) -> tuple[set[str], bool]:
    """The named arguments of ``cls``'s constructor, following ``**kwargs`` up its base classes,
    and whether it takes any other keyword too (``WandbLogger`` passes them to ``wandb.init``)."""
    names: set[str] = set()
    for klass in (c for c in cls.__mro__ if "__init__" in vars(c)):
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False
    return names, True


def placement(cls: type, stage_dir: Path, run_dir: Path, label: str, spec: dict | None = None) -> dict:
    """Where a logger of ``cls`` writes when its config (``spec``) leaves it null: the stage's
    folder (MLflow: ``spec``'s ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a store in
    ``<run folder>/mlruns/``, one per run)."""
    if issubclass(cls, MLFlowLogger):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # else ~/.config/mlflow/telemetry.json
        if (spec or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"):  # a null would mean ./mlruns
            return {"tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"), "run_name": label}
        store = run_dir.resolve() / "mlruns"  # a database: MLflow 3 refuses new ./mlruns file stores
        store.mkdir(parents=True, exist_ok=True)
        return {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_location": str(store / "artifacts"), "run_name": label}
    if issubclass(cls, LightningWandbLogger):
        return {"save_dir": str(stage_dir), "name": label}
    if issubclass(cls, LightningTensorBoardLogger):
        return {"save_dir": str(stage_dir), "name": "tensorboard", "version": ""}
    if issubclass(cls, LightningCSVLogger):
        return {"save_dir": str(stage_dir), "name": "", "version": ""}
    return {"save_dir": str(stage_dir)}  # another logger: only where it writes


def build_loggers(config, stage_dir: Path, run_dir: Path, label: str) -> list[Logger]:
    """The loggers of ``config`` (``cfg.logger``) for one stage: what a config leaves null (or
    out) of ``save_dir``, ``name``, ``tracking_uri``, ... is :func:`placement`'s, each logger
    getting only the arguments its constructor takes."""
    loggers = []
    for key, spec in logger_specs(config).items():
        cls = logger_class(key, spec)
        takes, open_ended = constructor_arguments(cls)
        unknown = sorted(k for k in spec if not k.startswith("_") and k not in takes)
        if unknown and not open_ended:
            raise DnnkitError(f"logger.{key}: {cls.__name__} takes no argument {unknown[0]!r}; valid: {', '.join(sorted(takes))}")
        filled = {k: v for k, v in placement(cls, stage_dir, run_dir, label, spec).items() if k in takes and spec.get(k) is None}
        loggers.append(instantiate({**spec, **filled}, _convert_="all"))
    return loggers


def log_config(loggers: list[Logger], config: dict) -> None:
    """Log the stage's resolved ``config`` as every logger's hyperparameters (each flattens it as
    it needs: the CSV logger's ``hparams.yaml`` keeps it nested)."""
    for logger in loggers:
        logger.log_hyperparams(config)
