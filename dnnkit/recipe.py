"""Recipes: one or more fits ("stages") in one command, a later stage taking weights from an
earlier one, ending in one results table.

A config without ``stages`` is one stage named after ``name``. A recipe with ``stages`` lists
for each stage only what differs from the composed base config::

    stages:
      A:                                 # pretrain on 8 classes
        data: {classes: [0, 1, 2, 3, 4, 7, 8, 9]}
      B_on_A:                            # 2 classes, 200 images, hidden layers from A
        data: {classes: [5, 6], n_per_class: 100}
        reuse: {from: A, layers: "hidden.*"}
        seeds: [0, 1, 2]                 # repeated; the table shows mean and spread
        published: {metric: test/acc, value: 0.9940, source: "Hands-On ML 2e, ch. 11"}

Merging rules: dicts merge key by key, except that a dict with a different ``_target_``
replaces the base's whole (switching ``optimizer`` from SGD to Adam drops SGD's ``momentum``),
and a string under a config-group key names that group's option (``optimizer: adam`` loads
``conf/optimizer/adam.yaml``). Setting a stage (or a callback) to ``null`` removes it.

``reuse`` may also reshape the model before copying (:func:`dnnkit.nn.surgery.restack`):
``reuse: {from: A, drop: "hidden[45]|output", add: [20]}`` builds the stage's model (by default
the same shape as A's), drops its top two hidden layers and output, adds a new 20-unit
``hidden4`` and a new output, then copies every layer it kept (hidden1-3) from A.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate as hydra_instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dnnkit.callbacks.epoch_summary import EpochSummary
from dnnkit.callbacks.layer_freezing import LayerFreezing
from dnnkit.errors import DnnkitError, choose, find_dnnkit_error, number
from dnnkit.nn.surgery import load_state_dict, restack, reusable_layers, reuse_layers
from dnnkit.profiler import NullProfiler

log = logging.getLogger(__name__)

CONFIG_DIR_SOURCE = Path(__file__).resolve().parent.parent / "conf"
CONFIG_DIR_INSTALLED = Path(__file__).resolve().parent / "conf"
GROUPS = ("data", "model", "module", "optimizer", "scheduler", "trainer", "logger")
STAGE_KEYS = ("reuse", "seeds", "published", "fit")  # stage-only keys, not part of the base config


def config_dir() -> Path:
    """``conf/`` of a source checkout, else the copy the wheel installs as ``dnnkit/conf``."""
    return CONFIG_DIR_SOURCE if (CONFIG_DIR_SOURCE / "config.yaml").is_file() else CONFIG_DIR_INSTALLED


def _n_classes(classes) -> int:
    return len(classes) if classes else 10


if not OmegaConf.has_resolver("dnnkit.n_classes"):
    OmegaConf.register_new_resolver("dnnkit.n_classes", _n_classes)


def instantiate(config, *args, **kwargs):
    """Hydra's ``instantiate``, but a constructor's DnnkitError comes out as itself, not wrapped
    in Hydra's InstantiationException (so callers of :func:`run_recipe` can catch it)."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except Exception as err:
        ours = find_dnnkit_error(err)
        if ours is None:
            raise
        raise ours from None


# ----------------------------------------------------------------------------- stage configs


def group_option(group: str, option: str) -> dict:
    """The content of ``conf/<group>/<option>.yaml`` as a plain dict."""
    folder = config_dir() / group
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    choose(f"{group} option", option, options)
    return OmegaConf.to_container(OmegaConf.load(folder / f"{option}.yaml"), resolve=False) or {}


def merge(base, over, key: str | None = None):
    """Merge ``over`` into ``base`` by the rules in the module docstring (plain containers)."""
    if isinstance(over, str) and key in GROUPS:
        return group_option(key, over)
    if isinstance(over, dict) and isinstance(base, dict) and over.get("_target_", base.get("_target_")) == base.get("_target_"):
        merged = dict(base)
        for k, v in over.items():
            merged[k] = merge(base.get(k), v, k if key is None else None)
        return merged
    return over


def stage_configs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """``(stage name, full config)`` for each stage, in order."""
    base = OmegaConf.to_container(cfg, resolve=False)
    stages = base.pop("stages", None)
    if not stages:
        return check_stages([(cfg.get("name") or "train", cfg)])
    if not isinstance(stages, dict):
        raise DnnkitError(f"stages must be a mapping of stage name -> overrides, got {stages!r}")
    out = []
    for name, over in stages.items():
        if over is None:
            continue
        unknown = sorted(set(over) - set(base) - set(STAGE_KEYS))
        if unknown:
            raise DnnkitError(f"stage {name!r} sets unknown keys {unknown}; valid: {sorted(set(base) | set(STAGE_KEYS))}")
        merged = merge(base, over)
        out.append((name, OmegaConf.create(merged)))
    if not out:
        raise DnnkitError(f"every stage of {sorted(stages)} is switched off (null): nothing to run")
    return check_stages(out)


