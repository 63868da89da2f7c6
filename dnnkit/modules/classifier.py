"""``Classifier``: the LightningModule that dnnkit's recipes train, and a base class for yours."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from dnnkit.errors import DnnkitError, number
from dnnkit.modules.base import DnnkitModule
from dnnkit.nn.mlp import MLP

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], object]
DEFAULT_OPTIMIZER = functools.partial(torch.optim.SGD, lr=0.01)


class Classifier(DnnkitModule):
    """Cross-entropy classifier around any backbone that maps a batch to logits.

    Logs ``train/loss`` (per step, every ``log_every_n_steps``, and per epoch), ``val/loss``,
    ``val/acc``, ``test/loss`` and ``test/acc``. The optimizer and scheduler arrive as factories, as Hydra builds them from
    ``_partial_: true`` configs: ``optimizer(params) -> Optimizer`` and
    ``scheduler(optimizer) -> LRScheduler`` or a Lightning scheduler dict
    (``{"scheduler": ..., "interval": "step"}``); a scheduler factory may carry ``interval``,
    ``frequency`` and ``monitor`` (:func:`dnnkit.schedules.lightning_scheduler`). :attr:`lr` is the
    optimizer factory's learning rate, which Lightning's LR finder reads and sets
    (:mod:`dnnkit.lr_finder`).

    Subclass it and override what differs; :meth:`forward`, :meth:`loss` and
    :meth:`configure_optimizers` are the usual hooks.

    Args:
        model: the network (default: an MLP 784-300-100-10, ELU, He init).
        optimizer: builds the optimizer from the parameters (default: SGD, lr 0.01).
        scheduler: builds a learning-rate scheduler from the optimizer, or ``None``.
        num_classes: for the accuracy metric; defaults to ``model.n_outputs``.
        label_smoothing: passed to cross-entropy.

    Example::

        >>> import functools
        >>> from dnnkit.nn import MLP
        >>> class MyNet(Classifier):
        ...     def loss(self, logits, y):  # e.g. add an L2 penalty on the output layer
        ...         return super().loss(logits, y) + 1e-4 * self.model.output.weight.square().sum()
        >>> net = MyNet(MLP(784, [100], 10), optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    """

    #: Every key :meth:`training_step`, :meth:`validation_step` and :meth:`test_step` log (Lightning
    #: adds ``train/loss_step`` and ``train/loss_epoch``). Monitors (``callbacks.checkpoint.monitor``)
    #: and ``report.metrics`` are checked against it before anything trains
    #: (:mod:`dnnkit.preflight`): a subclass that logs more keys lists them here too.
    logged_keys: ClassVar[tuple[str, ...]] = ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc")

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model if model is not None else MLP()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        num_classes = num_classes or getattr(self.model, "n_outputs", None)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise DnnkitError(f"num_classes must be an integer >= 2 (or the model must have n_outputs), got {num_classes!r}")
        self.num_classes = num_classes
        self.label_smoothing = number("module.label_smoothing", label_smoothing, 0, 1)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self._unlogged_losses: list[torch.Tensor] = []  # per-sample losses of steps not yet in train_loss
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        # The epoch mean is a torchmetrics metric, so under DDP it is synced across ranks.
        # Lightning's `self.log` and a torchmetrics forward or update are each a sizeable part of a
        # small MLP's step on a CPU (profiled with bench.speed), so they run only on the steps the
        # logger writes; the other steps' losses wait in a list and reach the metric in one update
        # there, at the epoch's last batch, or at the epoch's end. The metric object carries this
        # step's loss and the epoch's mean (computed and reset by Lightning at epoch end), so
        # train/loss_step and train/loss_epoch mean what they mean in plain Lightning.
        # One copy of the loss per sample weights the mean by batch size: MeanMetric's `weight`
        # is ignored under nan_strategy="disable" (torchmetrics 1.9), and the other strategies
        # synchronise with the GPU every step to look for NaNs.
        per_sample = loss.detach().expand(len(y))
        if batch_idx == 0 or self._logger_writes_now():
            self._update_train_loss()
            self.train_loss(per_sample)
            self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        else:
            self._unlogged_losses.append(per_sample)
            if self._trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                self._update_train_loss()  # before the epoch-end callbacks read the epoch's mean
        return loss

    def on_train_epoch_end(self) -> None:
        self._update_train_loss()  # an epoch cut short (max_steps, a callback's should_stop)

    def _update_train_loss(self) -> None:
        if self._unlogged_losses:
            self.train_loss.update(torch.cat(self._unlogged_losses))
            self._unlogged_losses.clear()

    def _logger_writes_now(self) -> bool:
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _evaluate(self, batch, split: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        metric.update(logits, y)
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=split == "val", batch_size=len(y), sync_dist=True)
        self.log(f"{split}/acc", metric, on_epoch=True, prog_bar=split == "val")
        return loss

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=1)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def lr(self) -> float:
        """The learning rate the optimizer factory gives (a ``functools.partial``'s ``lr``, else its
        function's default); setting it rebuilds the factory with the new rate. Lightning's
        ``Tuner.lr_find`` and ``LearningRateFinder`` find it by this name, in subclasses too.

        Example::

            >>> net = Classifier(MLP(784, [8], 10), optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
            >>> net.lr = 0.02
            >>> net.lr, type(net.configure_optimizers()).__name__, net.configure_optimizers().param_groups[0]["lr"]
            (0.02, 'Adam', 0.02)
        """
        factory = self.optimizer_factory or DEFAULT_OPTIMIZER
        if isinstance(factory, functools.partial):
            if "lr" in factory.keywords:
                return factory.keywords["lr"]
            default = inspect.signature(factory.func).parameters.get("lr")
            if default is not None and default.default is not inspect.Parameter.empty:
                return default.default
        raise AttributeError(f"the optimizer factory {factory!r} names no learning rate (lr)")

    @lr.setter
    def lr(self, value: float) -> None:
        factory = self.optimizer_factory or DEFAULT_OPTIMIZER
        if not isinstance(factory, functools.partial):
            raise DnnkitError(
                f"lr can be set only on an optimizer factory that is a functools.partial (a `_partial_: true` config), got {factory!r}"
            )
        number("lr", value, 0, low_open=True)
        self.optimizer_factory = functools.partial(factory.func, *factory.args, **{**factory.keywords, "lr": float(value)})

    def configure_optimizers(self):
        factory = self.optimizer_factory or DEFAULT_OPTIMIZER
        return self.with_scheduler(factory(self.trainable_parameters()))
