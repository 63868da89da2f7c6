"""Preflight: every check that can be made before the first stage trains, made for every stage.

:func:`dnnkit.runner.run_recipe` calls :func:`preflight` right after
:func:`dnnkit.stages.stage_configs`, before anything is written or trained: a mistake in a
recipe's last stage fails in a second, not after the first stages' hours. For each stage:

1. names: the run's and the stages' are plain file names, also once ``${oc.env:HOME}`` resolves;
2. numbers: no boolean where a ``_target_``'s signature takes a number (``data.n_per_class=true``
   is not 1), ``seed``/``seeds`` in [0, 2**32), the optimizer's lr, momentum, betas, weight
   decay and eps in their ranges, ``trainer.max_epochs``;
3. the data: the datamodule is built and, where it offers ``input_shape()``/``train_size()``,
   its image shape and training-set size read from headers and labels (no image is read);
4. the model, built on the meta device (no memory) and reshaped by ``reuse`` as the runner does:
   inputs against the images, outputs against the classes, and the layers ``reuse`` copies
   against the source stage's meta model (or checkpoint file), by name and shape;
5. the optimizer and scheduler factories, called on a one-element parameter;
6. callbacks, read from their config whatever their class: ``frozen``/``trainable`` leaving
   nothing to train, ``unfreeze_at_epoch`` past ``trainer.max_epochs``, a ``monitor`` the module
   does not log while fitting (early stopping's: nor any of the stage's callbacks);
7. DDP: every rank gets at least one training batch;
8. ``find_lr`` (:func:`dnnkit.lr_finder.check_stage`): one optimizer, ``trainer.max_steps`` long enough.

A stage with ``reuse.search`` is checked as each of its tries (:func:`dnnkit.search.expand`).

Then ``report.metrics``, ``published.metric`` and ``optimized_metric``. Keys are known for modules with a
``logged_keys`` class attribute (:class:`dnnkit.Classifier`); a key in a namespace the module
does not log (``grad/...``, ``lr``: callbacks log those) passes unless it is a near miss of one
(``val_acc``, ``valid/loss``), and only near misses fail where a module or callback from outside
dnnkit and Lightning might log more.
"""

from __future__ import annotations

import difflib
import logging
import math
import re

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dnnkit.build import build_module, instantiate, unknown_argument
from dnnkit.callbacks.early_stopping import check_monitor as check_early_stopping
from dnnkit.compile import compile_choice
from dnnkit.errors import DnnkitError, not_a_boolean, number, refuse_booleans
from dnnkit.loggers import check_loggers
from dnnkit.lr_finder import check_stage as check_lr_finder
from dnnkit.nn.freeze import left_trainable
from dnnkit.nn.onnx import check_onnx_export
from dnnkit.nn.surgery import reusable_layers, reuse_layers
from dnnkit.paths import check_name
from dnnkit.schedules import lightning_scheduler
from dnnkit.search import expand, search_of
from dnnkit.threads import check_threads

log = logging.getLogger(__name__)

SEED_LIMIT = 2**32
OPTIMIZER_RANGES = {  # key: (low, high, high_open): number(f"optimizer.{key}", value, low, high, ...)
    "momentum": (0, 1, True), "dampening": (0, 1, False), "weight_decay": (0, None, False), "eps": (0, None, False),
    "lr_decay": (0, None, False), "initial_accumulator_value": (0, None, False), "momentum_decay": (0, None, False),
}
OURS = ("dnnkit.", "lightning.", "torch.")  # targets whose logged keys preflight knows or that log none of the module's


