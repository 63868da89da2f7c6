"""``RBMPretrainer``: a greedy stack of Bernoulli RBMs that initialises a sigmoid MLP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from typing_extensions import override

from dnnkit.errors import DnnkitError, number
from dnnkit.modules.greedy import GreedyPretrainer
from dnnkit.nn.autoencoder import encoder_linear
from dnnkit.nn.rbm import cd_loss, hidden_probs, pseudo_likelihood, reconstruction_error, visible_probs
from dnnkit.plots import save_filters, save_reconstructions


class RBMPretrainer(GreedyPretrainer):
    """Train ``hidden1`` as a Bernoulli RBM on the inputs, then ``hidden2`` as an RBM on
    ``hidden1``'s probabilities p(h|v), and so on (Hinton, Osindero & Teh, 2006), with CD-k or
    persistent CD (:mod:`dnnkit.nn.rbm`).

    Each RBM *is* the hidden layer: its weight and hidden bias are the layer's ``linear``
    (whose activation must be ``sigmoid``, so that the layer computes p(h|v)); only the
    visible biases live here. A Classifier with the same sigmoid MLP then reuses
    ``hidden.*`` and fine-tunes it with labels.

    Logs ``train/cd_gap`` (the CD surrogate: free-energy gap between data and chain, not a
    likelihood), ``train/recon`` and ``val/recon`` (mean-field reconstruction MSE, which should
    fall), ``val/pseudo_likelihood`` (higher is better) and ``train/layer``. Saves ``filters.png``
    (first-layer weights) and ``reconstructions.png`` (validation images above their
    mean-field reconstruction through the whole stack).

    Args:
        model: a sigmoid MLP (``activation: sigmoid``).
        optimizer, scheduler, epochs, layers: see :class:`~dnnkit.modules.greedy.GreedyPretrainer`
            (SGD with momentum is the classic choice).
        k: Gibbs steps per update (CD-k).
        persistent: persistent CD: each layer's chain continues across batches (the chains
            are not checkpointed: a resumed run restarts them at the data).
        init_std: restart the weights as N(0, init_std²) and the biases at 0, as Hinton's
            practical guide does (``None`` keeps the model's own initialisation).
        sample_inputs: in training, the first RBM sees a binary sample of its grey inputs
            (each pixel on with its grey level as probability, a fresh sample every batch:
            stochastic binarisation); validation sees the grey values.

    Example::

        >>> import lightning as L
        >>> from dnnkit.nn import MLP
        >>> from dnnkit.data import TensorLoader
        >>> x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
        >>> pre = RBMPretrainer(MLP(784, [32, 16], 10, activation="sigmoid"), epochs=1, k=1)
        >>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(pre, TensorLoader(x, torch.zeros(64, dtype=torch.long), 16))
        >>> trainer.current_epoch
        2
    """

    loss_name = "cd_gap"

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        epochs: int | Sequence[int] = 5,
        layers: str = "hidden[0-9]+",
        k: int = 1,
        persistent: bool = False,
        init_std: float | None = 0.01,
        sample_inputs: bool = False,
    ) -> None:
        super().__init__(model, optimizer, scheduler, epochs, layers)
        number("k (Gibbs steps of CD-k)", k, 1, integer=True)
        linears = []
        for name, layer in zip(self.layer_names, self.layers):
            act = getattr(layer, "act", None)
            if not isinstance(act, nn.Sigmoid) or getattr(layer, "bn", None) is not None:
                raise DnnkitError(
                    f"RBM pretraining needs sigmoid layers without batch norm (p(h|v) = sigmoid(linear(v))); "
                    f"{name} has {act!r}: use model.activation=sigmoid, model.batch_norm=false"
                )
            linears.append(encoder_linear(layer, name))
        if init_std is not None:
            with torch.no_grad():
                for lin in linears:
                    lin.weight.normal_(0.0, init_std)
                    lin.bias.zero_()
        self.k, self.persistent, self.sample_inputs = k, persistent, bool(sample_inputs)
        self.visible_biases = nn.ParameterList(nn.Parameter(torch.zeros(lin.in_features)) for lin in linears)
        self._chains: dict[int, torch.Tensor] = {}

    def rbm(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight, hidden bias, visible bias) of layer ``index``'s RBM."""
        lin = encoder_linear(self.layers[index])
        return lin.weight, lin.bias, self.visible_biases[index]

    @override
    def layer_parameters(self, index: int) -> list[nn.Parameter]:
        return list(self.rbm(index))

    @override
    def layer_loss(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.sample_inputs and self.training and index == 0:
            x = torch.bernoulli(x.clamp(0, 1))
        chain = None
        if self.persistent and self.training:
            chain = self._chains.get(index)
            if chain is None or len(chain) < len(x):
                chain = x  # (re)start the persistent chain at the data
            chain = chain[: len(x)]
        loss, end = cd_loss(x, *self.rbm(index), k=self.k, chain=chain)
        if self.persistent and self.training:
            self._chains[index] = end.detach()
        return loss

    @override
    def layer_metrics(self, index: int, x: torch.Tensor, split: str) -> None:
        params = self.rbm(index)
        self.log(f"{split}/recon", reconstruction_error(x, *params), on_epoch=True, prog_bar=True, batch_size=len(x))
        if split == "val":
            self.log("val/pseudo_likelihood", pseudo_likelihood(x, *params), on_epoch=True, batch_size=len(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-field pass up through every RBM and back down."""
        v = x.flatten(1)
        for i in range(len(self.layer_names)):
            weight, hidden_bias, _ = self.rbm(i)
            v = hidden_probs(v, weight, hidden_bias)
        for i in reversed(range(len(self.layer_names))):
            weight, _, visible_bias = self.rbm(i)
            v = visible_probs(v, weight, visible_bias)
        return v

    @override
    def save_pictures(self, folder: Path, images: torch.Tensor) -> list[Path]:
        files = [
            save_filters(folder / "filters.png", self.rbm(0)[0]),
            save_reconstructions(folder / "reconstructions.png", images.flatten(1), self.reconstruct(images)),
        ]
        return [f for f in files if f is not None]
