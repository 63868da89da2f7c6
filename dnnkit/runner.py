"""The runner: fit, test and export each stage of a recipe (each for each of its seeds), then
report. What the stages are and how they merge is :mod:`dnnkit.stages`; what a stage produced
is :mod:`dnnkit.results`; the tables are :mod:`dnnkit.report`.

The runner names no callback class: a callback that can train on something cheaper than the
datamodule it is given (``LayerFreezing`` caching a frozen bottom) offers it through
:class:`OffersDataModule`, and a model that can be rebuilt in a shape other than its config's
(an MLP reshaped by ``reuse: {drop, add}``) says how through ``export_config``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from dnnkit import interrupt
from dnnkit.build import build_module, instantiate
from dnnkit.callbacks.compile import CompileModel
from dnnkit.callbacks.early_stopping import stopped_early
from dnnkit.callbacks.epoch_summary import EpochSummary
from dnnkit.callbacks.threads import AutoThreads
from dnnkit.checkpoint_io import AtomicCheckpointIO
from dnnkit.confusion import SaveTestConfusion, newer, plot_confusion
from dnnkit.errors import DnnkitError
from dnnkit.interrupt import StopOnSignal
from dnnkit.loggers import build_loggers, log_config
from dnnkit.lr_finder import with_lr_finder
from dnnkit.nn.onnx import export_options
from dnnkit.nn.surgery import read_state_dict, reusable_layers, reuse_layers
from dnnkit.paths import confined
from dnnkit.plots import save_curves, save_panels
from dnnkit.predict import input_meta
from dnnkit.preflight import preflight
from dnnkit.profiler import NullProfiler
from dnnkit.report import print_table, save_table
from dnnkit.results import StageResult
from dnnkit.run_folder import RunLock, check_writable, finished, fitted, write_marker
from dnnkit.search import run_search, search_of
from dnnkit.stages import stage_configs

log = logging.getLogger(__name__)


@runtime_checkable
class OffersDataModule(Protocol):
    """A callback that may offer a cheaper datamodule to fit on (e.g. cached frozen features)."""

    def cached_datamodule(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> L.LightningDataModule: ...


class StageLogging(L.Callback):
    """Logging that fits each stage: an epoch shorter than ``trainer.log_every_n_steps`` would log
    no training step (Lightning warns, once per stage), so it logs once an epoch instead; and a
    resumed fit tells loggers that can forget rows (:class:`dnnkit.loggers.CSVLogger`) the step
    it restarts from, so ``metrics.csv`` keeps every finished epoch and repeats none."""

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = trainer.num_training_batches
        if isinstance(batches, int) and 0 < batches < trainer.log_every_n_steps:
            trainer.log_every_n_steps = batches
        if trainer.ckpt_path:
            for logger in trainer.loggers:
                if hasattr(logger, "resumed_at"):
                    logger.resumed_at(trainer.global_step)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    specs = cfg.get("callbacks") or {}
    callbacks = [instantiate(spec, _convert_="all") for spec in specs.values() if spec is not None]
    if OmegaConf.select(cfg, "trainer.enable_progress_bar") is False:
        # so that `trainer.enable_progress_bar=false` alone turns the bar off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def resume_checkpoint(stage_dir: Path, resume: bool) -> str | None:
    """``last.ckpt`` of an interrupted stage when resuming; refuse to start over on top of one."""
    last = stage_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    if not resume:
        raise DnnkitError(
            f"{stage_dir} holds an interrupted run ({last}); pass resume=true to continue it, "
            "or choose another folder with hydra.run.dir=..."
        )
    read_state_dict(last)  # a DnnkitError naming the file if it is cut short or not a checkpoint
    return str(last)


class FitTimer(L.Callback):
    """Seconds spent in ``fit``, summed over resumes (the part saved in checkpoints)."""

    def __init__(self) -> None:
        self.before, self._start = 0.0, time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self._start

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._start = time.perf_counter()

    @override
    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.before = float(state_dict.get("seconds", 0.0))


def stage_loggers(name: str, cfg: DictConfig, seed: int, stage_dir: Path) -> list:
    """The stage's loggers (:func:`dnnkit.loggers.build_loggers`), its resolved config logged as
    their hyperparameters. ``stage_dir`` is ``<run folder>/<stage>[/seed<N>]`` (:func:`run_stages`)."""
    several = len(cfg.get("seeds") or []) > 1
    run_dir, label = (stage_dir.parent.parent, f"{name}/seed{seed}") if several else (stage_dir.parent, name)
    loggers = build_loggers(cfg.get("logger"), stage_dir, run_dir, label)
    log_config(loggers, OmegaConf.to_container(cfg, resolve=True))
    return loggers


def build_reused_module(name: str, cfg: DictConfig, seed: int, done: dict[str, list[StageResult]]) -> L.LightningModule:
    """The stage's module (:func:`dnnkit.build.build_module`), the layers of ``reuse`` copied in:
    from the same seed's run of an earlier stage (``done``), or from a checkpoint file."""
    module = build_module(cfg)
    if cfg.get("reuse"):
        source = cfg.reuse.get("from")
        if source in done:  # else a checkpoint or state_dict file (checked by dnnkit.stages; weights_only=True)
            runs = done[source]
            ckpt = next((r for r in runs if r.seed == seed), runs[0]).best_checkpoint
        else:
            ckpt = source
        layers = cfg.reuse.get("layers") or reusable_layers(getattr(module, "model", module))
        report = reuse_layers(module, ckpt, layers, cfg.reuse.get("source_prefix"))  # e.g. tower_a. of a Towers
        log.info("stage %s: reused %s from %s (%s)", name, ", ".join(report), source, ckpt)
    return module


