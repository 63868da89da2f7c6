"""Configs as pure diffs change no number and lose no key: every recipe stage resolves as it
did before, and every key a command line could set before still exists.

``tests/fixtures/stage_snapshot.json`` holds, for each command below, every stage's resolved
config (``dnnkit.stages.stage_configs`` on the composed config, ``_target_`` included) as it was
recorded from the configs that restated their ``_target_``s inline, before recipes became diffs
of the options. A command added later is recorded with::

    python -m tests.test_conf_diffs --write     # records the commands missing from the fixture

which never rewrites a command already recorded (that is the guard); ``--force`` does, for a
deliberate change of numbers, and then the commit should say which numbers changed and why.
``tests/fixtures/cli_keys.json`` holds, for the same commands, every key path of the composed
config (``stages.frozen_cached.callbacks.layer_freezing.cache``, ...) as the configs before the change
had them (``--conf DIR`` records from another copy of ``conf/``, e.g. ``git archive HEAD conf``).

What "resolves the same" means: every constructor gets the same arguments, with no numeric
tolerance. A recipe that now uses an option has that option's keys written out, so a key absent
on one side counts as the default its ``_target_``'s signature gives it (``betas: [0.9, 0.999]``
where an inline Adam left torch's ``(0.9, 0.999)``; tuple vs list is the one difference of
representation allowed, as JSON has no tuples). Any other difference fails. One flag may be
added: ``_convert_: all``, which the Adam-family options carry so that their ``betas`` list
reaches torch as a plain list (a ListConfig in the optimizer's state would stop checkpoints
loading with ``weights_only=True``). It is allowed only where the recorded entry
had no list or dict argument at all, so there was nothing for it to convert.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

from dnnkit.stages import config_dir, stage_configs
from tests.conftest import compose_config, recipe_overrides

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "stage_snapshot.json"
KEYS_FIXTURE = FIXTURE.with_name("cli_keys.json")
RECIPES = sorted(p.stem for p in (config_dir() / "recipe").glob("*.yaml"))
COMMANDS: dict[str, list[str]] = {
    "base": [],
    **{f"+recipe={r}": recipe_overrides(r) for r in RECIPES},
    "+recipe=unsupervised pretrain=rbm": ["+recipe=unsupervised", "pretrain=rbm"],
    "+recipe=unsupervised pretrain=contrastive": ["+recipe=unsupervised", "pretrain=contrastive"],
    "+recipe=auxiliary task=pairs": ["+recipe=auxiliary", "task=pairs"],
    "trainer=ddp": ["trainer=ddp"],
    "data=fashion_mnist": ["data=fashion_mnist"],
    "callbacks=[default,gradient_clipping] callbacks.checkpoint.monitor=null":
        ["callbacks=[default,gradient_clipping]", "callbacks.checkpoint.monitor=null"],
}


def resolved_stages(overrides: list[str]) -> dict[str, dict]:
    """``{stage name: resolved config}`` in stage order, as plain JSON-able containers."""
    cfg = compose_config(overrides)
    return {name: OmegaConf.to_container(stage, resolve=True) for name, stage in stage_configs(cfg)}


def as_json(value):
    """Tuples become lists, as JSON stores them: the one representation difference allowed."""
    return json.loads(json.dumps(value))


def recorded(fixture: Path = FIXTURE) -> dict:
    return json.loads(fixture.read_text()) if fixture.is_file() else {}


def cli_keys(overrides: list[str], conf: Path | None = None) -> list[str]:
    """Every key path of the composed config (not the ``_target_``-like ones), as ``a.b.c``."""
    with initialize_config_dir(config_dir=str(conf or config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=overrides), resolve=False)
    return sorted(_paths(cfg))


def _paths(node, prefix: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            if not str(k).startswith("_"):
                yield f"{prefix}{k}"
                yield from _paths(v, f"{prefix}{k}.")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_key_a_command_line_could_set_still_exists(command):
    """``stages.frozen_cached.callbacks.layer_freezing.cache=false`` and the like keep working without ``+``."""
    before = recorded(KEYS_FIXTURE)
    if command not in before:
        pytest.fail(f"{command!r} is not recorded: run `python -m tests.test_conf_diffs --write`")
    assert sorted(set(before[command]) - set(cli_keys(COMMANDS[command]))) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_stage_resolves_as_recorded(command):
    snapshot = recorded()
    if command not in snapshot:
        pytest.fail(f"{command!r} is not recorded: run `python -m tests.test_conf_diffs --write`")
    now = as_json(resolved_stages(COMMANDS[command]))
    before = snapshot[command]
    assert list(now) == list(before), "the stages (or their order) changed"
    for stage in before:
        after = drop_added_convert(before[stage], now[stage])
        assert differences(effective(before[stage]), effective(after)) == [], f"stage {stage!r} of {command!r}"


@functools.cache
def constructor_defaults(target: str) -> dict:
    """The keyword defaults of ``target`` (a class: its ``__init__``, following ``**kwargs`` up
    the base classes, as ``AuxiliaryDataModule`` passes them to ``MNISTDataModule``)."""
    obj = get_object(target)
    chain = [c for c in obj.__mro__ if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    defaults: dict = {}
    for fn in chain:
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.default is not inspect.Parameter.empty and p.name not in defaults:
                defaults[p.name] = as_json(p.default)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return defaults


def effective(node):
    """``node`` with every argument its ``_target_`` takes by default written out."""
    if isinstance(node, list):
        return [effective(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: effective(v) for k, v in node.items()}
    if isinstance(out.get("_target_"), str):
        for name, default in constructor_defaults(out["_target_"]).items():
            out.setdefault(name, default)
    return out


def drop_added_convert(before, after):
    """``after`` without a ``_convert_`` that ``before`` lacked where ``before`` had nothing to convert."""
    if isinstance(before, dict) and isinstance(after, dict):
        after = {k: drop_added_convert(before.get(k), v) for k, v in after.items()}
        nothing_to_convert = not any(isinstance(v, (dict, list)) for k, v in before.items() if not k.startswith("_"))
        if "_target_" in before and "_convert_" not in before and after.get("_convert_") == "all" and nothing_to_convert:
            del after["_convert_"]
    return after


def differences(before, after, path: str = "") -> list[str]:
    """Where two resolved configs differ, as ``path: before -> after`` lines."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in [*before, *(k for k in after if k not in before)]:
            if k not in before or k not in after:
                out.append(f"{path}.{k}: {before.get(k, '<absent>')!r} -> {after.get(k, '<absent>')!r}")
            else:
                out += differences(before[k], after[k], f"{path}.{k}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{path}[{i}]")]
    same = type(before) is type(after) and before == after  # 1 and 1.0 and True differ here
    return [] if same else [f"{path}: {before!r} -> {after!r}"]


