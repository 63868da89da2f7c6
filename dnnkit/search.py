"""How many layers to reuse: the seed's "iterate until you find the right number of layers to
reuse", as one stage. A stage whose ``reuse`` has a ``search``::

    stages:
      search:
        data: {classes: [5, 6, 7, 8, 9], n_per_class: 100}
        reuse:
          from: A
          search: {modes: [frozen, fine_tuned], top: drop}

tries reusing the lowest k = 1 ... N of the source's layers (``search.layers``, by default the
layers a plain ``reuse`` copies: ``hidden.*`` of an MLP), each in every mode:

- ``frozen``: the k layers frozen, the layers above trained on their cached outputs (unless the
  data or trainer rule it out: :meth:`~dnnkit.modules.bundle.TryBundle.fit`);
- ``fine_tuned``: the k layers trained on from the source's weights.

``top: drop`` (the default, the seed's first advice) drops the layers above k and puts a new
output on layer k; ``top: replace`` keeps the stage's shape, the layers above k trained from new
weights ("if you have plenty of training data, you may try replacing the top hidden layers").
Each try is the stage with that ``reuse`` and freezing, early stopping's ``patience`` set to
``search.patience`` (5; null keeps the stage's). By default (``parallel: true``) all tries are
fitted side by side (:class:`~dnnkit.modules.bundle.TryBundle`: each exactly as on its own; the
frozen tries in one plain loop on their layers' cached outputs, the others in one Lightning loop,
instead of one loop per try); ``parallel: false`` fits each as its own
stage in ``<stage>/<mode>_k<k>/`` (any callback, scheduler or clipping; resumable try by try).
Tries are not tested; the try with the best ``search.monitor`` (``val/acc``, maximised, over its
epochs) is then tested and exported in ``<stage>/<mode>_k<k>/``, and is what the stage reports
and what a later ``reuse: {from: <stage>}`` takes. ``search.png`` plots the monitor against k
for each mode, ``search.md`` lists every try. A try that fails on its own is reported and the
search goes on; when every try fails, the error lists each one.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dnnkit.errors import DnnkitError, choose, number
from dnnkit.results import StageResult

log = logging.getLogger(__name__)

MODES = ("frozen", "fine_tuned")
TOPS = ("drop", "replace")
DEFAULTS = {"layers": None, "k": None, "modes": list(MODES), "top": "drop", "monitor": "val/acc", "mode": "max", "patience": 5,
            "parallel": True}
# what a parallel search (dnnkit/modules/bundle.py) does itself or does without: other callbacks need parallel=false
PARALLEL_CALLBACKS = ("checkpoint", "early_stopping", "layer_freezing", "epoch_summary", "progress_bar", "last_checkpoint",
                      "rng_state", "non_finite")


def search_of(cfg: DictConfig | Mapping) -> dict | None:
    """The stage's ``reuse.search`` with its defaults filled in and checked, or None."""
    reuse = cfg.get("reuse") or {}
    spec = reuse.get("search") if isinstance(reuse, Mapping) or OmegaConf.is_config(reuse) else None
    if spec is None:
        return None
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise DnnkitError(f"reuse.search: unknown keys {unknown}; valid: {sorted(DEFAULTS)}")
    spec = {**DEFAULTS, **spec}
    modes = spec["modes"]
    if isinstance(modes, str):
        modes = [modes]
    if not modes or not isinstance(modes, list):
        raise DnnkitError(f"reuse.search.modes must be a non-empty list of {', '.join(MODES)}, got {spec['modes']!r}")
    spec["modes"] = [choose("reuse.search mode", m, MODES) for m in modes]
    choose("reuse.search.top", spec["top"], TOPS)
    choose("reuse.search.mode", spec["mode"], ("max", "min"))
    number("reuse.search.patience", spec["patience"], 1, integer=True, optional=True)
    if not isinstance(spec["parallel"], bool):
        raise DnnkitError(f"reuse.search.parallel must be true or false, got {spec['parallel']!r}")
    if spec["parallel"]:
        check_parallel(cfg)
    if reuse.get("layers") is not None or any(reuse.get(k) is not None for k in ("drop", "add")):
        raise DnnkitError("reuse.search chooses the layers to reuse: give the candidates as reuse.search.layers, "
                          "not reuse.layers, reuse.drop or reuse.add")
    seeds = cfg.get("seeds")
    if seeds is not None and len(seeds) > 1:
        raise DnnkitError(f"a stage with reuse.search runs one seed (set seed=...), got seeds={list(seeds)!r}")
    return spec