def build_stage(name: str, cfg: DictConfig, seed: int, stage_dir: Path, done: dict[str, list[StageResult]]):
    """``(module, datamodule, trainer, summary, timer)`` for one stage and seed, weights reused."""
    L.seed_everything(seed, workers=True, verbose=False)
    cfg = OmegaConf.merge(cfg, {"seed": seed})
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_reused_module(name, cfg, seed, done)
    callbacks = with_lr_finder(build_callbacks(cfg), cfg.get("find_lr"))  # find_lr=true|apply: the range test first
    if cfg.get("threads") is not None and not any(isinstance(c, AutoThreads) for c in callbacks):
        callbacks.insert(0, AutoThreads(cfg.threads))  # threads=auto|N (dnnkit/threads.py); null: torch's own
    if cfg.get("compile") not in (None, False) and not any(isinstance(c, CompileModel) for c in callbacks):
        callbacks.append(CompileModel(cfg.compile))  # compile=true|auto: torch.compile the training steps (dnnkit/compile.py)
    for callback in callbacks:  # train on cached outputs of a frozen bottom where that applies
        if isinstance(callback, OffersDataModule):
            datamodule = callback.cached_datamodule(module, datamodule)
    summary = next((c for c in callbacks if isinstance(c, EpochSummary)), None)
    if summary is None:
        summary = EpochSummary(verbose=False)
        callbacks.append(summary)
    timer = FitTimer()
    callbacks += [StageLogging(), StopOnSignal(), timer, SaveTestConfusion(stage_dir, plot=False)]  # confusion.json; png: finish_files
    logger = stage_loggers(name, cfg, seed, stage_dir) or False
    profiler = {} if cfg.trainer.get("profiler") else {"profiler": NullProfiler()}
    plugins = [AtomicCheckpointIO()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(stage_dir),
                                     plugins=plugins, **profiler)
    return module, datamodule, trainer, summary, timer


def fit_stage(name: str, cfg: DictConfig, seed: int, stage_dir: Path, done: dict[str, list[StageResult]]) -> StageResult:
    """Build everything for one stage and seed, fit, test the best checkpoint, export; return
    the results. ``fit.json`` keeps the fit's results as soon as it ends (and again once
    tested), so a resume after a kill during the test or the export redoes only those."""
    module, datamodule, trainer, summary, timer = build_stage(name, cfg, seed, stage_dir, done)
    earlier = fitted(stage_dir) if cfg.get("resume") else None
    if earlier is None:
        ckpt_path = resume_checkpoint(stage_dir, bool(cfg.get("resume")))
        with warnings.catch_warnings():  # StageLogging makes Lightning's advice moot
            warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics = {k.removesuffix("_epoch"): v for k, v in metrics.items() if not k.endswith("_step")}
        if summary.history:  # a fit resumed at its very end runs no loop and logs nothing: the last epoch's row
            metrics = {**{k: v for k, v in summary.history[-1].items() if k != "epoch"}, **metrics}
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:  # no validation ran (or no checkpoint callback): later stages reuse the final weights
            best = str(stage_dir / "checkpoints" / "final.ckpt")
            trainer.save_checkpoint(best, weights_only=True)
        # testing from `best` reloads callback states: EpochSummary's history is taken first
        result = StageResult(name, seed, stage_dir, metrics, list(summary.history), best, timer.seconds, trainer.current_epoch,
                             stopped_early=stopped_early(trainer.callbacks))
        if trainer.is_global_zero:
            write_marker(stage_dir / "fit.json", result, tested=False)
        tested = False
    else:
        result, tested = earlier
        result.dir = stage_dir
        log.info("stage %s seed %s: fitted earlier (%s); %s", name, seed, stage_dir / "fit.json",
                 "exporting" if tested else "testing and exporting")
    interrupt.check()
    if not tested and cfg.get("test", True) and is_overridden("test_step", module):
        out = trainer.test(module, datamodule=datamodule, ckpt_path=result.best_checkpoint, verbose=False, weights_only=True)
        test_metrics = {k.removesuffix("_epoch"): float(v) for k, v in (out[0] if out else {}).items()}
        result.metrics.update({k: v for k, v in test_metrics.items() if not k.endswith("_step")})
        if trainer.is_global_zero:
            write_marker(stage_dir / "fit.json", result, tested=True)
    interrupt.check()
    model_export, onnx = export_options(cfg.get("export", True))  # a bool, or {model: bool, onnx: bool}
    if model_export and isinstance(getattr(module, "model", None), torch.nn.Module) and trainer.is_global_zero:
        for callback in trainer.callbacks:  # layers skipped for cached training compute again: the export takes images
            if isinstance(callback, OffersDataModule) and callable(getattr(callback, "restore_layers", None)):
                callback.restore_layers()
        images = getattr(datamodule, "datamodule", datamodule)  # a CachedDataModule's own: image batches, not features
        # the seed this fit used: a stage's `seeds` each split the data their own way (data.seed: ${seed})
        export_stage(module.model, OmegaConf.merge(cfg, {"seed": seed}), images, result.best_checkpoint, stage_dir,
                     result.metrics, onnx=onnx)
    return result