def test_the_comparison_sees_a_changed_number():
    """The guard is not vacuous: optimizer=adam's eps differs from the eps an inline Adam had."""
    before = {"optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001}}
    option = {"optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "_convert_": "all", "lr": 0.001,
                            "betas": [0.9, 0.999], "eps": 1e-7}}
    kept = {"optimizer": {**option["optimizer"], "eps": 1e-8}}
    assert differences(effective(before), effective(drop_added_convert(before, option))) == [".optimizer.eps: 1e-08 -> 1e-07"]
    assert differences(effective(before), effective(drop_added_convert(before, kept))) == []
    sgd = {"a": {"_target_": "torch.optim.SGD", "lr": 0.1}}
    assert differences(sgd, {"a": {**sgd["a"], "_convert_": "all"}})  # a flag only drop_added_convert excuses


def test_recipes_restate_no_target_an_option_provides():
    """Every ``_target_`` left in conf/recipe/ (and in conf/pretrain/, the unsupervised recipe's
    parts) names a class or function that no option of a config group provides."""
    conf = config_dir()
    recipes = [*conf.glob("recipe/*.yaml"), *conf.glob("pretrain/*.yaml")]
    provided = {t for path in set(conf.glob("*/*.yaml")) - set(recipes) for t in _targets(_load(path))}
    restated = sorted(f"{path.relative_to(conf)}: {t}" for path in recipes for t in _targets(_load(path)) if t in provided)
    assert restated == []


def _load(path: Path):
    return OmegaConf.to_container(OmegaConf.load(path))


def _targets(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


def main(argv: list[str]) -> None:
    force = "--force" in argv
    if "--write" not in argv and not force:
        raise SystemExit("usage: python -m tests.test_conf_diffs --write [--force] [--conf DIR]")
    conf = Path(argv[argv.index("--conf") + 1]).resolve() if "--conf" in argv else None
    for fixture, record in ((FIXTURE, resolved_stages), (KEYS_FIXTURE, functools.partial(cli_keys, conf=conf))):
        if fixture is FIXTURE and conf is not None:
            continue  # stage merging reads conf/'s options: the stage snapshot comes from this checkout only
        snapshot = {} if force else recorded(fixture)
        added = [c for c in COMMANDS if c not in snapshot]
        for command in added:
            snapshot[command] = as_json(record(COMMANDS[command]))
        fixture.parent.mkdir(parents=True, exist_ok=True)
        fixture.write_text(json.dumps(dict(sorted(snapshot.items())), indent=1) + "\n")
        print(f"recorded {len(added)} command(s) in {fixture}: {added}")


if __name__ == "__main__":
    main(sys.argv[1:])