def check_parallel(cfg) -> None:
    """What a parallel search cannot do as each try's own fit would, refused with the way out."""
    way_out = "; set reuse.search.parallel=false to fit each try on its own"
    unsupported = sorted(k for k, v in (cfg.get("callbacks") or {}).items() if v is not None and k not in PARALLEL_CALLBACKS)
    if unsupported:
        raise DnnkitError(f"a parallel reuse search fits every try in one loop and runs none of the callbacks {unsupported}{way_out}")
    if (cfg.get("scheduler") or {}).get("_target_") or (cfg.get("trainer") or {}).get("gradient_clip_val"):
        raise DnnkitError(f"a parallel reuse search takes no scheduler and no trainer.gradient_clip_val{way_out}")
    bounds = [k for k in ("min_epochs", "min_steps", "max_time") if (cfg.get("trainer") or {}).get(k) is not None]
    if bounds:  # each try stops on its own early stopping; one loop cannot keep each to these
        raise DnnkitError(f"a parallel reuse search takes no trainer.{', trainer.'.join(bounds)}{way_out}")
    if str((cfg.get("optimizer") or {}).get("_target_", "")).endswith("LBFGS"):
        raise DnnkitError(f"a parallel reuse search needs an optimizer that updates each parameter on its own, not LBFGS{way_out}")


def depths(spec: dict, names: list[str]) -> list[int]:
    """The k to try: ``search.k`` (a list such as [1, 3, 5], or [low, high] as ``{low: 1, high: 5}``),
    by default 1 ... ``len(names)``; each within the source's ``len(names)`` layers."""
    k = spec["k"]
    if k is None:
        ks = list(range(1, len(names) + 1))
    elif isinstance(k, Mapping):
        ks = list(range(int(k.get("low", 1)), int(k.get("high", len(names))) + 1))
    else:
        ks = [k] if isinstance(k, int) else list(k)
    bad = [x for x in ks if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= len(names)]
    if bad or not ks:
        raise DnnkitError(
            f"reuse.search.k={k!r}: each k must be an integer in 1..{len(names)}, the source's {len(names)} "
            f"candidate layers ({', '.join(names)})"
        )
    return sorted(set(ks))


def candidate_layers(cfg: DictConfig, spec: dict) -> tuple[list[str], list[str]]:
    """The names of the layers the search may reuse, bottom first: those of the stage's own model
    (which has the source's shape) matching ``search.layers`` (default: what ``reuse`` copies);
    and the names of all its layers, in order."""
    from dnnkit.build import build_module
    from dnnkit.nn.select import select_layers
    from dnnkit.nn.surgery import reusable_layers

    plain = OmegaConf.merge(cfg, {"reuse": None})  # the stage's model before any surgery
    if OmegaConf.select(plain, "model.weights") is not None:
        plain.model.weights = None
    with torch.device("meta"):
        model = build_module(plain)
    model = getattr(model, "model", model)
    names = [n for n in select_layers(model, spec["layers"] or reusable_layers(model)) if "." not in n]
    return names, [n for n, _ in model.named_children()]