def export_stage(model: torch.nn.Module, cfg: DictConfig, datamodule, best: str, stage_dir: Path, metrics: dict,
                 onnx: bool = False) -> None:
    """Save the best checkpoint's network, batch norm folded, as ``<stage>/model.pt`` (read with
    ``weights_only=True``); see :mod:`dnnkit.nn.export`. ``<stage>/model.pt2`` (torch.export, about
    a second of tracing) is made from it after the results table (:func:`finish_files`), except
    with ``onnx``: then at once, and ``<stage>/model.onnx`` checked against it (:mod:`dnnkit.nn.onnx`)."""
    import copy

    from dnnkit.nn.export import save_inference_model

    try:  # an export that fails must not lose the fit: warn and go on
        model = copy.deepcopy(model).cpu()
        state = read_state_dict(best)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        loader = datamodule.test_dataloader()
        batch = next(iter(loader))[0][:64]
        x = batch[:2]  # shapes the torch.export program
        config = OmegaConf.to_container(cfg.model, resolve=True)
        if hasattr(model, "export_config"):  # e.g. reshaped by `reuse: {drop, add, n_outputs}`: rebuild that shape
            config = model.export_config(config)
        data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
        meta = {"checkpoint": best, "metrics": metrics, "data": data, "class_names": list(getattr(datamodule, "class_names", [])),
                "input": input_meta(loader, x)}  # shape and scaling, for python -m dnnkit.predict
        save_inference_model(model, stage_dir, config, x if onnx else None, meta)  # model.pt (+ model.pt2 for ONNX)
        if onnx:
            from dnnkit.nn.onnx import save_onnx

            save_onnx(stage_dir, batch)  # checked against model.pt2 on the test images
    except Exception as err:  # noqa: BLE001 - an export that fails must not lose the fit
        log.warning("exporting the inference model to %s failed: %s", stage_dir, err)


def is_global_zero() -> bool:
    """True in the process that writes files (rank 0 under DDP; the only one otherwise)."""
    return rank_zero_only.rank == 0