def preflight(stages: list[tuple[str, DictConfig]]) -> None:
    """Check every stage of ``stages`` (from :func:`~dnnkit.stages.stage_configs`) as far as it can
    be checked without training; raise one :class:`~dnnkit.errors.DnnkitError` on the first problem
    (prefixed with the stage's name when there are several stages)."""
    check_names(stages[0][1], [(name, resolved(cfg)[0]) for name, cfg in stages])
    specs = [(name, *resolved(cfg)) for name, cfg in expand(stages)]  # a reuse search: each of its tries
    built: dict[str, torch.nn.Module | None] = {name: None for name, cfg in stages if search_of(cfg) is not None}  # shape: the pick's
    keys: dict[str, tuple[str, ...] | None] = {}
    for name, spec, unresolved in specs:
        try:
            built[name], keys[name] = check_stage(name, spec, built)
            if unresolved is not None:  # raised after the checks of what did resolve: their messages say more
                raise unresolved
        except DnnkitError as err:
            if len(specs) > 1 and not str(err).startswith(f"stage {name!r}"):
                raise DnnkitError(f"stage {name!r}: {err}") from None
            raise
    check_reported([(name, spec) for name, spec, _ in specs], keys)


def resolved(cfg: DictConfig) -> tuple[dict, DnnkitError | None]:
    """``cfg`` as plain containers, interpolations resolved; where one does not resolve, the
    top-level keys that do, and the error naming the one that does not."""
    try:
        return OmegaConf.to_container(cfg, resolve=True), None
    except OmegaConfBaseException as err:
        error = DnnkitError(f"cannot resolve {err.full_key or 'the config'}: {str(err).splitlines()[0]}")
    spec = {}
    for key in cfg:
        try:
            spec[key] = _resolve_key(cfg, key)
        except OmegaConfBaseException:
            continue
    return spec, error


def _resolve_key(cfg: DictConfig, key: str):
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_names(cfg: DictConfig, specs: list[tuple[str, dict]]) -> None:
    """The run's name and the stages' names become folders: plain file names only."""
    name = specs[0][1].get("name")
    if name is not None:
        raw = OmegaConf.to_container(cfg, resolve=False).get("name")
        check_name("name" if raw == name else f"name {raw!r}, resolved to", name)
    for stage, _ in specs:
        if stage != (name or "train"):
            check_name("stage name", stage)


# ----------------------------------------------------------------------------- one stage


def check_stage(name: str, spec: dict, built: dict) -> tuple[torch.nn.Module | None, tuple[str, ...] | None]:
    """Check one stage; return its module built on the meta device (None where that failed)
    and the keys its module logs (None: unknown)."""
    seed = spec.get("seed", 0)
    not_a_boolean("seed", seed, f"an integer in [0, {SEED_LIMIT})")
    number("seed", seed, 0, SEED_LIMIT, integer=True, high_open=True)
    refuse_booleans("", spec)
    check_numbers(name, spec)
    compile_choice(spec.get("compile", False))  # true, false or auto
    check_threads(spec.get("threads"))  # auto, null or 1..the usable cores
    datamodule = instantiate(spec["data"], _convert_="all") if spec.get("data") else None
    facts = data_facts(datamodule)
    module = meta_module(spec)
    if module is not None:
        check_model(spec, module, facts)
        check_reuse(spec, module, built)
    check_optimizer(spec)
    keys = logged_keys(spec)
    check_callbacks(spec, module, keys)
    check_ranks(spec, datamodule, facts)
    check_loggers(spec.get("logger"))  # each names a class whose package is installed (else: the extra to install)
    check_lr_finder(spec, module)  # find_lr: its value, one optimizer, trainer.max_steps against the test
    check_onnx_export(spec.get("export", True))  # a bool or {model, onnx}; onnx's packages installed
    return module, keys