def try_config(cfg: DictConfig, spec: dict, names: list[str], order: list[str], mode: str, k: int) -> DictConfig:
    """The config of one try: reuse the lowest ``k`` of ``names`` (``order``: all the model's
    layers), ``frozen`` (and cached) or ``fine_tuned``; the layers above dropped (a new output
    on layer k) or replaced. :func:`run_search` fits it without test and export, then tests and
    exports the pick as the stage says."""
    reused = "|".join(names[:k])
    reuse = {key: v for key, v in OmegaConf.to_container(cfg.reuse, resolve=False).items() if key != "search"}
    reuse["layers"] = reused
    above = order[order.index(names[k - 1]) + 1:]
    if spec["top"] == "drop" and above:
        reuse["drop"] = "|".join(above)  # the output among them: restack builds a new one
    callbacks = OmegaConf.to_container(cfg.get("callbacks") or {}, resolve=False)
    callbacks.pop("layer_freezing", None)
    if mode == "frozen":
        callbacks["layer_freezing"] = {"frozen": reused, "trainable": None, "cache": True, "verbose": False,
                                       "_target_": "dnnkit.callbacks.LayerFreezing"}
    if spec["patience"] is not None and isinstance(callbacks.get("early_stopping"), dict):
        callbacks["early_stopping"] = {**callbacks["early_stopping"], "patience": spec["patience"]}
    out = OmegaConf.merge(cfg, {})
    out.reuse, out.callbacks = reuse, callbacks
    return out


def tries(name: str, cfg: DictConfig) -> list[tuple[str, int, DictConfig]]:
    """``(mode, k, config)`` of every try of the search stage ``name``, in the order they run."""
    spec = search_of(cfg)
    names, order = candidate_layers(cfg, spec)
    return [(mode, k, try_config(cfg, spec, names, order, mode, k)) for mode in spec["modes"] for k in depths(spec, names)]


def expand(stages: list[tuple[str, DictConfig]]) -> list[tuple[str, DictConfig]]:
    """``stages`` with each search stage replaced by its tries (``<stage>/<mode>_k<k>``): what
    :func:`dnnkit.preflight.preflight` checks, each try as the stage it is."""
    out = []
    for name, cfg in stages:
        if search_of(cfg) is None:
            out.append((name, cfg))
        else:
            out += [(f"{name}/{mode}_k{k}", c) for mode, k, c in tries(name, cfg)]
    return out


def pick(rows: list[dict], monitor: str, mode: str) -> dict:
    """The try with the best ``monitor`` among ``rows`` that have it (``max`` or ``min``); the
    first such on a tie. Raises when no try has a value, listing each try's error.

    Example::

        >>> pick([{"try": "frozen_k1", "value": 0.8}, {"try": "fine_tuned_k1", "value": 0.9}], "val/acc", "max")["try"]
        'fine_tuned_k1'
    """
    scored = [r for r in rows if r.get("value") is not None and r["value"] == r["value"]]  # not NaN
    if not scored:
        lines = "\n".join(f"  {r['try']}: {r.get('error') or f'no {monitor} logged'}" for r in rows)
        raise DnnkitError(f"every try of the reuse search failed or logged no {monitor}:\n{lines}")
    return (max if mode == "max" else min)(scored, key=lambda r: r["value"])


def best_value(history: list[dict], key: str, mode: str) -> float | None:
    """The best ``key`` over a fit's epochs (``max`` or ``min``), None if never logged.

    Example::

        >>> best_value([{"val/acc": 0.8}, {"val/acc": 0.9}, {"val/acc": 0.85}], "val/acc", "max")
        0.9
    """
    values = [h[key] for h in history if h.get(key) is not None]
    return (max if mode == "max" else min)(values) if values else None


RunOne = Callable[[str, DictConfig, int, Path], StageResult]


