"""``LayerFreezing``: freeze layers by name, optionally unfreeze them later at their own LR.

A thin callback over :mod:`dnnkit.nn.freeze`, modelled on Lightning's ``BaseFinetuning``:

- ``setup`` freezes (``requires_grad=False`` and eval mode pinned against ``.train()``), so a
  ``configure_optimizers`` that passes only trainable parameters, as ``dnnkit.Classifier``
  does, never sees the frozen ones;
- at ``unfreeze_at_epoch`` the frozen layers (or those matching ``unfreeze``) become trainable
  and their parameters join the first optimizer as a **new param group** with ``unfreeze_lr``;
  the existing groups, their LRs and their optimizer state (momentum, Adam moments) are kept;
- a ``configure_optimizers`` over ``self.parameters()`` (the common case in users' modules) has
  put the frozen parameters in a group already: with ``unfreeze_lr`` they are moved out of it
  into a new group with that group's settings and ``unfreeze_lr`` (their optimizer state, kept
  per parameter, goes with them), or, for an optimizer whose groups cannot be split safely
  (LBFGS, one with its own ``step``), the fit stops with one line saying what to do; without
  ``unfreeze_lr`` they keep their group's LR. The message says which happened
  (:func:`dnnkit.nn.freeze.add_to_optimizer`);
- ``state_dict`` records whether the unfreeze happened, so a run resumed with ``ckpt_path``
  after it rebuilds the param group before Lightning restores the optimizer state.

Frozen layers are in eval mode for the whole time they are frozen: batch norm uses and keeps
its running statistics, dropout is off. The unfreeze decision depends only on the epoch
number, so every DDP rank takes it at the same step; but DDP only synchronises parameters that
required gradients when it wrapped the model, so under DDP unfreezing mid-fit is not supported
(a limitation Lightning's ``BaseFinetuning`` shares); freezing for the whole fit is.

Epochs in the messages are counted from 1, as :class:`~dnnkit.callbacks.EpochSummary` counts
them: ``unfreeze_at_epoch=4`` (0-based, as Lightning's ``current_epoch``) unfreezes at the start
of the fifth epoch, printed ``epoch 5: unfroze ...`` just before the ``epoch 5/20`` line.

With ``cache=True`` (the default) the recipe runner computes the outputs of frozen layers that
form the bottom of the network once and trains the rest on them (:meth:`cached_datamodule`,
:mod:`dnnkit.data.feature_cache`), except when the training split is augmented (``data.augment``):
then it only freezes, and says so. In your own Trainer the callback only freezes unless you
pass ``datamodule=cb.cached_datamodule(model, datamodule)`` to ``fit``.
"""

from __future__ import annotations

import logging
import warnings

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from dnnkit.data.feature_cache import CachedDataModule
from dnnkit.errors import DnnkitError, number
from dnnkit.nn.freeze import (
    CannotSplit,
    NotABottom,
    add_to_optimizer,
    describe,
    freeze,
    frozen_bottom,
    resolve,
    skip,
    unfreeze,
    unskip,
)
from dnnkit.nn.select import compile_pattern, match_name

log = logging.getLogger(__name__)


