"""Stages: one or more fits in one command, a later stage taking weights from an earlier one.

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
replaces the base's whole (switching ``optimizer`` from SGD to Adam drops SGD's ``momentum``);
a string under a config-group key names that group's option (``optimizer: adam`` loads
``conf/optimizer/adam.yaml``); a callback the base does not have, given without ``_target_``
(``callbacks: {layer_freezing: {frozen: null, trainable: output}}``), is that option of
``conf/callbacks/`` with these values. A dict with ``_option_: NAME`` is another option with
these values: under a config-group key it replaces the base's entry by ``conf/<group>/NAME.yaml``
merged with the other keys (``optimizer: {_option_: momentum, lr: 0.05}``, ``data: {_option_:
auxiliary, batch_size: 128}``), under ``callbacks`` by the entry of ``conf/callbacks/NAME.yaml``.
Setting a stage (or a callback) to ``null`` removes it. An option file may extend others of its
group with a Hydra defaults list (``defaults: [default, _self_]``), here as under Hydra.

``reuse`` may also reshape the model before copying (:func:`dnnkit.nn.surgery.restack`):
``reuse: {from: A, drop: "hidden[45]|output", add: [20]}`` builds the stage's model (by default
the same shape as A's), drops its top two hidden layers and output, adds a new 20-unit
``hidden4`` and a new output, then copies every layer it kept (hidden1-3) from A.

Everything here is checked before the first stage trains: :func:`stage_configs` fails on an
unknown key, bad ``seeds`` or ``published``, or a ``reuse.from`` that names no earlier stage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dnnkit.errors import DnnkitError, choose

CONFIG_DIR_SOURCE = Path(__file__).resolve().parent.parent / "conf"
CONFIG_DIR_INSTALLED = Path(__file__).resolve().parent / "conf"
GROUPS = ("data", "model", "module", "optimizer", "scheduler", "trainer", "logger")
STAGE_KEYS = ("reuse", "seeds", "published", "fit")  # stage-only keys, not part of the base config
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")  # `reuse.from` may name such a file instead of a stage


def config_dir() -> Path:
    """``conf/`` of a source checkout, else the copy the wheel installs as ``dnnkit/conf``."""
    return CONFIG_DIR_SOURCE if (CONFIG_DIR_SOURCE / "config.yaml").is_file() else CONFIG_DIR_INSTALLED


def _n_classes(classes) -> int:
    return len(classes) if classes else 10


if not OmegaConf.has_resolver("dnnkit.n_classes"):
    OmegaConf.register_new_resolver("dnnkit.n_classes", _n_classes)


def _data_fact(data, fact: str):
    """``input_shape`` or ``num_classes`` of ``data`` built, the datamodule built once per distinct
    data config in a process and each fact read from it once (a folder's shape reads file headers)."""
    key = OmegaConf.to_yaml(data, resolve=True) if isinstance(data, DictConfig) else repr(data)
    if key not in _BUILT:
        from dnnkit.build import instantiate

        _BUILT[key] = {"datamodule": instantiate(data, _convert_="all")}
    facts = _BUILT[key]
    if fact not in facts:
        datamodule = facts["datamodule"]
        if fact == "input_shape":
            if not callable(getattr(datamodule, "input_shape", None)):
                raise DnnkitError(f"{type(datamodule).__name__} has no input_shape(); give the model's input size explicitly")
            facts[fact] = tuple(datamodule.input_shape())
        else:
            facts[fact] = int(datamodule.num_classes)
    return facts[fact]


_BUILT: dict[str, dict] = {}


def _input_shape(data, index=None):
    """``data``'s ``input_shape()`` (``(C, H, W)`` of an image, ``(F,)`` of a feature vector), or
    its ``index``-th entry: ``in_channels: ${dnnkit.input_shape:${data},0}`` in a model config lets
    ``data=folder model=cnn`` need no extra keys. The datamodule is built (cheaply: it reads a
    header or one file, not the data) once per distinct data config in a process."""
    shape = _data_fact(data, "input_shape")
    return list(shape) if index is None else shape[int(index)]


if not OmegaConf.has_resolver("dnnkit.input_shape"):
    OmegaConf.register_new_resolver("dnnkit.input_shape", _input_shape)


def _nominal(data, attr: str):
    """``attr`` of ``data``'s ``_target_`` class (``nominal_input_shape``, ``nominal_num_classes``), or None."""
    target = data.get("_target_") if isinstance(data, (DictConfig, Mapping)) else None
    try:
        from hydra.utils import get_object

        return getattr(get_object(target), attr, None) if isinstance(target, str) else None
    except Exception:  # noqa: BLE001 - a target that does not import: building it says why
        return None


def _input_features(data) -> int:
    """The values in one sample of ``data`` (the product of :func:`_input_shape`): ``n_inputs:
    ${dnnkit.input_features:${data}}`` in model/mlp.yaml. A class with a ``nominal_input_shape``
    (MNIST's 1x28x28) answers without being built, so configs resolve without the data and the
    preflight still checks the model against the files' own header."""
    shape = _nominal(data, "nominal_input_shape") or _input_shape(data)
    return int(math.prod(shape))


def _num_classes(data) -> int:
    """``len(data.classes)``, else the class's ``nominal_num_classes`` (MNIST's 10), else the built
    datamodule's ``num_classes`` (an ``.npz``'s or a torchvision set's labels): ``n_outputs``."""
    if data.get("classes"):
        return len(data.get("classes"))
    nominal = _nominal(data, "nominal_num_classes")
    if nominal:
        return int(nominal)
    return _data_fact(data, "num_classes")


if not OmegaConf.has_resolver("dnnkit.input_features"):
    OmegaConf.register_new_resolver("dnnkit.input_features", _input_features)
if not OmegaConf.has_resolver("dnnkit.num_classes"):
    OmegaConf.register_new_resolver("dnnkit.num_classes", _num_classes)
if not OmegaConf.has_resolver("dnnkit.pid"):  # run folders of jobs started in the same second differ
    OmegaConf.register_new_resolver("dnnkit.pid", os.getpid, use_cache=True)


OPTION = "_option_"  # a stage's dict naming the option it is a diff of (see the module docstring)


def group_option(group: str, option: str) -> dict:
    """The content of ``conf/<group>/<option>.yaml`` as a plain dict, its defaults list composed
    as Hydra composes it (options of the same group, then ``_self_``; ``_self_`` last if absent)."""
    folder = config_dir() / group
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    choose(f"{group} option", option, options)
    content = OmegaConf.to_container(OmegaConf.load(folder / f"{option}.yaml"), resolve=False) or {}
    defaults = content.pop("defaults", None) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    composed = OmegaConf.create()
    for entry in defaults:
        if entry != "_self_" and not (isinstance(entry, str) and "/" not in entry and ":" not in entry):
            raise DnnkitError(
                f"conf/{group}/{option}.yaml: a stage can only compose defaults naming options of the same "
                f"group (such as `- default`) and `_self_`, got {entry!r}"
            )
        part = content if entry == "_self_" else group_option(group, entry)
        composed = OmegaConf.merge(composed, part)  # Hydra's merge: key by key, even across _target_s
    return OmegaConf.to_container(composed, resolve=False)


def callback_option(name: str) -> dict | None:
    """The entry ``name`` of ``conf/callbacks/<name>.yaml``, or None when there is no such option."""
    if not (config_dir() / "callbacks" / f"{name}.yaml").is_file():
        return None
    return group_option("callbacks", name).get(name)


def _named_option(key: str | None, parent: str | None, name) -> dict:
    """The option a stage's ``{_option_: name, ...}`` under ``key`` starts from."""
    if key in GROUPS and parent is None:
        return group_option(key, name)
    if parent == "callbacks":
        found = callback_option(name) if isinstance(name, str) else None
        if found is None:
            options = sorted(p.stem for p in (config_dir() / "callbacks").glob("*.yaml") if callback_option(p.stem))
            raise DnnkitError(f"callbacks.{key}: unknown callbacks option {name!r}; valid: {', '.join(options)}")
        return found
    raise DnnkitError(
        f"{OPTION} names an option of a config group ({', '.join(GROUPS)}) or of callbacks; "
        f"{key!r} is neither (got {OPTION}: {name!r})"
    )


def merge(base, over, key: str | None = None, parent: str | None = None):
    """Merge ``over`` into ``base`` by the rules in the module docstring (plain containers)."""
    if isinstance(over, str) and key in GROUPS and parent is None:
        return group_option(key, over)
    if isinstance(over, dict) and OPTION in over:
        base = _named_option(key, parent, over[OPTION])
        over = {k: v for k, v in over.items() if k != OPTION}
    elif isinstance(over, dict) and base is None and parent == "callbacks" and "_target_" not in over:
        base = callback_option(key)
    if isinstance(over, dict) and isinstance(base, dict) and over.get("_target_", base.get("_target_")) == base.get("_target_"):
        merged = dict(base)
        for k, v in over.items():
            merged[k] = merge(base.get(k), v, k, key)
        return merged
    return over


def stage_configs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """``(stage name, full config)`` for each stage, in order, checked (see module docstring)."""
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
    """``stages``, once their ``seeds``, ``published`` and ``reuse.from`` are known to be usable:
    checked before any stage trains, not when a later stage starts or the table is printed."""
    earlier: list[str] = []
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
        check_reuse_source(name, stage.get("reuse"), earlier)
        earlier.append(name)
    return stages


def check_reuse_source(name: str, reuse, earlier: list[str]) -> None:
    """``reuse.from`` must name an earlier stage or a checkpoint file (.ckpt, .pt, .pth)."""
    if not reuse:
        return
    source = reuse.get("from") if isinstance(reuse, Mapping) else None
    if source in earlier:
        return
    if isinstance(source, str) and source.endswith(CHECKPOINT_SUFFIXES):
        if not Path(source).is_file():
            raise DnnkitError(f"stage {name!r}: checkpoint {source!r} does not exist (reuse.from names no earlier stage)")
        return
    raise DnnkitError(
        f"stage {name!r} reuses from {source!r}, which is neither an earlier stage ({sorted(earlier)}) "
        "nor a checkpoint file (.ckpt, .pt, .pth)"
    )

