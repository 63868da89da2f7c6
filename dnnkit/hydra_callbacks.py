"""Hydra callbacks (``hydra.callbacks`` in ``conf/config.yaml``): check the output folder before
Hydra writes to it, and end a ``-m`` sweep with one comparison table over its jobs.

``python -m dnnkit.train -m optimizer=sgd,adam`` runs one job per value, each with its own
results table in ``<sweep dir>/<job>/``; :class:`SweepTable` reads every job's
``results.json`` when the sweep ends, labels each row with the overrides that differ between
the jobs, prints one table and saves ``results.md`` / ``results.json`` in the sweep folder. It
reads files rather than in-memory results, so it works as well when the jobs ran elsewhere
(``hydra/launcher=submitit_slurm``) and only their folders are shared.

An optimizing sweep (``-m hparams_search=optuna``: a sweeper with a ``direction``) returns each
job's ``optimized_metric``; its table lists the jobs best first. The direction follows the
metric's name (:func:`metric_direction`: accuracies up, losses down) unless
``hydra.sweeper.direction`` is set. :func:`with_checked_choices` wraps the entry point: an
unknown ``logger=``/``hparams_search=`` option, or a missing plugin, is one line and exit 2.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import logging
import math
import re
import sys
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from dnnkit.errors import DnnkitError
from dnnkit.paths import check_name
from dnnkit.results import StageResult
from dnnkit.run_folder import RunLock, check_writable, launch_rank
from dnnkit.stages import config_dir

log = logging.getLogger(__name__)


class CheckOutputDir(Callback):
    """Before Hydra writes anything (it would fail with a traceback, or overwrite the stored config
    of the run being resumed), fail with one message and exit status 2 when ``name`` is not a plain
    file name, ``resume=true`` finds nothing to resume or changed settings (:func:`check_resume`),
    or the run or sweep folder cannot be written."""

    @staticmethod
    def _checked(*checks) -> None:
        """Run ``checks``; a DnnkitError is one line on stderr and exit status 2."""
        try:
            for check in checks:
                check()
        except DnnkitError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    @override
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        self._checked(
            lambda: check_name("name", OmegaConf.select(config, "name", default="train")),  # it names folders
            lambda: check_writable(run_dir),
            lambda: self._lock(run_dir),  # before check_resume reads, and Hydra writes, .hydra/config.yaml
            lambda: check_resume(config) if config.get("resume") else None,
        )

    def _lock(self, run_dir: Path) -> None:
        if launch_rank() == 0:  # DDP children run in the folder their rank 0 holds
            self.lock = RunLock(run_dir).__enter__()
            atexit.register(self.lock.__exit__)

    @override
    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.__exit__()

    @override
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._checked(
            lambda: check_name("name", OmegaConf.select(config, "name", default="train")),
            lambda: refuse_multirun_resume(config),
            lambda: sweep_direction(config),  # before the sweeper is built: its error would be Hydra's lines
            lambda: check_writable(Path(str(config.hydra.sweep.dir))),
        )


# Keys a resume may change: they do not shape what is trained (or, max_epochs, extend it).
RESUME_MAY_CHANGE = ("resume", "trainer.max_epochs", "trainer.enable_progress_bar", "trainer.enable_model_summary",
                     "trainer.log_every_n_steps", "logger", "callbacks.progress_bar", "callbacks.epoch_summary",
                     "optimized_metric")


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """``{"a.b": value}`` for every leaf of nested dicts (lists are leaves)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_resume(config: DictConfig) -> list[str]:
    """Before Hydra rewrites ``.hydra/config.yaml``: the folder to resume holds a run, and the new
    config differs from the stored one only in keys a resume may change (returned). Raising
    a finished run's ``trainer.max_epochs`` is refused: its stages would not train further."""
    run_dir = Path(str(config.hydra.run.dir))
    stored_file = run_dir / str(config.hydra.output_subdir or ".hydra") / "config.yaml"
    if not stored_file.is_file():
        chosen = any(str(o).startswith("hydra.run.dir=") for o in OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or [])
        if chosen:  # killed before anything was written: nothing to lose, start there
            log.info("resume: %s holds no earlier run; starting it there", run_dir)
            return []
        runs = sorted((p for p in run_dir.parent.glob("*/.hydra/config.yaml")), key=lambda p: p.stat().st_mtime)
        latest = f"; the latest run there is {runs[-1].parent.parent}" if runs else ""
        raise DnnkitError(
            f"resume=true, but {str(run_dir)!r} (a new folder) holds no run to resume: pass the folder of the run "
            f"with hydra.run.dir=...{latest}"
        )
    stored = flatten(OmegaConf.to_container(OmegaConf.load(stored_file), resolve=False))
    new = flatten({k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"})
    changed = sorted(k for k in stored.keys() | new.keys() if stored.get(k, "<unset>") != new.get(k, "<unset>"))
    allowed = [k for k in changed if any(k == a or k.startswith(a + ".") for a in RESUME_MAY_CHANGE)]
    refused = [k for k in changed if k not in allowed]
    if refused:
        shown = ", ".join(f"{k} ({stored.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r})" for k in refused[:6])
        raise DnnkitError(
            f"resume=true with settings that shape the run changed: {shown}; a resume may change only "
            f"{', '.join(RESUME_MAY_CHANGE[1:])}. Start a new run (another hydra.run.dir) to train with them"
        )
    done = sorted({str(p.parent.relative_to(run_dir)) for marker in ("result.json", "fit.json") for p in run_dir.glob(f"**/{marker}")})
    if "trainer.max_epochs" in allowed and done:
        raise DnnkitError(
            f"trainer.max_epochs changed ({stored['trainer.max_epochs']} -> {new['trainer.max_epochs']}) but {', '.join(done)} "
            "finished already and would not train further: raise max_epochs only while stages are unfinished, or start a new run"
        )
    for key in allowed:
        if key != "resume":
            log.info("resume: %s %r -> %r", key, stored.get(key, "<unset>"), new.get(key, "<unset>"))
    return allowed


def refuse_multirun_resume(config: DictConfig) -> None:
    """Hydra writes each sweep job's config before any check could compare it with the stored one."""
    if config.get("resume"):
        raise DnnkitError(
            "resume=true with -m is not supported: resume each job of the sweep in its own folder, "
            "python -m dnnkit.train <that job's overrides> resume=true hydra.run.dir=<sweep dir>/<job number> "
            "(an interrupted job prints this command)"
        )


def job_label(overrides: list[str], varying: set[str], short: bool = False) -> str:
    """The overrides of one job that differ between the sweep's jobs, e.g. ``optimizer=adam``;
    ``short``: each key by its last part where no other varying key ends the same (``lr=``), and a
    long number (``0.012345678``, as a sampler suggests) to 4 significant digits."""
    shown = [o for o in overrides if o.split("=", 1)[0] in varying]
    if short:
        ends = [k.rsplit(".", 1)[-1] for k in varying]
        shown = [_short(o, ends) for o in shown]
    return " ".join(shown) or " ".join(overrides) or "(defaults)"


LABEL_WIDTH = 40  # longer labels squeeze the table's metric columns: shortened (job_label's short)


def _short(override: str, ends: list[str]) -> str:
    key, _, value = override.partition("=")
    end = key.rsplit(".", 1)[-1]
    key = end if ends.count(end) == 1 else key
    if len(value) > 8 and re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?", value):
        value = f"{float(value):.4g}"
    return f"{key}={value}"


def sweep_results(sweep_dir: Path, metric: str | None = None, direction: str = "maximize") -> list[StageResult]:
    """Every job's results under ``sweep_dir``, each stage renamed after its job's overrides; with
    ``metric``, the jobs ordered best first by their last stage's (what the job returned to the
    sweeper), those without it last, each label starting with the job's folder (``3: lr=...``)."""
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        results_file, overrides_file = job / "results.json", job / ".hydra" / "overrides.yaml"
        if not results_file.is_file():
            continue
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else [job.name]
        jobs.append((job, [str(o) for o in overrides], json.loads(results_file.read_text())))
    if metric is not None:
        sign = -1 if direction == "maximize" else 1
        score = lambda job: float((job[2][-1].get("metrics") or {}).get(metric, math.nan)) if job[2] else math.nan
        jobs.sort(key=lambda job: (math.isnan(score(job)), 0.0 if math.isnan(score(job)) else sign * score(job)))
    values: dict[str, list[str]] = {}
    for _, overrides, _ in jobs:
        for o in overrides:
            key, _, value = o.partition("=")
            values.setdefault(key, []).append(value)
    # a key varies when its values differ or some job does not set it
    varying = {k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(jobs)}
    short = any(len(job_label(overrides, varying)) > LABEL_WIDTH for _, overrides, _ in jobs)
    rows = []
    for job, overrides, results in jobs:
        label = job_label(overrides, varying, short)
        label = f"{job.name}: {label}" if metric is not None else label
        stages = {r["stage"] for r in results}
        for r in results:
            result = StageResult.from_json(r)
            result.stage = label if len(stages) == 1 else f"{label} / {result.stage}"
            rows.append(result)
    return rows


class SweepTable(Callback):
    """At the end of a multirun, print and save one table over all jobs (see module docstring)."""

    @override
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from dnnkit.report import print_table, save_table

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        direction = sweep_direction(config)
        objective = OmegaConf.select(config, "optimized_metric", default=None) if direction else None
        results = sweep_results(sweep_dir, objective, direction or "maximize")
        if not results:
            print(f"sweep {sweep_dir}: no job wrote results.json", file=sys.stderr)
            return
        metrics = list(OmegaConf.select(config, "report.metrics", default=None) or ["val/acc", "test/acc"])
        if objective and objective not in metrics:
            metrics.append(objective)
        title = f"{config.get('name') or 'train'} sweep: {len({r.stage for r in results})} jobs ({sweep_dir})"
        if objective:
            title += f", best {objective} ({'highest' if direction == 'maximize' else 'lowest'}) first"
        print_table(results, metrics, {}, title)
        save_table(results, metrics, {}, sweep_dir, title)


# ----------------------------------------------------------------------------- optimizing sweeps, the command line

MAXIMIZED = ("acc", "accuracy", "top1", "top5", "f1", "auc", "auroc", "precision", "recall", "iou", "dice", "map", "r2")
MINIMIZED = ("loss", "error", "err", "mse", "mae", "rmse", "nll", "perplexity", "ece")


def metric_direction(metric) -> str:
    """``maximize`` for an accuracy-like metric, ``minimize`` for a loss-like one, by its name.

    Example::

        >>> metric_direction("val/acc"), metric_direction("val/loss"), metric_direction("test_top5_accuracy")
        ('maximize', 'minimize', 'maximize')
    """
    words = set(re.split(r"[^a-z0-9]+", str(metric).lower()))
    up, down = bool(words & set(MAXIMIZED)), bool(words & set(MINIMIZED))
    if metric is None or up == down:
        raise DnnkitError(
            f"optimized_metric={metric!r}: cannot tell from its name whether to maximise or minimise it (accuracies: "
            f"{', '.join(MAXIMIZED[:2])}, ...; losses: {', '.join(MINIMIZED[:2])}, ...); set hydra.sweeper.direction=maximize or minimize"
        )
    return "maximize" if up else "minimize"


if not OmegaConf.has_resolver("dnnkit.direction"):  # conf/hparams_search/: direction: ${dnnkit.direction:${optimized_metric}}
    OmegaConf.register_new_resolver("dnnkit.direction", metric_direction)


def sweep_direction(config: DictConfig) -> str | None:
    """``maximize``/``minimize`` of an optimizing sweeper (one with one ``direction``), else None."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    direction = getattr(direction, "name", direction)  # Optuna's config holds an enum by default
    if direction is not None and str(direction) not in ("maximize", "minimize"):
        if isinstance(direction, str):
            raise DnnkitError(f"hydra.sweeper.direction must be maximize or minimize, got {direction!r}")
        return None  # several objectives: no one order
    return direction


CHECKED_GROUPS = ("logger", "hparams_search")  # their unknown options: one line, exit 2 (Hydra's: its search path, exit 1)
PLUGINS = {("hparams_search", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna")}  # option -> (module, extra)


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, ChoiceSweep)):
        return [n for v in (value.list if isinstance(value, ChoiceSweep) else value) for n in _names(v)]
    return []  # ranges, globs: left to Hydra


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package (hydra_plugins) is missing too
        return False


def checked_choices(arguments: list[str]) -> list[str]:
    """``arguments`` (Hydra's command line) once every option they choose of :data:`CHECKED_GROUPS`
    exists and has its plugin installed (else one :class:`DnnkitError` listing the valid ones);
    ``logger=null`` becomes ``logger=[]`` (no logger), the spelling Hydra's grammar takes."""
    if any(a.split("=", 1)[0] in ("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath") for a in arguments):
        return arguments  # options may come from other folders too
    out = []
    for argument in arguments:
        key, _, value = argument.partition("=")
        group = key.lstrip("+")
        if group not in CHECKED_GROUPS or not _:
            out.append(argument)
            continue
        if value == "null" and group == "logger":
            out.append(f"{key}=[]")
            continue
        try:
            parsed = OverridesParser.create().parse_override(argument).value()
        except Exception:  # noqa: BLE001 - Hydra reports its grammar's errors itself
            parsed = None
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        for name in _names(parsed):
            if name not in options:
                several = " (several at once: logger=[csv,tensorboard]; none: logger=[])" if group == "logger" else ""
                raise DnnkitError(f"unknown {group} {name!r}; valid: {', '.join(options)}{several}")
            module, extra = PLUGINS.get((group, name), (None, None))
            if module and not installed(module):
                raise DnnkitError(f"{group}={name} needs the Hydra plugin {module.split('.')[-1]}: pip install 'dnnkit[{extra}]'")
        out.append(argument)
    return out


def with_checked_choices(main):
    """Hydra's ``main``, run from the command line after :func:`checked_choices` (its error: one
    line on stderr, exit status 2)."""

    @functools.wraps(main)
    def checked(*args, **kwargs):
        if not args and not kwargs:
            try:
                sys.argv[1:] = checked_choices(sys.argv[1:])
            except DnnkitError as err:
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
        return main(*args, **kwargs)

    return checked
