"""Building a stage's objects from its config: Hydra's ``instantiate`` with dnnkit's errors, and
the LightningModule of a stage (shared by the runner and, on the meta device, the preflight)."""

from __future__ import annotations

import inspect
import re

import torch
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from dnnkit.errors import DnnkitError, find_dnnkit_error
from dnnkit.nn.surgery import restack

SURGERY = ("drop", "add", "n_outputs", "init", "init_distribution")  # reuse keys that reshape the model


def instantiate(config, *args, **kwargs):
    """Hydra's ``instantiate``; a DnnkitError comes out as itself, an unknown argument as one."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except Exception as err:
        ours = find_dnnkit_error(err) or unknown_argument(config, err)
        if ours is None:
            raise
        raise ours from None


def unknown_argument(config, err: BaseException, what: str | None = None) -> DnnkitError | None:
    """One error naming the argument and the valid ones, if ``err`` says ``config``'s target got
    an argument it does not take."""
    while err is not None:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if found and isinstance(config, dict) and isinstance(config.get("_target_"), str):
            target = config["_target_"]
            try:
                valid = [n for n in inspect.signature(get_object(target)).parameters if n not in ("self", "params", "args", "kwargs")]
            except Exception:  # noqa: BLE001
                valid = []
            name = target.rsplit(".", 1)[-1]
            return DnnkitError(f"{what or target}: {name} takes no argument {found.group(1)!r}; valid: {', '.join(sorted(valid))}")
        err = err.__cause__ or err.__context__
    return None


def build_module(cfg: DictConfig) -> torch.nn.Module:
    """The stage's LightningModule: its model (reshaped by ``reuse``'s surgery keys, before the
    weights are copied), optimizer and scheduler factories, and module; the runner's and, on the
    meta device, :func:`dnnkit.preflight.meta_module`'s."""
    model = instantiate(cfg.model, _convert_="all")
    reuse = cfg.get("reuse") or {}
    surgery = {k: reuse[k] for k in SURGERY if reuse.get(k) is not None}
    if surgery:
        model = restack(model, **OmegaConf.to_container(OmegaConf.create(surgery)))
    optimizer = instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return instantiate(cfg.module, model=model, optimizer=optimizer, scheduler=scheduler, _convert_="all")