def check_stages(stages: list[tuple[str, DictConfig]]) -> list[tuple[str, DictConfig]]:
    """``stages``, once their ``seeds`` and ``published`` are known to be usable: checked before
    any stage trains, not when the table is printed at the end."""
    for name, stage in stages:
        seeds = stage.get("seeds")
        if seeds is not None and (not isinstance(seeds, Sequence) or isinstance(seeds, str)
                                  or any(isinstance(x, bool) or not isinstance(x, int) for x in seeds) or len(set(seeds)) != len(seeds)):
            raise DnnkitError(f"stage {name!r}: seeds must be a list of distinct integers such as [0, 1, 2], got {seeds!r}")
        pub = stage.get("published")
        if pub is not None and not (isinstance(pub, Mapping) and isinstance(pub.get("metric"), str)
                                    and isinstance(pub.get("value"), (int, float)) and not isinstance(pub.get("value"), bool)):
            raise DnnkitError(
                f"stage {name!r}: published must be {{metric: <key such as test/acc>, value: <number>, source: <text>}}, got {pub!r}"
            )
    return stages


# ----------------------------------------------------------------------------- running


@dataclass
class StageResult:
    """What one fit of one stage with one seed produced."""

    stage: str
    seed: int
    dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: str | None = None
    fit_seconds: float = 0.0
    epochs: int = 0

    def to_json(self) -> dict:
        return {**self.__dict__, "dir": str(self.dir)}

    @classmethod
    def from_json(cls, data: dict) -> "StageResult":
        return cls(**{**data, "dir": Path(data["dir"])})


def check_config(cfg: DictConfig) -> None:
    """Fail before any training on values that would only fail (or silently misbehave) later."""
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if lr is not None:
        number("optimizer.lr", lr, 0, low_open=True)
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if epochs is not None and (not isinstance(epochs, int) or epochs < -1 or epochs == 0):
        raise DnnkitError(f"trainer.max_epochs must be a positive integer (or -1), got {epochs!r}")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    specs = cfg.get("callbacks") or {}
    callbacks = [instantiate(spec, _convert_="all") for spec in specs.values() if spec is not None]
    if OmegaConf.select(cfg, "trainer.enable_progress_bar") is False:
        # so that `trainer.enable_progress_bar=false` alone turns the bar off
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def build_module(cfg: DictConfig) -> L.LightningModule:
    model = instantiate(cfg.model, _convert_="all")
    reuse = cfg.get("reuse") or {}
    surgery = {k: reuse[k] for k in ("drop", "add", "n_outputs", "init", "init_distribution") if reuse.get(k) is not None}
    if surgery:  # the stage's model is the source's shape; reshape it before the weights are copied
        model = restack(model, **OmegaConf.to_container(OmegaConf.create(surgery)))
    optimizer = instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return instantiate(cfg.module, model=model, optimizer=optimizer, scheduler=scheduler, _convert_="all")


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
    load_state_dict(last)  # a DnnkitError naming the file if it is cut short or not a checkpoint
    return str(last)


def fit_stage(name: str, cfg: DictConfig, seed: int, stage_dir: Path, done: dict[str, list[StageResult]]) -> StageResult:
    """Build everything for one stage and seed, fit, test the best checkpoint, return results."""
    check_config(cfg)
    L.seed_everything(seed, workers=True, verbose=False)
    cfg = OmegaConf.merge(cfg, {"seed": seed})
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg)
    if cfg.get("reuse"):
        source = cfg.reuse.get("from")
        if source in done:
            runs = done[source]
            ckpt = next((r for r in runs if r.seed == seed), runs[0]).best_checkpoint
        elif isinstance(source, str) and source.endswith((".ckpt", ".pt", ".pth")):
            ckpt = source  # a checkpoint or state_dict file (loaded with weights_only=True)
        else:
            raise DnnkitError(
                f"stage {name!r} reuses from {source!r}, which is neither an earlier stage ({sorted(done)}) "
                "nor a checkpoint file (.ckpt, .pt, .pth)"
            )
        layers = cfg.reuse.get("layers") or reusable_layers(getattr(module, "model", module))
        report = reuse_layers(module, ckpt, layers)
        log.info("stage %s: reused %s from %s (%s)", name, ", ".join(report), source, ckpt)
    callbacks = build_callbacks(cfg)
    for callback in callbacks:  # train on cached outputs of a frozen bottom where that applies
        if isinstance(callback, LayerFreezing):
            datamodule = callback.cached_datamodule(module, datamodule)
    summary = next((c for c in callbacks if isinstance(c, EpochSummary)), None)
    if summary is None:
        summary = EpochSummary(verbose=False)
        callbacks.append(summary)
    logger = instantiate(cfg.logger, save_dir=str(stage_dir), name="", version="") if cfg.get("logger") else False
    profiler = {} if cfg.trainer.get("profiler") else {"profiler": NullProfiler()}
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(stage_dir), **profiler)
    ckpt_path = resume_checkpoint(stage_dir, bool(cfg.get("resume")))
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:  # no validation ran (or no checkpoint callback): later stages reuse the final weights
        best = str(stage_dir / "checkpoints" / "final.ckpt")
        trainer.save_checkpoint(best, weights_only=True)
    history = list(summary.history)  # testing from `best` reloads callback states: EpochSummary's history up to that epoch
    if cfg.get("test", True) and is_overridden("test_step", module):
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    metrics = {k.removesuffix("_epoch"): v for k, v in metrics.items() if not k.endswith("_step")}
    if cfg.get("export", True) and isinstance(getattr(module, "model", None), torch.nn.Module) and trainer.is_global_zero:
        export_stage(module.model, cfg, datamodule, best, stage_dir, metrics)
    return StageResult(name, seed, stage_dir, metrics, history, best, fit_seconds, trainer.current_epoch)