def run_search(name: str, cfg: DictConfig, seed: int, stage_dir: Path, run_one: RunOne, test_pick: RunOne,
               build: Callable[[str, DictConfig, int], torch.nn.Module]) -> StageResult:
    """Run every try of the search stage ``name`` (each on its own with ``run_one``, which fits or
    loads one; or all in one fit of a :class:`~dnnkit.modules.bundle.TryBundle` of the modules
    ``build`` makes), test the pick (``test_pick``), write ``search.md``/``search.png``; the pick's
    result (its ``dir`` the pick's folder), named ``name``, with ``search`` (the tries),
    ``fit_seconds`` the tries' fits and ``wall_seconds`` the whole search's."""
    spec = search_of(cfg)
    start = time.perf_counter()
    configs = {f"{mode}_k{k}": (mode, k, c) for mode, k, c in tries(name, cfg)}
    if spec["parallel"]:
        rows, seconds = fit_parallel(name, configs, spec, seed, stage_dir, build)
    else:
        rows = [fit_alone(name, label, c, spec, seed, stage_dir, run_one) for label, (_, _, c) in configs.items()]
        seconds = sum(r["fit_seconds"] or 0.0 for r in rows)
    best = pick(rows, spec["monitor"], spec["mode"])
    chosen = OmegaConf.merge(configs[best["try"]][2], {"resume": True})  # fitted (fit.json), not yet tested
    if spec["parallel"]:
        chosen.callbacks.layer_freezing = None  # the test needs neither the freezing nor its cache
    result = test_pick(f"{name}/{best['try']}", chosen, seed, stage_dir / best["try"])
    result.stage, result.fit_seconds = name, seconds
    result.wall_seconds = time.perf_counter() - start  # this command's: a resumed search counts only what it redid
    result.search = {"monitor": spec["monitor"], "pick": best["try"], "tries": rows, "wall_seconds": result.wall_seconds,
                     "parallel": spec["parallel"]}
    save_search(stage_dir, result.search)
    return result


def fit_alone(name: str, label: str, try_cfg: DictConfig, spec: dict, seed: int, stage_dir: Path, run_one: RunOne) -> dict:
    """One try fitted as its own stage in ``<stage>/<label>`` (loaded if it finished earlier): its row."""
    mode, k = label.rsplit("_k", 1)
    row = {"try": label, "mode": mode, "k": int(k), "value": None, "epochs": None, "fit_seconds": None, "error": None}
    try:
        r = run_one(f"{name}/{label}", OmegaConf.merge(try_cfg, {"test": False, "export": False}), seed, stage_dir / label)
    except DnnkitError as err:
        row["error"] = str(err).splitlines()[0]
    except Exception as err:  # noqa: BLE001 - one failing try is reported, the others still run
        from dnnkit import interrupt

        if isinstance(err, interrupt.Interrupted):
            raise
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    else:
        row.update(value=best_value(r.history, spec["monitor"], spec["mode"]), epochs=r.epochs, fit_seconds=r.fit_seconds)
    if row["error"]:
        log.warning("search %s: try %s failed: %s", name, label, row["error"])
    return row


def fit_parallel(name: str, configs: dict, spec: dict, seed: int, stage_dir: Path, build) -> tuple[list[dict], float]:
    """Every try in one fit (:class:`~dnnkit.modules.bundle.TryBundle`): the rows and the fit's
    seconds. The pick's best state is written as ``<stage>/<pick>/checkpoints/best.ckpt`` with its
    ``fit.json``, so the runner tests and exports it as any fitted stage; ``<stage>/tries.json``
    keeps the rows, so a resumed search goes straight to that test."""
    import lightning as L

    from dnnkit.build import instantiate
    from dnnkit.interrupt import StopOnSignal
    from dnnkit.io import atomic_write
    from dnnkit.modules.bundle import TryBundle
    from dnnkit.nn.freeze import freeze

    saved = stage_dir / "tries.json"
    if saved.is_file():
        data = json.loads(saved.read_text())
        log.info("stage %s: tries fitted earlier, loaded from %s", name, saved)
        return data["tries"], data["seconds"]
    members = {}
    for label, (mode, _, c) in configs.items():
        c = OmegaConf.merge(c, {"seed": seed})
        L.seed_everything(seed, workers=True, verbose=False)  # as the try's own stage: the same new layers
        instantiate(c.data, _convert_="all")
        members[label] = build(f"{name}/{label}", c, seed)
        if mode == "frozen":
            freeze(members[label].model, c.reuse.layers)
    first = OmegaConf.merge(next(iter(configs.values()))[2], {"seed": seed})
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = instantiate(first.data, _convert_="all")
    callbacks = first.get("callbacks") or {}
    best = callbacks.get("checkpoint") or {}
    stop = callbacks.get("early_stopping")
    frozen = {label: [f"model.{n}" for n in c.reuse.layers.split("|")] for label, (mode, _, c) in configs.items() if mode == "frozen"}
    bundle = TryBundle(members, instantiate(first.optimizer), (best.get("monitor") or "val/acc", best.get("mode", "max")),
                       (stop.monitor, stop.get("mode", "min"), int(stop.patience), float(stop.get("min_delta", 0.0))) if stop else None,
                       frozen)
    trainer = instantiate(first.trainer, callbacks=[StopOnSignal()], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, default_root_dir=str(stage_dir))
    log.info("stage %s: %d tries fitted side by side in one loop", name, len(members))
    started = time.perf_counter()
    with warnings.catch_warnings():  # frozen layers are pinned in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval")
        bundle.fit(trainer, datamodule)
    seconds = time.perf_counter() - started
    rows = [{"try": label, "mode": mode, "k": k, "value": best_value(bundle.history[label], spec["monitor"], spec["mode"]),
             "epochs": bundle.stopped.get(label), "fit_seconds": None, "error": None}
            for label, (mode, k, _) in configs.items()]
    chosen = pick(rows, spec["monitor"], spec["mode"])["try"]
    write_fitted(stage_dir / chosen, f"{name}/{chosen}", seed, bundle, chosen, seconds)
    atomic_write(saved, json.dumps({"tries": rows, "seconds": seconds}, indent=1))
    return rows, seconds