def check_numbers(name: str, spec: dict) -> None:
    lr = (spec.get("optimizer") or {}).get("lr")
    if lr is not None:
        number("optimizer.lr", lr, 0, low_open=True)
    epochs = (spec.get("trainer") or {}).get("max_epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < -1 or epochs == 0):
        raise DnnkitError(f"trainer.max_epochs must be a positive integer (or -1), got {epochs!r}")
    for s in spec.get("seeds") or []:
        if not 0 <= s < SEED_LIMIT:
            raise DnnkitError(f"stage {name!r}: seeds must be integers in [0, {SEED_LIMIT}), got {s!r}")
    optimizer = spec.get("optimizer") or {}
    for key, (low, high, high_open) in OPTIMIZER_RANGES.items():
        if optimizer.get(key) is not None:
            number(f"optimizer.{key}", optimizer[key], low, high, high_open=high_open)
    betas = optimizer.get("betas")
    if betas is not None:
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise DnnkitError(f"optimizer.betas must be two numbers [beta1, beta2] in [0, 1), got {betas!r}")
        for i, beta in enumerate(betas):
            number(f"optimizer.betas[{i}]", beta, 0, 1, high_open=True)


# ----------------------------------------------------------------------------- data and model


def data_facts(datamodule) -> dict:
    """What the datamodule says cheaply: ``classes``, ``shape`` (C, H, W), ``train`` (images)."""
    facts = {"classes": getattr(datamodule, "num_classes", None)}
    for key, method in (("shape", "input_shape"), ("train", "train_size")):
        facts[key] = getattr(datamodule, method)() if callable(getattr(datamodule, method, None)) else None
    return facts


def meta_module(spec: dict) -> torch.nn.Module | None:
    """The stage's LightningModule as the runner builds it (:func:`build_module`), on the meta
    device; None where that cannot be done there (the fit then reports what it finds)."""
    if not spec.get("model") or not spec.get("module"):
        return None
    model_cfg = dict(spec["model"])
    if model_cfg.get("weights") is not None:
        model_cfg["weights"] = None  # shapes do not depend on pretrained weights: never load or download them here
    try:
        with torch.device("meta"):
            return build_module(OmegaConf.create({**spec, "model": model_cfg}))
    except DnnkitError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. an operation with no meta kernel: skip, the fit will tell
        log.debug("preflight: the module was not built on the meta device (%s); its checks are skipped", err)
        return None


def check_model(spec: dict, module: torch.nn.Module, facts: dict) -> None:
    """The data's images fit the model's inputs; its outputs, the data's classes."""
    model = getattr(module, "model", None)
    shape = facts.get("shape")
    if not isinstance(model, torch.nn.Module) or not shape:
        return
    values, text = math.prod(shape), "x".join(map(str, shape))
    n_inputs = getattr(model, "n_inputs", None)
    if isinstance(n_inputs, int) and n_inputs != values:
        raise DnnkitError(f"model.n_inputs={n_inputs} but the data's images are {text} = {values} values: set model.n_inputs={values}")
    expected = getattr(model, "input_shape", None)  # a CNN's (in_channels, height, width)
    if isinstance(expected, tuple) and len(expected) == len(shape) == 3 and tuple(expected) != tuple(shape):
        raise DnnkitError(
            f"the model takes {'x'.join(map(str, expected))} images but the data's are {text}: set model.in_channels={shape[0]} "
            f"model.input_size=[{shape[1]},{shape[2]}] (or leave both to ${{dnnkit.input_shape:...}}, as conf/model/cnn.yaml does)"
        )
    try:
        with torch.no_grad():
            out = model(torch.empty((2, *shape), device="meta"))
    except Exception as err:  # noqa: BLE001
        first = (str(err).splitlines() or [type(err).__name__])[0]
        if re.search(r"shape|size|dimension", first, re.IGNORECASE):
            raise DnnkitError(f"the model ({spec['model'].get('_target_')}) cannot take the data's {text} images: {first}") from None
        return
    classes = facts.get("classes")
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not isinstance(getattr(module, "num_classes", None), int) or not classes:
        return
    if out.shape[1] != classes:
        reuse = spec.get("reuse") or {}
        key = "reuse.n_outputs" if reuse.get("n_outputs") is not None else "model.n_outputs"
        data = spec.get("data") or {}
        told = f" (data.classes={data['classes']})" if data.get("classes") else f" (data.task={data['task']!r})" if data.get("task") else ""
        raise DnnkitError(
            f"the model has {out.shape[1]} outputs ({key}={out.shape[1]}) but the data has {classes} classes{told}: set {key}={classes}"
        )
    if (explicit := (spec.get("module") or {}).get("num_classes")) is not None and explicit != classes:
        raise DnnkitError(f"module.num_classes={explicit!r} but the data has {classes} classes: set module.num_classes={classes} or null")


def check_reuse(spec: dict, module: torch.nn.Module, built: dict) -> None:
    """The layers ``reuse`` copies exist in the source and have the same shapes there."""
    reuse = spec.get("reuse") or {}
    if not reuse:
        return
    source = reuse.get("from")
    if source in built:
        source = built[source]
        if source is None:
            return
    layers = reuse.get("layers") or reusable_layers(getattr(module, "model", module))
    reuse_layers(module, source, layers, reuse.get("source_prefix"))  # meta tensors: names and shapes are compared, nothing is copied


def _called(what: str, config: dict, factory, *args):
    """``factory(*args)``; an argument it does not take, or a value it refuses, is one error."""
    try:
        return factory(*args)
    except DnnkitError:
        raise
    except (TypeError, ValueError) as err:
        raise unknown_argument(config, err, what) or DnnkitError(f"{what}: {str(err).splitlines()[0]}") from None


def check_optimizer(spec: dict) -> None:
    """Call the optimizer factory (and the scheduler's) as ``configure_optimizers`` will."""
    config = spec.get("optimizer")
    if not config or config.get("fused") or not callable(factory := instantiate(config)):
        return  # fused optimizers want their device's parameters
    optimizer = _called("optimizer", config, factory, [torch.nn.Parameter(torch.zeros(1))])
    if spec.get("scheduler") and callable(scheduler := instantiate(spec["scheduler"])):  # interval, lengths: as the fit
        _called("scheduler", spec["scheduler"], lightning_scheduler, scheduler, optimizer)


# ----------------------------------------------------------------------------- callbacks, keys, ranks


def logged_keys(spec: dict) -> tuple[str, ...] | None:
    target = (spec.get("module") or {}).get("_target_")
    try:
        keys = getattr(get_object(target), "logged_keys", None) if isinstance(target, str) else None
    except Exception:  # noqa: BLE001
        return None
    return tuple(keys) if keys else None


def is_logged(key: str, keys) -> bool:
    return key in keys or (key.endswith(("_epoch", "_step")) and key.rsplit("_", 1)[0] in keys)


def near_miss(key: str, keys, strict: bool) -> bool:
    """Whether ``key`` is meant as one of ``keys``: in one of their namespaces (``strict``), or
    close to one of them."""
    namespaces = {k.split("/")[0] for k in keys}
    if strict and "/" in key and key.split("/")[0] in namespaces:
        return True
    return key.replace("_", "/", 1) in keys or bool(difflib.get_close_matches(key, keys, n=1, cutoff=0.8))


def strict_about(spec: dict) -> bool:
    """Only dnnkit's and Lightning's callbacks in the stage: none logs under the module's namespaces."""
    callbacks = (spec.get("callbacks") or {}).values()
    return all(not isinstance(c, dict) or str(c.get("_target_", "")).startswith(OURS) for c in callbacks)


def check_callbacks(spec: dict, module: torch.nn.Module | None, keys: tuple[str, ...] | None) -> None:
    epochs = (spec.get("trainer") or {}).get("max_epochs")
    for name, cb in (spec.get("callbacks") or {}).items():
        if not isinstance(cb, dict):
            continue
        frozen, trainable = cb.get("frozen"), cb.get("trainable")
        if module is not None and (frozen is None) != (trainable is None):
            if not left_trainable(module, frozen, trainable):
                which = f"frozen={frozen!r}" if frozen is not None else f"trainable={trainable!r}"
                raise DnnkitError(
                    f"callbacks.{name}: {which} freezes every parameter of the model, so the optimizer would get an empty "
                    f"parameter list; leave a layer to train (e.g. callbacks.{name}.frozen=null callbacks.{name}.trainable=output)"
                )
        at = cb.get("unfreeze_at_epoch")
        if isinstance(at, int) and isinstance(epochs, int) and epochs > 0 and at >= epochs:
            raise DnnkitError(
                f"callbacks.{name}.unfreeze_at_epoch={at} is beyond trainer.max_epochs={epochs}: the layers would never "
                f"unfreeze; use 0..{epochs - 1} or null"
            )
        monitor = cb.get("monitor")
        fit = sorted(k for k in keys or () if not k.startswith("test/"))
        if fit and isinstance(monitor, str) and not is_logged(monitor, fit):
            owner = str(spec["module"]["_target_"]).rsplit(".", 1)[-1]
            valid = f"valid: {', '.join(fit)} (or null)"
            if monitor in keys:
                raise DnnkitError(f"callbacks.{name}.monitor={monitor!r} is logged only when testing, after the fit; {valid}")
            if near_miss(monitor, keys, strict_about(spec)):
                raise DnnkitError(f"callbacks.{name}.monitor={monitor!r} is not a key {owner} logs while fitting; {valid}")
            if strict_about(spec):  # early stopping on a key nobody logs would fail at the first validation
                check_early_stopping(name, cb, spec, fit)


def world_size(trainer: dict) -> int | None:
    """The number of ranks ``trainer``'s devices and nodes make; None where it depends on the
    machine (``devices: auto`` or -1)."""
    devices, nodes, n = trainer.get("devices", "auto"), trainer.get("num_nodes", 1), None
    if isinstance(devices, int) and not isinstance(devices, bool):
        n = devices if devices > 0 else None
    elif isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, str) and devices.strip().isdigit():
        n = int(devices) or None
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    if n is None:
        return None
    return n * (nodes if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes > 0 else 1)


