"""``GreedyPretrainer``: train the hidden layers of a network one at a time, without labels.

The shared machinery of the greedy layer-wise pretrainers (Hinton et al., 2006; Bengio et al.,
2007): :class:`~dnnkit.modules.AutoencoderPretrainer` and :class:`~dnnkit.modules.RBMPretrainer`
only say what one layer's loss is. One Lightning fit runs every layer's phase in turn:
``hidden1`` for ``epochs[0]`` epochs on the inputs, then ``hidden2`` for ``epochs[1]`` epochs on
``hidden1``'s codes, and so on.

* Each layer has its own optimizer (built by the same factory), and only the current layer's
  optimizer steps (manual optimization): the other layers stay bit-identical, and momentum or
  Adam state never leaks from one phase into the next.
* The layers below the current one run in eval mode under ``no_grad`` (their dropout is off
  and their batch-norm statistics stay put).
* The trained layers keep the model's names (``model.hidden1`` ...), so a later stage takes
  them with ``reuse: {from: pretrain, layers: "hidden.*"}``.
* The pretrainer's result is its *last* epoch: validation loss is per phase and not comparable
  across phases, so the stage must not pick a "best" epoch. Set
  ``callbacks.checkpoint.monitor: null`` (the fit stops with a message otherwise).
* ``trainer.max_epochs`` is set to ``sum(epochs)`` when the fit starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from typing_extensions import override

from dnnkit.errors import DnnkitError
from dnnkit.modules.base import DnnkitModule
from dnnkit.nn.mlp import MLP
from dnnkit.nn.select import select_layers

log = logging.getLogger(__name__)


class GreedyPretrainer(DnnkitModule):
    """Base class: schedule, per-layer optimizers, frozen lower layers, pictures at the end.

    The objective :meth:`layer_loss` returns is logged as ``train/<loss_name>`` and
    ``val/<loss_name>`` (``loss`` unless a subclass renames it), and ``train/layer`` says which layer
    is training.

    Subclasses implement :meth:`layer_parameters` (what layer ``i``'s phase trains) and
    :meth:`layer_loss` (its loss on a batch of that layer's inputs), and may log more in
    :meth:`layer_metrics` and draw pictures in :meth:`save_pictures`.

    Args:
        model: the network whose hidden layers are pretrained (default: an MLP 784-300-100-10).
        optimizer: ``optimizer(params) -> Optimizer``, built once per layer (default Adam 1e-3).
        scheduler: ``scheduler(optimizer)``, one per layer, stepped after each of its epochs.
        epochs: epochs per layer, one number for all or a list bottom first.
        layers: regex of the layers to pretrain, in model order (default every ``hidden``).

    Example::

        >>> class Sparse(GreedyPretrainer):  # a layer's "loss": mean activation (a toy)
        ...     def layer_parameters(self, i):
        ...         return list(self.layers[i].parameters())
        ...     def layer_loss(self, i, x):
        ...         return self.layers[i](x).abs().mean()
        >>> pre = Sparse(MLP(784, [16, 8], 10), epochs=[2, 1])
        >>> pre.layer_names, [pre.phase(e) for e in range(3)]
        (['hidden1', 'hidden2'], [0, 0, 1])
    """

    loss_name = "loss"

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        epochs: int | Sequence[int] = 5,
        layers: str = "hidden[0-9]+",
    ) -> None:
        super().__init__()
        self.model = model if model is not None else MLP()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.layer_names = list(select_layers(self.model, layers))
        n = len(self.layer_names)
        epochs = [epochs] * n if isinstance(epochs, int) else list(epochs)
        if len(epochs) != n or any(not isinstance(e, int) or e < 1 for e in epochs):
            raise DnnkitError(f"epochs must be a positive integer or one per layer {self.layer_names}, got {epochs!r}")
        self.epochs = epochs
        self.automatic_optimization = False
        self._picture_batch: torch.Tensor | None = None

    # ------------------------------------------------------------------ what subclasses define

    def layer_parameters(self, index: int) -> list[nn.Parameter]:
        raise NotImplementedError

    def layer_loss(self, index: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_metrics(self, index: int, x: torch.Tensor, split: str) -> None:
        """Log more metrics of layer ``index`` on a batch of its inputs (``split``: train/val)."""

    def save_pictures(self, folder: Path, images: torch.Tensor) -> list[Path]:
        """Draw pictures from a batch of validation images into ``folder``; return the files."""
        return []

    # ------------------------------------------------------------------ the schedule

    @property
    def layers(self) -> list[nn.Module]:
        return [self.model.get_submodule(n) for n in self.layer_names]

    def phase(self, epoch: int | None = None) -> int:
        """The index of the layer trained at ``epoch`` (default: the current epoch)."""
        epoch = self.current_epoch if epoch is None else epoch
        end = 0
        for i, e in enumerate(self.epochs):
            end += e
            if epoch < end:
                return i
        return len(self.epochs) - 1

    @torch.no_grad()
    def inputs(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """What layer ``index`` sees: ``x`` through the (frozen) layers below it."""
        x = x.flatten(1)
        for layer in self.layers[:index]:
            x = layer(x)
        return x

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of the top pretrained layer."""
        return self.inputs(x, len(self.layer_names))

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def on_fit_start(self) -> None:
        self.require_last_epoch(" and would keep an earlier phase's weights")
        total = sum(self.epochs)
        if self.trainer.max_epochs != total:
            log.info("greedy pretraining: max_epochs set to %d (epochs per layer %s)", total, self.epochs)
            self.trainer.fit_loop.max_epochs = total

    @override
    def on_train_epoch_start(self) -> None:
        current = self.phase()
        for i, layer in enumerate(self.layers):
            layer.train(i == current)  # Lightning put everything in train mode; freeze the rest

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        index = self.phase()
        x = self.inputs(batch[0], index)
        loss = self.layer_loss(index, x)
        optimizers = self.optimizers()
        optimizer = optimizers[index] if isinstance(optimizers, list) else optimizers
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log(f"train/{self.loss_name}", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log("train/layer", float(index + 1), on_epoch=True, batch_size=len(x))
        self.layer_metrics(index, x, "train")
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        index = self.phase()
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        scheduler = schedulers[index] if isinstance(schedulers, list) else schedulers
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(self.trainer.callback_metrics.get(f"val/{self.loss_name}", torch.tensor(0.0)))
        else:
            scheduler.step()

    @override
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self._picture_batch = batch[0][:16].detach().cpu()
        index = self.phase()
        x = self.inputs(batch[0], index)
        loss = self.layer_loss(index, x)
        self.log(f"val/{self.loss_name}", loss, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.layer_metrics(index, x, "val")
        return loss

    @override
    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self._picture_batch is not None:
            folder = Path(self.trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            with torch.no_grad():
                files = self.save_pictures(folder, self._picture_batch.to(self.device))
            for f in files:
                log.info("saved %s", f)

    @override
    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizers = [factory(self.layer_parameters(i)) for i in range(len(self.layer_names))]
        if self.scheduler_factory is None:
            return optimizers
        return optimizers, [self.scheduler_factory(o) for o in optimizers]
