"""``ContrastivePretrainer``: SimCLR-style pretraining of a network's encoder without labels.

Each training batch of images becomes two augmented views (``augment``, the specs of
``data.augment``: :func:`dnnkit.data.augment.build_augment`); both go through the model's
encoder (``model.features``: every layer below ``output``) and a small projection head, and the
NT-Xent loss (:func:`dnnkit.nn.contrastive.nt_xent`) pulls each view towards its pair and away
from the rest of the batch. The head is thrown away afterwards; the encoder keeps the model's
layer names (``hidden1`` ..., ``conv1`` ...), so a later stage takes it with
``reuse: {from: pretrain, layers: "hidden.*"}``. The model's ``output`` layer is not trained.

* The views are a function of ``(seed, epoch, batch index)`` only
  (:func:`dnnkit.data.augment.batch_generator`, one derived seed per view), so a resumed run sees
  the same views; validation uses the same fixed views every epoch.
* Logs ``train/loss`` and ``val/loss`` (NT-Xent) and ``val/knn_acc``: the leave-one-out ``knn``
  nearest-neighbour accuracy (cosine) of the encoder's features on the labelled validation
  split, a cheap view of how usable the features are. Neither picks the checkpoint: the result is
  the last epoch (``callbacks.checkpoint.monitor: null``; the fit stops with a message otherwise).
* At the end it saves ``views.png`` in the run folder: validation images above one augmented view.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from typing_extensions import override

from dnnkit.data.augment import batch_generator, build_augment
from dnnkit.errors import DnnkitError, number
from dnnkit.modules.base import DnnkitModule
from dnnkit.nn.contrastive import ProjectionHead, check_temperature, feature_size, nt_xent
from dnnkit.nn.mlp import MLP

log = logging.getLogger(__name__)


class ContrastivePretrainer(DnnkitModule):
    """Train ``model``'s encoder with NT-Xent on two augmented views of each unlabelled image.

    Args:
        model: the network whose layers below ``output`` are pretrained (default MLP 784-300-100-10).
        optimizer: ``optimizer(params) -> Optimizer`` over the encoder and the head (default Adam 1e-3).
        scheduler: ``scheduler(optimizer)``, as the :class:`~dnnkit.Classifier`'s.
        augment: the augmentation specs of each view, as ``data.augment`` (e.g. ``[crop:2, affine:15]``);
            required: without augmentation the two views are the same image.
        temperature: NT-Xent's temperature, > 0 (0.5 for small batches, 0.1-0.2 for large ones).
        head: hidden sizes of the projection head (ReLU); ``[]`` for a linear head.
        projection: the projection's size.
        seed: the views' seed (the recipe passes the run's ``seed``).
        knn: neighbours of ``val/knn_acc`` (0: not computed).

    Example::

        >>> import lightning as L
        >>> from dnnkit.data import TensorLoader
        >>> x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
        >>> pre = ContrastivePretrainer(MLP(784, [32, 16], 10), augment=["crop:2"], temperature=0.5)
        >>> trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(pre, TensorLoader(x, torch.zeros(64, dtype=torch.long), 16))
        >>> pre(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 16])
        >>> ContrastivePretrainer(MLP(784, [8], 10), augment=None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: contrastive pretraining needs module.augment (each view's augmentation), e.g. [crop:2, affine:15] ...
    """

    logged_keys: ClassVar[tuple[str, ...]] = ("train/loss", "val/loss", "val/knn_acc")

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        augment=None,
        temperature: float = 0.5,
        head=(128,),
        projection: int = 64,
        seed: int = 0,
        knn: int = 10,
    ) -> None:
        super().__init__()
        self.model = model if model is not None else MLP()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.augment = build_augment(augment)
        if self.augment is None:
            raise DnnkitError(
                "contrastive pretraining needs module.augment (each view's augmentation), e.g. [crop:2, affine:15] "
                "(names: affine, crop, flip, or a {_target_: torchvision.transforms.v2...} spec): without one both views are the same image"
            )
        self.temperature = check_temperature(temperature)
        self.seed = int(number("module.seed", seed, integer=True))
        self.knn = int(number("module.knn", knn, 0, integer=True))
        self.head = ProjectionHead(feature_size(self.model), list(head), projection)
        self._val_features: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._picture_batch: torch.Tensor | None = None

    # ------------------------------------------------------------------ views and loss

    def views(self, x: torch.Tensor, epoch: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of batch ``batch`` of ``epoch``: a function of (seed, epoch, batch)
        and the images only (augmented on the CPU, where the generators are)."""
        cpu = x.detach().float().cpu()
        if cpu.dim() == 3:
            cpu = cpu.unsqueeze(1)
        self.augment.check(tuple(cpu.shape[1:]))
        v1, v2 = (self.augment(cpu, batch_generator(2 * self.seed + v, epoch, batch)) for v in (0, 1))
        return v1.to(x.device), v2.to(x.device)

    def contrastive_loss(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        v1, v2 = self.views(x, epoch, batch)
        z = self.head(self.model.features(torch.cat([v1, v2])))
        return nt_xent(*z.split(len(v1)), self.temperature)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's features (the model's top hidden layer)."""
        return self.model.features(x)

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def on_fit_start(self) -> None:
        self.require_last_epoch()

    @override
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        loss = self.contrastive_loss(x, self.current_epoch, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    @override
    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        if batch_idx == 0:
            self._picture_batch = x[:16].detach().cpu()
        loss = self.contrastive_loss(x, -1, batch_idx)  # epoch -1: the same views every epoch
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        if self.knn and len(batch) > 1:
            self._val_features.append(nn.functional.normalize(self.model.features(x).flatten(1), dim=1))
            self._val_labels.append(batch[1])
        return loss

    @override
    def on_validation_epoch_end(self) -> None:
        if self._val_features:
            acc = knn_accuracy(torch.cat(self._val_features), torch.cat(self._val_labels), self.knn)
            self.log("val/knn_acc", acc, prog_bar=True)
        self._val_features.clear()
        self._val_labels.clear()

    @override
    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and self._picture_batch is not None:
            from dnnkit.plots import save_reconstructions

            folder = Path(self.trainer.default_root_dir)
            folder.mkdir(parents=True, exist_ok=True)
            images = self._picture_batch.float()
            view = self.views(images, -1, 0)[0]
            saved = save_reconstructions(folder / "views.png", images.flatten(1), view.flatten(1))
            if saved is not None:
                log.info("saved %s", saved)

    @override
    def configure_optimizers(self):
        params = [p for name, p in self.named_parameters() if not name.startswith("model.output.") and p.requires_grad]
        factory = self.optimizer_factory or (lambda ps: torch.optim.Adam(ps, lr=1e-3))
        return self.with_scheduler(factory(params))


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour vote (cosine similarity of the rows of
    the L2-normalised ``features``, each neighbour weighted by ``exp(similarity / 0.1)``).

    Example::

        >>> f = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]), dim=1)
        >>> float(knn_accuracy(f, torch.tensor([0, 0, 1, 1]), 1))
        1.0
    """
    n = len(features)
    k = min(k, n - 1)
    if k < 1:
        return torch.tensor(float("nan"))
    sim = features @ features.T
    sim.fill_diagonal_(float("-inf"))
    top, index = sim.topk(k, dim=1)
    votes = torch.zeros(n, int(labels.max()) + 1, device=features.device, dtype=features.dtype)
    votes.scatter_add_(1, labels[index].long(), (top / 0.1).exp())
    return (votes.argmax(1) == labels).float().mean()


__all__ = ["ContrastivePretrainer", "knn_accuracy"]