def close_process_group() -> None:
    """Shut a DDP process group down before the interpreter does. Lightning closes only NCCL's
    at exit; gloo's, left to exit-time destructors, can abort a rank that finished its work
    ("terminate called without an active exception", exit status 134)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_recipe(cfg: DictConfig, run_dir: str | Path) -> list[StageResult]:
    """Run every stage of ``cfg`` (each for each of its seeds) under ``run_dir``; print and
    save the results table (``results.md``, ``results.json``) and the curves (``curves.png``).
    The folder is locked for the run (:class:`~dnnkit.run_folder.RunLock`)."""
    run_dir = Path(run_dir)
    check_writable(run_dir)
    stages = stage_configs(cfg)
    preflight(stages)  # every stage checked before the first one trains
    with RunLock(run_dir) if is_global_zero() else contextlib.nullcontext():
        results: list[StageResult] = []
        try:
            run_stages(stages, run_dir, results)
        except interrupt.Interrupted:
            raise  # stopping now: resume=true finishes the files
        except Exception:
            if is_global_zero():
                finish_files(results)  # the stages that finished before the error keep their files
            raise
        if not is_global_zero():  # other DDP ranks trained the same stages; rank 0 reports
            return results
        published = {name: OmegaConf.to_container(c.published) for name, c in stages if c.get("published")}
        metrics = list(cfg.get("report", {}).get("metrics", ["val/acc", "test/acc"]))
        title = f"{cfg.get('name') or 'train'}: results"
        print_table(results, metrics, published, title)
        save_table(results, metrics, published, run_dir, title)
        save_curves(results, run_dir / "curves.png", metrics=metrics)
        for file, keys in (cfg.get("report", {}).get("plots") or {}).items():  # e.g. {schedules.png: [val/acc, lr/epoch]}
            save_panels(results, confined(run_dir / str(file), run_dir, "report.plots"), list(keys))
        finish_files(results)
    return results


def finish_files(results: list[StageResult]) -> None:
    """What costs time but no result, made after the table: each stage's ``confusion.png`` from
    its ``confusion.json`` and ``model.pt2`` from its ``model.pt``, where missing or older. A run
    stopped before this gets them on ``resume=true``; a failure is a warning, not a lost run."""
    from dnnkit.nn.export import save_program

    for folder in dict.fromkeys(Path(r.dir) for r in results):
        try:
            plot_confusion(folder)
            if (folder / "model.pt").is_file() and not newer(folder / "model.pt2", folder / "model.pt"):
                save_program(folder)
        except Exception as err:  # noqa: BLE001 - the stage's results are saved already
            log.warning("could not finish the files of %s: %s", folder, err)


def run_stages(stages: list[tuple[str, DictConfig]], run_dir: Path,
               results: list[StageResult] | None = None) -> list[StageResult]:
    """Fit (or load, when finished earlier) every stage and seed, in order; each result is
    appended to ``results`` (a new list when not given) as its stage finishes. A stage with
    ``reuse.search`` runs its tries and reports its pick (:mod:`dnnkit.search`)."""
    done: dict[str, list[StageResult]] = {}
    results = [] if results is None else results
    for name, stage_cfg in stages:
        seeds = list(stage_cfg.get("seeds") or [stage_cfg.get("seed", 0)])
        for seed in seeds:
            stage_dir = confined(run_dir / name / (f"seed{seed}" if len(seeds) > 1 else ""), run_dir, "a stage folder")
            fit = search_stage if search_of(stage_cfg) is not None else fit_stage
            result = run_stage(name, stage_cfg, seed, stage_dir, done, fit)
            done.setdefault(name, []).append(result)
            results.append(result)
    return results


def run_stage(name: str, stage_cfg: DictConfig, seed: int, stage_dir: Path, done: dict[str, list[StageResult]],
              fit=fit_stage) -> StageResult:
    """One stage and seed: loaded when it finished earlier (``resume=true``), else fitted, tested
    and exported by ``fit`` (:func:`fit_stage`, or :func:`search_stage`), its ``result.json`` written."""
    result = finished(stage_dir)
    if result is not None:
        if not stage_cfg.get("resume"):
            raise DnnkitError(
                f"{stage_dir} already holds a finished run; pass resume=true to reuse it, "
                "or choose another folder with hydra.run.dir=..."
            )
        result.dir = stage_dir  # this run's folder, also where a copied or moved one was written
        if result.search:  # a reuse search: its pick's folder holds the files
            result.dir = stage_dir / result.search["pick"]
        log.info("stage %s seed %s: finished earlier, results loaded from %s", name, seed, stage_dir / "result.json")
        return result
    interrupt.check()
    log.info("== stage %s%s  ->  %s", name, f", seed {seed}" if len(stage_cfg.get("seeds") or []) > 1 else "", stage_dir)
    start = time.perf_counter()
    result = fit(name, stage_cfg, seed, stage_dir, done)
    result.wall_seconds = result.wall_seconds or time.perf_counter() - start  # a search times itself
    if is_global_zero():
        write_marker(stage_dir / "result.json", result)
    return result


def search_stage(name: str, cfg: DictConfig, seed: int, stage_dir: Path, done: dict[str, list[StageResult]]) -> StageResult:
    """A stage with ``reuse.search``: its tries fitted side by side (or each as a stage of its
    own), the pick tested and exported (:func:`dnnkit.search.run_search`)."""
    return run_search(name, cfg, seed, stage_dir, lambda *a: run_stage(*a, done), lambda *a: fit_stage(*a, done),
                      lambda *a: build_reused_module(*a, done))


def device_summary() -> str:
    return "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
