"""``TryBundle``: classifiers trained side by side in one fit, each exactly as on its own.

A reuse search (:mod:`dnnkit.search`) fits ten small networks on the same few hundred images;
each fit alone is mostly Lightning's per-step and per-epoch bookkeeping, not arithmetic (1.9 ms
a step for a 505-parameter head, in ``+recipe=reuse_search``). A bundle runs one loop for all:

* every member sees the same batches, in the same order as its own fit would (the datamodule
  and its seed are the stage's);
* one optimizer holds every member's trainable parameters, and the optimizers a stage uses
  (SGD, momentum, Nesterov, AdaGrad, RMSProp, Adam, AdamW) update each parameter from its own
  gradient and state only, so each member steps as its own optimizer would (a parameter without
  a gradient is skipped);
* the loss is the sum of the members' losses, so each member's gradient is its own loss's;
* each member keeps its best state by ``best_by`` (as ``BestCheckpoint`` would, a strictly better
  value), and stops by ``stop_by`` (as Lightning's ``EarlyStopping`` counts: ``patience``
  validations without an improvement larger than ``min_delta``); a stopped member gets no
  gradient, so its parameters and optimizer state stay put; the fit ends when all have stopped.

Without dropout (whose random draws interleave), a member's validation history equals its own
fit's to float rounding (tests/test_reuse_search.py).

Members with a frozen bottom (``frozen``: their frozen layers' names, frozen already with
:func:`dnnkit.nn.freeze`) whose frozen layers equal, weight for weight, the bottom of the member
with the deepest one (a search's frozen tries all hold the source's layers) share its outputs:
each batch goes once through that chain, and each such member computes only its layers above
(the others are skipped, :func:`dnnkit.nn.freeze.skip`). The same operations as each member's
own forward, so the same numbers.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from typing_extensions import override

from dnnkit.modules.base import DnnkitModule
from dnnkit.nn.freeze import NotABottom, frozen_bottom, skip, unskip
from dnnkit.nn.mlp import MLP

log = logging.getLogger(__name__)


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` (None: nothing yet) by more than ``min_delta``."""
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class TryBundle(DnnkitModule):
    """Fit ``members`` (name -> a :class:`~dnnkit.Classifier`) side by side (see the module docstring).

    Args:
        members: the classifiers; each keeps its own frozen layers and loss.
        optimizer: ``optimizer(params) -> Optimizer``, the stage's factory.
        best_by: ``(key, mode)``: ``val/acc`` or ``val/loss``, ``max`` or ``min``: which state is kept.
        stop_by: ``(key, mode, patience, min_delta)``, or None to train every member to the end.

    After the fit, ``history[name]`` holds each member's ``{"epoch", "val/loss", "val/acc"}`` per
    epoch, ``best[name]`` its best ``{"epoch", "value", "state"}`` and ``stopped[name]`` the epoch
    it stopped at (its epochs trained).
    """

    def __init__(self, members: dict[str, nn.Module], optimizer, best_by: tuple[str, str] = ("val/acc", "max"),
                 stop_by: tuple[str, str, int, float] | None = None, frozen: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self._chain, self._depth, self._flatten, self._skipped = share_bottoms(self.members, frozen or {})
        self.optimizer_factory, self.best_by, self.stop_by = optimizer, best_by, stop_by
        self.active = list(members)
        self.history: dict[str, list[dict]] = {n: [] for n in members}
        self.best: dict[str, dict] = {n: {"epoch": None, "value": None, "state": None} for n in members}
        self.stopped: dict[str, int] = {}
        self._stop_best: dict[str, float | None] = dict.fromkeys(members)
        self._wait = dict.fromkeys(members, 0)
        self._sums: dict[str, list[float]] = {}

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each active member's logits for ``x``, the shared frozen chain run once."""
        shared = []
        if self._chain and any(n in self._depth for n in self.active):
            with torch.no_grad():
                h = x.flatten(1) if self._flatten else x
                for layer in self._chain:
                    h = type(layer).forward(layer, h)  # the class's forward: the chain's own layers may be skipped
                    shared.append(h)
        return {n: self.members[n](shared[self._depth[n] - 1] if n in self._depth else x) for n in self.active}

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return sum(self.members[n].loss(logits, y) for n, logits in self.outputs(x).items())

    @override
    def on_validation_epoch_start(self) -> None:
        self._sums = {n: [0.0, 0, 0] for n in self.active}  # loss sum, correct, count

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        for n, logits in self.outputs(x).items():
            sums = self._sums[n]
            sums[0] += float(self.members[n].loss(logits, y)) * len(y)
            sums[1] += int((logits.argmax(1) == y).sum())
            sums[2] += len(y)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        epoch = self.current_epoch + 1
        for n in list(self.active):
            loss, correct, count = self._sums[n]
            row = {"epoch": epoch, "val/loss": loss / count, "val/acc": correct / count}
            self.history[n].append(row)
            key, mode = self.best_by
            if better(row[key], self.best[n]["value"], mode):
                self.best[n] = {"epoch": epoch, "value": row[key],
                                "state": {k: v.detach().clone() for k, v in self.members[n].state_dict().items()}}
            if self.stop_by is not None:
                key, mode, patience, min_delta = self.stop_by
                if better(row[key], self._stop_best[n], mode, min_delta):
                    self._stop_best[n], self._wait[n] = row[key], 0
                else:
                    self._wait[n] += 1
                if self._wait[n] >= patience:
                    self.active.remove(n)
                    self.stopped[n] = epoch
                    log.info("try %s stopped at epoch %d (best %s %.4f at epoch %d); %d still training", n, epoch,
                             self.best_by[0], self.best[n]["value"], self.best[n]["epoch"], len(self.active))
        if not self.active:
            self.trainer.should_stop = True

    @override
    def on_train_end(self) -> None:
        for n in self.active:
            self.stopped[n] = self.current_epoch
        unskip(self._skipped)  # the members compute their whole forward again

    @override
    def configure_optimizers(self):
        # one group: the same hyperparameters for all, and one foreach update instead of one per member
        return self.optimizer_factory([p for m in self.members.values() for p in m.parameters() if p.requires_grad])

    def member_state(self, name: str) -> dict[str, torch.Tensor]:
        """The member's best state (its last, if no validation ran)."""
        return self.best[name]["state"] or copy.deepcopy(self.members[name].state_dict())


def share_bottoms(members: nn.ModuleDict, frozen: dict[str, list[str]]) -> tuple[list[nn.Module], dict[str, int], bool, list]:
    """The shared frozen chain (the deepest frozen bottom among ``members``), each sharing
    member's depth in it, whether the chain flattens its input (an MLP's), and the sharing
    members' layers now skipped (:func:`~dnnkit.nn.freeze.skip`). Members whose frozen layers are no bottom, or differ from the chain's,
    keep their own forward."""
    bottoms = {}
    for name, names in frozen.items():
        try:
            bottoms[name] = frozen_bottom(members[name], names)[1]
        except NotABottom:
            continue
    if not bottoms:
        return [], {}, False, []
    deepest = max(bottoms, key=lambda n: len(bottoms[n]))
    chain = bottoms[deepest]
    parent = next(m for m in members[deepest].modules() if any(c is chain[0] for c in m.children()))
    depth, skipped = {}, []
    for name, layers in bottoms.items():
        same = all(
            all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
            and type(mine) is type(theirs) and mine.state_dict().keys() == theirs.state_dict().keys()
            for mine, theirs in zip(layers, chain)
        )
        if same:
            depth[name] = len(layers)
            skip(layers)
            skipped += layers
    return list(chain), depth, isinstance(parent, MLP), skipped