class LayerFreezing(L.Callback):
    """Freeze ``frozen`` (or everything but ``trainable``); unfreeze at ``unfreeze_at_epoch``.

    Args:
        frozen: regex of the layers to freeze (``"hidden[12]"``), matched as in
            :func:`dnnkit.nn.select_layers` against the LightningModule's module names.
        trainable: the other form: regex of the layers that train, all others are frozen
            (``"hidden[34]|output"``). Give exactly one of the two.
        unfreeze_at_epoch: 0-based epoch at whose start the frozen layers become trainable
            (``4``: the fifth epoch, printed as ``epoch 5``); ``None`` keeps them frozen.
        unfreeze: regex choosing which frozen layers to unfreeze (default: all of them).
        unfreeze_lr: learning rate of the unfrozen parameters, in a param group of their own
            (default: a new group takes the first group's LR at that moment; parameters that
            ``configure_optimizers`` put in a group already keep that group's LR).
        cache: let the recipe runner cache the outputs of a frozen bottom (only applies
            without ``unfreeze_at_epoch``).
        verbose: print the frozen and trainable layers at fit start and at the unfreeze.

    Example::

        >>> cb = LayerFreezing(frozen="hidden[12]", unfreeze_at_epoch=4, unfreeze_lr=1e-4)
        >>> trainer = L.Trainer(max_epochs=20, callbacks=[cb])  # doctest: +SKIP
    """

    def __init__(
        self,
        frozen: str | None = None,
        trainable: str | None = None,
        unfreeze_at_epoch: int | None = None,
        unfreeze: str | None = None,
        unfreeze_lr: float | None = None,
        cache: bool = True,
        verbose: bool = True,
    ) -> None:
        if (frozen is None) == (trainable is None):
            raise DnnkitError(f"LayerFreezing needs exactly one of frozen= or trainable= (got frozen={frozen!r}, trainable={trainable!r})")
        for pattern in (frozen, trainable, unfreeze):
            if pattern is not None:
                compile_pattern(pattern)
        number("unfreeze_at_epoch", unfreeze_at_epoch, 0, integer=True, optional=True)
        number("unfreeze_lr", unfreeze_lr, 0, low_open=True, optional=True)
        self.frozen, self.trainable = frozen, trainable
        self.unfreeze_at_epoch, self.unfreeze, self.unfreeze_lr = unfreeze_at_epoch, unfreeze, unfreeze_lr
        self.cache, self.verbose = cache, verbose
        self.frozen_layers: dict = {}
        self.unfrozen_layers: list[str] = []  # names, after the unfreeze
        self._restore: list[str] = []
        self._skipped: list = []

    # ------------------------------------------------------------------ pure parts

    def layers_to_freeze(self, pl_module) -> dict:
        """The layers this callback freezes in ``pl_module`` (by qualified name)."""
        return resolve(pl_module, self.frozen, self.trainable)

    def layers_to_unfreeze(self) -> dict:
        if self.unfreeze is None:
            return dict(self.frozen_layers)
        chosen = {n: m for n, m in self.frozen_layers.items() if match_name(self.unfreeze, n)}
        if not chosen:
            raise DnnkitError(f"unfreeze={self.unfreeze!r} matches none of the frozen layers: {', '.join(self.frozen_layers)}")
        return chosen

    @property
    def caches(self) -> bool:
        """Whether the frozen layers stay frozen for the whole fit (so caching them is exact)."""
        return bool(self.cache) and self.unfreeze_at_epoch is None

    def cached_datamodule(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """``datamodule`` wrapped in a :class:`~dnnkit.data.feature_cache.CachedDataModule` when
        the frozen layers are the bottom of ``pl_module``'s network and stay frozen (``cache``
        on, no ``unfreeze_at_epoch``); the frozen layers then pass their input through. Else
        ``datamodule`` itself. Call before ``trainer.fit``; :meth:`restore_layers` undoes it.
        An augmented training split (``data.augment``) is never cached: its images change every batch.
        """
        if not self.caches:
            return datamodule
        if getattr(datamodule, "augment", None) is not None:
            self._print("LayerFreezing: not caching the frozen layers: data.augment changes the training images every batch, "
                        "so their outputs cannot be computed once")
            return datamodule
        frozen = freeze(pl_module, self.frozen, self.trainable)
        try:
            bottom, layers = frozen_bottom(pl_module, list(frozen))
        except NotABottom as why:
            self._print(f"LayerFreezing: not caching the frozen layers: {why}")
            return datamodule
        skip(layers)
        self._skipped = layers
        self._print(f"LayerFreezing: caching the outputs of {', '.join(frozen)}: the upper layers train on them")
        return CachedDataModule(datamodule, bottom)

    def restore_layers(self) -> None:
        """Let the cached (skipped) layers compute again, e.g. to predict from raw images."""
        unskip(self._skipped)
        self._skipped = []

    # ------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.frozen_layers = freeze(pl_module, self.frozen, self.trainable)
        self.unfrozen_layers = []
        if self.unfreeze is not None:
            self.layers_to_unfreeze()  # an `unfreeze` pattern that matches no frozen layer fails now, not epochs later
        # pinning the frozen layers in eval mode is the point; Lightning warns about it at fit start
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restore:  # resumed after the unfreeze: rebuild the param group before the optimizer state loads
            missing = [n for n in self._restore if n not in self.frozen_layers]
            if missing:
                raise DnnkitError(f"the checkpoint unfroze {missing}, which this LayerFreezing does not freeze: {list(self.frozen_layers)}")
            self._unfreeze(trainer, pl_module, {n: self.frozen_layers[n] for n in self._restore}, restoring=True)
            self._restore = []
        n_trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        when = ""
        if self.unfrozen_layers:
            when = f"; unfrozen earlier: {', '.join(self.unfrozen_layers)}"
        elif self.unfreeze_at_epoch is not None:
            when = f"; unfrozen at the start of epoch {self.unfreeze_at_epoch + 1}"  # 1-based, as EpochSummary counts
        self._print(f"LayerFreezing: frozen (eval mode) {describe(self.frozen_layers)}{when}; trainable {n_trainable:,} parameters")

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.unfreeze_at_epoch is not None and not self.unfrozen_layers and trainer.current_epoch >= self.unfreeze_at_epoch:
            self._unfreeze(trainer, pl_module)

    def _unfreeze(self, trainer: L.Trainer, pl_module: L.LightningModule, layers: dict | None = None, restoring: bool = False) -> None:
        layers = self.layers_to_unfreeze() if layers is None else layers
        done = None
        if trainer.optimizers:  # first: it refuses before anything changes
            params = [p for layer in layers.values() for p in layer.parameters()]
            schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
            try:
                done = add_to_optimizer(trainer.optimizers[0], params, self.unfreeze_lr, schedulers)
            except CannotSplit as refused:
                raise self._refusal(trainer.optimizers[0], layers, refused) from None
        unfreeze(pl_module, layers)
        rewrap_ddp(trainer)
        for name in layers:
            self.frozen_layers.pop(name)
        self.unfrozen_layers = list(layers)
        if done is not None and not restoring:  # 1-based, as EpochSummary counts: the epoch its next line reports
            sep = " " if done.startswith("into ") else ", "
            self._print(f"LayerFreezing: epoch {trainer.current_epoch + 1}: unfroze {describe(layers)}{sep}{done}")

    def _refusal(self, optimizer, layers: dict, refused: CannotSplit) -> DnnkitError:
        at = f"unfreeze_lr={self.unfreeze_lr:g}" if self.unfreeze_lr is not None else "a param group of their own"
        if refused.held:
            what = f"configure_optimizers put their parameters in {type(optimizer).__name__}'s param groups already, and {refused.why}"
        else:
            what = refused.why
        if isinstance(optimizer, torch.optim.LBFGS):
            todo = "leave unfreeze_lr unset and build the optimizer over self.parameters()"
        else:
            todo = ("pass only trainable parameters ([p for p in self.parameters() if p.requires_grad]) to the optimizer "
                    "in configure_optimizers, or leave unfreeze_lr unset to keep their group's rate")
        return DnnkitError(f"LayerFreezing: cannot give the unfrozen layers {', '.join(layers)} {at}: {what}; {todo}")

    @rank_zero_only
    def _print(self, message: str) -> None:
        if self.verbose:
            log.info("%s", message)

    # ------------------------------------------------------------------ resume

    @override
    def state_dict(self) -> dict:
        return {"unfrozen_layers": list(self.unfrozen_layers)}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._restore = list(state_dict.get("unfrozen_layers", []))


def rewrap_ddp(trainer: L.Trainer) -> None:
    """Wrap the model in a new ``DistributedDataParallel`` after layers were unfrozen.

    DDP averages across ranks only the gradients of the parameters that required grad when it
    wrapped the model. Without a new wrapper the unfrozen layers would train on each rank's own
    batches, and the ranks' weights would drift apart. Every rank unfreezes at the same epoch, so
    every rank rewraps at the same point. The new wrapper broadcasts rank 0's weights, which are
    still identical on every rank.
    """
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel) and hasattr(strategy, "configure_ddp"):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