def write_fitted(folder: Path, name: str, seed: int, bundle, label: str, seconds: float) -> None:
    """A member's best state as a Lightning checkpoint and its ``fit.json`` (fitted, untested)."""
    import lightning as L

    from dnnkit.io import atomic_write_with
    from dnnkit.run_folder import write_marker

    best = bundle.best[label]
    ckpt = folder / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": bundle.member_state(label), "pytorch-lightning_version": L.__version__,
             "epoch": best["epoch"] or 0, "global_step": 0}
    atomic_write_with(ckpt, lambda f: torch.save(state, f))
    history = bundle.history[label]
    metrics = next((dict(h) for h in history if h["epoch"] == best["epoch"]), {})
    metrics.pop("epoch", None)
    result = StageResult(name, seed, folder, metrics, history, str(ckpt), seconds, bundle.stopped.get(label, 0))
    write_marker(folder / "fit.json", result, tested=False)


def search_table(search: dict) -> str:
    """The tries as a Markdown table, the pick marked.

    Example::

        >>> print(search_table({"monitor": "val/acc", "pick": "frozen_k1", "tries": [
        ...     {"try": "frozen_k1", "mode": "frozen", "k": 1, "value": 0.9, "epochs": 3, "fit_seconds": 1.5, "error": None}]}))
        | mode | k | val/acc | epochs | fit time | |
        |---|---|---|---|---|---|
        | frozen | 1 | 0.9000 | 3 | 1.5 s | pick |
    """
    lines = [f"| mode | k | {search['monitor']} | epochs | fit time | |", "|---|---|---|---|---|---|"]
    for r in search["tries"]:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        seconds = "-" if r["fit_seconds"] is None else f"{r['fit_seconds']:.1f} s"
        note = "pick" if r["try"] == search["pick"] else (f"failed: {r['error']}" if r["error"] else "")
        lines.append(f"| {r['mode']} | {r['k']} | {value} | {r['epochs'] if r['epochs'] is not None else '-'} | {seconds} | {note} |")
    if search.get("wall_seconds"):
        lines.append(f"\nThe whole search, {len(search['tries'])} tries and the pick's test: {search['wall_seconds']:.1f} s wall.")
    return "\n".join(lines)


def save_search(stage_dir: Path, search: dict) -> None:
    """``search.md`` (the tries) and ``search.png`` (the monitor against k, a line per mode)."""
    from dnnkit.io import atomic_write
    from dnnkit.plots import save_search_plot

    atomic_write(stage_dir / "search.md", search_table(search) + "\n")
    log.info("reuse search (%s):\n%s", stage_dir.name, search_table(search))
    try:
        save_search_plot(stage_dir / "search.png", search)
    except Exception as err:  # noqa: BLE001 - a plot that fails loses no result
        log.warning("could not draw %s: %s", stage_dir / "search.png", err)