def check_ranks(spec: dict, datamodule, facts: dict) -> None:
    """Under DDP every rank takes its share of the training batches: at least one each."""
    trainer = spec.get("trainer") or {}
    ranks, train, batch = world_size(trainer), facts.get("train"), getattr(datamodule, "batch_size", None)
    if not ranks or ranks < 2 or not isinstance(train, int) or not isinstance(batch, int) or batch < 1:
        return
    batches = -(-train // batch)
    if batches < ranks:
        fix = f"use data.batch_size <= {train // ranks}, more data, or fewer devices" if train >= ranks else f"use at most {train} devices"
        raise DnnkitError(
            f"trainer.devices={trainer.get('devices')} x trainer.num_nodes={trainer.get('num_nodes', 1)} makes {ranks} ranks, but the "
            f"{train} training images in batches of data.batch_size={batch} are {batches} batch{'' if batches == 1 else 'es'}: "
            f"{batches // ranks} per rank; {fix}"
        )


def check_reported(specs: list[tuple[str, dict]], keys: dict[str, tuple[str, ...] | None]) -> None:
    """``report.metrics`` and ``published.metric`` name keys the stages' modules log."""
    metrics = (specs[0][1].get("report") or {}).get("metrics", ["val/acc", "test/acc"])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise DnnkitError(f"report.metrics must be a list of metric keys such as [val/acc, test/acc], got {metrics!r}")
    known = sorted({k for ks in keys.values() if ks for k in ks})
    if not known:
        return
    strict = all(keys.values()) and all(strict_about(spec) for _, spec in specs)
    valid = f"is not a key the stages' modules log; valid: {', '.join(known)}"
    for metric in metrics:
        if not is_logged(metric, known) and near_miss(metric, known, strict):
            raise DnnkitError(f"report.metrics: {metric!r} {valid}")
    for name, spec in specs:
        metric = (spec.get("published") or {}).get("metric")
        if isinstance(metric, str) and not is_logged(metric, known) and near_miss(metric, known, strict):
            raise DnnkitError(f"stage {name!r}: published.metric {metric!r} {valid}")
    name, spec = specs[-1]  # optimized_metric: what python -m dnnkit.train returns (to a sweeper), the last stage's
    objective, logs = spec.get("optimized_metric"), keys.get(name) or ()
    untested, key = spec.get("test") is False and str(objective).startswith("test/"), str(objective)
    if logs and objective is not None and (untested or not is_logged(key, logs) and (strict_about(spec) or near_miss(key, logs, True))):
        valid = ", ".join(k for k in logs if not (untested and k.startswith("test/")))
        why = " with test=false" if untested else ""
        raise DnnkitError(f"optimized_metric={objective!r} is not a key stage {name!r} logs{why}; valid: {valid}")
