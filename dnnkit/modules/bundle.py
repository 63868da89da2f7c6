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

:meth:`TryBundle.fit` goes further for those members: it computes the chain's outputs once per
split and fits them on those, in a plain loop of the same batches, steps and validations as
Lightning's (:meth:`TryBundle.fit_cached`; a frozen try's step is a few small layers, so
Lightning's per-step hooks and closures were most of its cost), then fits the others in
Lightning's loop. A trainer or data the plain loop does not mirror (an augmented split, a GPU,
several processes, a fractional ``limit_*_batches``, ...) keeps every member in Lightning's loop.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn
from typing_extensions import override

from dnnkit.modules.base import DnnkitModule
from dnnkit.nn.freeze import NotABottom, frozen_bottom, skip, unskip
from dnnkit.nn.mlp import MLP

log = logging.getLogger(__name__)

CACHE_BYTES = 2 * 2**30  # the most the cached outputs of the frozen layers may take


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

    def chain_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The shared frozen chain's output at each depth for ``x`` (empty when no active member takes it)."""
        shared = []
        if self._chain and any(n in self._depth for n in self.active):
            with torch.no_grad():
                h = x.flatten(1) if self._flatten else x
                for layer in self._chain:
                    h = type(layer).forward(layer, h)  # the class's forward: the chain's own layers may be skipped
                    shared.append(h)
        return shared

    def outputs(self, x: torch.Tensor, shared: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Each active member's logits for ``x``, the shared frozen chain run once (or its outputs ``shared``, cached)."""
        shared = self.chain_outputs(x) if shared is None else shared
        return {n: self.members[n](shared[self._depth[n] - 1] if n in self._depth else x) for n in self.active}

    def total_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return sum(self.members[n].loss(logits, y) for n, logits in outputs.items())

    def tally(self, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        """Add a validation batch to each member's loss sum, correct count and count."""
        for n, logits in outputs.items():
            sums = self._sums[n]
            sums[0] += float(self.members[n].loss(logits, y)) * len(y)
            sums[1] += int((logits.argmax(1) == y).sum())
            sums[2] += len(y)

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        # None (no step) once every member has stopped but the trainer goes on (trainer.min_epochs)
        return self.total_loss(self.outputs(x), y) if self.active else None

    @override
    def on_validation_epoch_start(self) -> None:
        self._sums = {n: [0.0, 0, 0] for n in self.active}  # loss sum, correct, count

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.tally(self.outputs(x), y)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.end_epoch(self.current_epoch + 1)
        if not self.active:
            self.trainer.should_stop = True

    def end_epoch(self, epoch: int) -> None:
        """Each active member's validation row of ``epoch``: its best state kept, its early stop counted."""
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

    @override
    def on_train_end(self) -> None:
        self.finish(self.current_epoch)

    def finish(self, epochs: int) -> None:
        """The members still training stop at ``epochs``; each computes its whole forward again."""
        for n in self.active:
            self.stopped[n] = epochs
        self.active = []
        unskip(self._skipped)

    @override
    def configure_optimizers(self):
        # one group over the active members: the same hyperparameters for all
        return self.optimizer_factory([p for n in self.active for p in self.members[n].parameters() if p.requires_grad])

    def fit(self, trainer, datamodule) -> None:
        """Fit every member: those that take the shared chain on its outputs cached, in
        :meth:`fit_cached` (unless :func:`not_plain`, :func:`not_tensors` or :meth:`too_big` says
        why not), then the others with ``trainer`` (Lightning's loop)."""
        cached = [n for n in self.active if n in self._depth]
        why = not_plain(trainer) if cached else None
        if cached and why is None:
            datamodule.setup("fit")
            train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
            why = not_tensors(train, val) or self.too_big(train, val)
        try:
            if cached and why is None:
                others, self.active = [n for n in self.active if n not in cached], list(cached)
                started = time.perf_counter()
                self.fit_cached(train, val, trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches)
                log.info("%d tries with frozen layers fitted on those layers' cached outputs in %.1f s", len(cached),
                         time.perf_counter() - started)
                self.active = others
            elif cached:
                log.info("the tries with frozen layers are fitted in Lightning's loop, not on cached outputs: %s", why)
            if self.active:
                trainer.fit(self, datamodule=datamodule)
            self.finish(trainer.current_epoch)  # members Lightning's loop never reached (no batches) trained 0 epochs
        finally:
            unskip(self._skipped)  # also when a fit raised or was interrupted

    def fit_cached(self, train, val, max_epochs: int, limit_train: int | float = 1.0, limit_val: int | float = 1.0) -> None:
        """Fit the active members, which all take the shared chain, on the chain's outputs for the
        ``train`` and ``val`` loaders (:class:`~dnnkit.data.TensorLoader` s), computed once (as
        :class:`~dnnkit.data.feature_cache.CachedDataModule` caches a frozen bottom), in a plain
        loop that does what Lightning's does for them: each epoch the training split's batches
        in its loader's order, a zeroed gradient, the summed loss's backward and an optimizer step
        for each; then the validation split's batches in eval mode,
        each member's best state and early stop as in Lightning's loop. A frozen try's step is a
        few small layers, so Lightning's per-step bookkeeping (hooks, closures, profiler contexts)
        is most of its cost: ``+recipe=reuse_search`` with only its five frozen tries takes 6.4 s
        this way against 13.8 s in Lightning's loop, the same rows (docs/RESULTS.md#reuse_search).
        A pending Ctrl-C or SIGTERM stops it between steps."""
        from dnnkit import interrupt

        features = {"train": self.cache(train), "val": self.cache(val)}
        optimizer = self.configure_optimizers()
        for epoch in range(max_epochs):
            self.train()
            for idx in batches(train, epoch, limit_train):
                interrupt.check()
                optimizer.zero_grad()
                self.total_loss(self.outputs(None, [f.index_select(0, idx) for f in features["train"]]), train.labels[idx]).backward()
                optimizer.step()
            self.eval()
            self.on_validation_epoch_start()
            with torch.no_grad():
                for idx in batches(val, epoch, limit_val):
                    self.tally(self.outputs(None, [f.index_select(0, idx) for f in features["val"]]), val.labels[idx])
            self.end_epoch(epoch + 1)
            if not self.active:
                return
        for n in self.active:
            self.stopped[n] = max_epochs

    def cache(self, loader, chunk: int = 2000) -> list[torch.Tensor]:
        """The shared chain's output at each depth for every sample of ``loader``, in index order
        (in chunks, as :func:`~dnnkit.data.feature_cache.compute_features`, so the same numbers)."""
        n, out = len(loader.labels), []
        for i in range(0, n, chunk):
            outputs = self.chain_outputs(loader.batch(torch.arange(i, min(n, i + chunk)))[0])
            out = out or [h.new_empty((n, *h.shape[1:])) for h in outputs]  # filled in place: no second copy
            for whole, h in zip(out, outputs):
                whole[i:i + len(h)] = h
        return out

    def too_big(self, train, val) -> str | None:
        """Why the chain's outputs (every depth, as :meth:`cache` keeps them) for the ``train`` and
        ``val`` loaders would not fit in :data:`CACHE_BYTES`, or None."""
        one = self.chain_outputs(train.batch(torch.arange(1))[0])
        size = sum(h.numel() * h.element_size() for h in one) * (len(train.labels) + len(val.labels))
        if size > CACHE_BYTES:
            return f"they would take {in_units(size)}, more than dnnkit.modules.bundle.CACHE_BYTES ({in_units(CACHE_BYTES)})"
        return None

    def member_state(self, name: str) -> dict[str, torch.Tensor]:
        """The member's best state (its last, if no validation ran)."""
        return self.best[name]["state"] or copy.deepcopy(self.members[name].state_dict())


def in_units(size: int) -> str:
    """``size`` bytes in B, KiB, MiB or GiB.

    Example::

        >>> in_units(1000), in_units(12_960), in_units(2 * 2**30)
        ('1000 B', '12.7 KiB', '2.0 GiB')
    """
    if size < 1024:
        return f"{size} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"


def batches(loader, epoch: int, limit: int | float = 1.0):
    """The sample indices of each batch ``loader`` (a one-process :class:`~dnnkit.data.TensorLoader`)
    serves in ``epoch``: all, or the first ``limit`` when it is a count (as Lightning's ``limit_*_batches``)."""
    order, size = loader.order(epoch), loader.batch_size
    n = len(loader) if isinstance(limit, float) else min(len(loader), limit)
    return (order[i * size:(i + 1) * size] for i in range(n))


def not_plain(trainer) -> str | None:
    """Why :meth:`TryBundle.fit_cached` cannot stand in for ``trainer``'s loop, or None."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    from dnnkit.interrupt import StopOnSignal  # what the plain loop does too, between steps

    # the values the loop mirrors, type and all: an int val_check_interval of 1 validates after every batch
    plain = {"val_check_interval": 1.0, "check_val_every_n_epoch": 1, "accumulate_grad_batches": 1, "max_steps": -1,
             "precision": "32-true"}
    odd = [f"trainer.{k}={getattr(trainer, k)!r}" for k, v in plain.items()
           if type(getattr(trainer, k)) is not type(v) or getattr(trainer, k) != v]
    odd += [f"trainer.{k}={getattr(trainer, k)!r}" for k in ("limit_train_batches", "limit_val_batches")
            if getattr(trainer, k) != 1.0 and not (type(getattr(trainer, k)) is int and getattr(trainer, k) >= 1)]
    odd += [f"trainer.{k}={getattr(trainer, k)!r}" for k in ("overfit_batches", "min_epochs", "min_steps") if getattr(trainer, k)]
    if not isinstance(trainer.accelerator, CPUAccelerator) or trainer.world_size != 1:
        odd.append("not one CPU process")
    if not trainer.max_epochs or trainer.max_epochs < 0:
        odd.append(f"trainer.max_epochs={trainer.max_epochs!r}")
    odd += [f"the callback {type(c).__name__}" for c in trainer.callbacks if not isinstance(c, (StopOnSignal, ModelSummary, ProgressBar))]
    return ", ".join(odd) if odd else None


def not_tensors(train, val) -> str | None:
    """Why the ``train`` and ``val`` loaders cannot be cached (not plain :class:`~dnnkit.data.TensorLoader` s), or None."""
    from dnnkit.data.loader import TensorLoader

    for split, loader in {"train": train, "val": val}.items():
        if type(loader) is not TensorLoader:
            return f"the {split} batches come from a {type(loader).__name__}, not a TensorLoader"
        if loader.augment is not None:
            return f"the {split} split is augmented"
    return None


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