def export_stage(model: torch.nn.Module, cfg: DictConfig, datamodule, best: str, stage_dir: Path, metrics: dict) -> None:
    """Save the best checkpoint's network, batch norm folded, as ``<stage>/model.pt`` (read with
    ``weights_only=True``) and ``<stage>/model.pt2`` (torch.export); see :mod:`dnnkit.nn.export`."""
    import copy

    from dnnkit.nn.export import save_inference_model

    try:  # an export that fails must not lose the fit: warn and go on
        model = copy.deepcopy(model).cpu()
        state = load_state_dict(best)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        x = next(iter(datamodule.test_dataloader()))[0][:2]  # shapes the torch.export program
        config = OmegaConf.to_container(cfg.model, resolve=True)
        if getattr(model, "new_layers", None):  # reshaped by `reuse: {drop, add, n_outputs}`: rebuild that shape
            config.update(hidden=list(model.hidden_sizes), n_outputs=model.n_outputs)
            if "output" in model.new_layers:
                config["output_batch_norm"] = False
        data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
        meta = {"checkpoint": best, "metrics": metrics, "data": data, "class_names": list(getattr(datamodule, "class_names", []))}
        save_inference_model(model, stage_dir, config, x, meta)  # model.pt first, then model.pt2
    except Exception as err:
        log.warning("exporting the inference model to %s failed: %s", stage_dir, err)


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file in it, or raise one readable error."""
    probe = folder / f".dnnkit-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise DnnkitError(
            f"cannot write to the output folder {str(folder)!r} ({err.strerror or err}); "
            "choose a writable folder with hydra.run.dir=..."
        ) from None


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
    save the results table (``results.md``, ``results.json``) and the curves (``curves.png``)."""
    from dnnkit.report import print_table, save_curves, save_table

    run_dir = Path(run_dir)
    check_writable(run_dir)
    stages = stage_configs(cfg)
    done: dict[str, list[StageResult]] = {}
    results: list[StageResult] = []
    for name, stage_cfg in stages:
        seeds = list(stage_cfg.get("seeds") or [stage_cfg.get("seed", 0)])
        for seed in seeds:
            stage_dir = run_dir / name / (f"seed{seed}" if len(seeds) > 1 else "")
            marker = stage_dir / "result.json"
            if marker.is_file():
                if not stage_cfg.get("resume"):
                    raise DnnkitError(
                        f"{stage_dir} already holds a finished run; pass resume=true to reuse it, "
                        "or choose another folder with hydra.run.dir=..."
                    )
                result = StageResult.from_json(json.loads(marker.read_text()))
                log.info("stage %s seed %s: finished earlier, results loaded from %s", name, seed, marker)
            else:
                if is_global_zero():  # other DDP ranks run the same stages
                    print(f"\n== stage {name}" + (f", seed {seed}" if len(seeds) > 1 else "") + f"  ->  {stage_dir}")
                result = fit_stage(name, stage_cfg, seed, stage_dir, done)
                if is_global_zero():
                    marker.write_text(json.dumps(result.to_json(), indent=1))
            done.setdefault(name, []).append(result)
            results.append(result)
    published = {name: OmegaConf.to_container(c.published) for name, c in stages if c.get("published")}
    metrics = list(cfg.get("report", {}).get("metrics", ["val/acc", "test/acc"]))
    title = f"{cfg.get('name') or 'train'}: results"
    if not is_global_zero():  # other DDP ranks trained the same stages; rank 0 reports
        return results
    print_table(results, metrics, published, title)
    save_table(results, metrics, published, run_dir, title)
    save_curves(results, run_dir / "curves.png", metric=metrics[0])
    return results


def aggregate(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), ignoring NaN."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def device_summary() -> str:
    return "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
