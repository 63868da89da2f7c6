"""Hydra callbacks (``hydra.callbacks`` in ``conf/config.yaml``): check the output folder before
Hydra writes to it, and end a ``-m`` sweep with one comparison table over its jobs.

``python -m dnnkit.train -m optimizer=sgd,adam`` runs one job per value, each with its own
results table in ``<sweep dir>/<job>/``; :class:`SweepTable` reads every job's
``results.json`` when the sweep ends, labels each row with the overrides that differ between
the jobs, prints one table and saves ``results.md`` / ``results.json`` in the sweep folder. It
reads files rather than in-memory results, so it works as well when the jobs ran elsewhere
(``hydra/launcher=submitit_slurm``) and only their folders are shared.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dnnkit.errors import DnnkitError
from dnnkit.results import StageResult
from dnnkit.runner import check_writable


class CheckOutputDir(Callback):
    """Fail with one message (exit 2) when the run or sweep folder cannot be written, before
    Hydra tries to write its config there (which fails with a traceback)."""

    def _check(self, folder: str) -> None:
        try:
            check_writable(Path(folder))
        except DnnkitError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(str(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(str(config.hydra.sweep.dir))


def job_label(overrides: list[str], varying: set[str]) -> str:
    """The overrides of one job that differ between the sweep's jobs, e.g. ``optimizer=adam``."""
    shown = [o for o in overrides if o.split("=", 1)[0] in varying]
    return " ".join(shown) or " ".join(overrides) or "(defaults)"


def sweep_results(sweep_dir: Path) -> list[StageResult]:
    """Every job's results under ``sweep_dir``, each stage renamed after its job's overrides."""
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        results_file, overrides_file = job / "results.json", job / ".hydra" / "overrides.yaml"
        if not results_file.is_file():
            continue
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else [job.name]
        jobs.append((job, [str(o) for o in overrides], json.loads(results_file.read_text())))
    values: dict[str, list[str]] = {}
    for _, overrides, _ in jobs:
        for o in overrides:
            key, _, value = o.partition("=")
            values.setdefault(key, []).append(value)
    # a key varies when its values differ or some job does not set it
    varying = {k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(jobs)}
    rows = []
    for job, overrides, results in jobs:
        label = job_label(overrides, varying)
        stages = {r["stage"] for r in results}
        for r in results:
            result = StageResult.from_json(r)
            result.stage = label if len(stages) == 1 else f"{label} / {result.stage}"
            rows.append(result)
    return rows


class SweepTable(Callback):
    """At the end of a multirun, print and save one table over all jobs (see module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from dnnkit.report import print_table, save_table

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        results = sweep_results(sweep_dir)
        if not results:
            print(f"sweep {sweep_dir}: no job wrote results.json", file=sys.stderr)
            return
        metrics = list(OmegaConf.select(config, "report.metrics", default=None) or ["val/acc", "test/acc"])
        title = f"{config.get('name') or 'train'} sweep: {len({r.stage for r in results})} jobs ({sweep_dir})"
        print_table(results, metrics, {}, title)
        save_table(results, metrics, {}, sweep_dir, title)
