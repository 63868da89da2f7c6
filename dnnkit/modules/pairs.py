"""``PairClassifier``: same class or not, for image pairs (Hands-On ML 1e, ch. 11, exercise 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import BinaryAccuracy

from dnnkit.modules.classifier import Classifier, OptimizerFactory, SchedulerFactory
from dnnkit.nn.towers import Towers


class PairClassifier(Classifier):
    """A :class:`~dnnkit.Classifier` whose network gives one logit per pair (1: same class), trained
    with binary cross-entropy on a sigmoid; it logs the classifier's keys (``val/acc`` is the
    pair task's accuracy). Batches are ``(x, same)``, ``x`` of shape ``(B, 2, ...)``
    (:class:`~dnnkit.data.pairs.PairsDataModule`).

    Args:
        model: the pair network (default: :class:`~dnnkit.nn.towers.Towers`, the book's).
        optimizer, scheduler: as for :class:`~dnnkit.Classifier`.

    Example::

        >>> net = PairClassifier(Towers(784, [16, 16], join=4))
        >>> x, same = torch.rand(6, 2, 28, 28), torch.tensor([1, 0, 1, 0, 1, 0])
        >>> logits = net(x)
        >>> logits.shape, bool(net.loss(logits, same) > 0)
        (torch.Size([6]), True)
    """

    def __init__(self, model: nn.Module | None = None, optimizer: OptimizerFactory | None = None,
                 scheduler: SchedulerFactory | None = None) -> None:
        super().__init__(model if model is not None else Towers(), optimizer, scheduler, num_classes=2)
        self.val_acc, self.test_acc = BinaryAccuracy(), BinaryAccuracy()
        # one logit, not one per class: no per-class confusion matrix, no outputs-vs-classes check
        self.num_classes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).squeeze(1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))

    def _evaluate(self, batch, split: str, metric: BinaryAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        metric.update(torch.sigmoid(logits), y)  # probabilities: torchmetrics takes values in [0, 1] as such, not as logits
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=split == "val", batch_size=len(y), sync_dist=True)
        self.log(f"{split}/acc", metric, on_epoch=True, prog_bar=split == "val")
        return loss

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return (self(x) > 0).long()
