"""``AutoencoderPretrainer``: greedy layer-wise (denoising) autoencoder pretraining."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from typing_extensions import override

from dnnkit.errors import choose
from dnnkit.modules.greedy import GreedyPretrainer
from dnnkit.nn.autoencoder import LOSSES, LayerDecoder, check_noise, encoder_linear, layer_loss, reconstruct
from dnnkit.plots import save_filters, save_reconstructions


class AutoencoderPretrainer(GreedyPretrainer):
    """Train ``hidden1`` as an autoencoder of the inputs, then ``hidden2`` of ``hidden1``'s
    codes, and so on, each for its own number of epochs (see :mod:`dnnkit.modules.greedy`).

    Logs ``train/loss`` and ``val/loss`` (the current layer's reconstruction loss; validation
    on clean inputs) and ``train/layer`` (which layer is training). At the end it saves
    ``reconstructions.png`` (validation images above their reconstruction through the whole
    stack) and ``features.png`` (the first layer's weights, one tile per unit) in the run folder.

    Args:
        model: the network whose hidden layers are pretrained; later a classifier with the
            same layer names reuses them.
        optimizer, scheduler, epochs, layers: see :class:`~dnnkit.modules.greedy.GreedyPretrainer`.
        tied: decoders use the encoder's weight transposed (own only a bias).
        noise: ``none``, ``gaussian`` or ``dropout`` corruption of each layer's input (denoising).
        noise_level: the Gaussian std, or the fraction of inputs zeroed.
        input_loss: ``bce`` for the first layer when inputs are in [0, 1] (pixels), else ``mse``;
            the upper layers reconstruct codes of any range with ``mse``.

    Example::

        >>> import lightning as L
        >>> from dnnkit.nn import MLP
        >>> from dnnkit.data import TensorLoader
        >>> x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
        >>> pre = AutoencoderPretrainer(MLP(784, [32, 16], 10), epochs=[1, 1], noise="dropout", noise_level=0.3)
        >>> trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(pre, TensorLoader(x, torch.zeros(64, dtype=torch.long), 16))
        >>> trainer.current_epoch
        2
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        epochs: int | Sequence[int] = 5,
        layers: str = "hidden[0-9]+",
        tied: bool = True,
        noise: str = "dropout",
        noise_level: float = 0.3,
        input_loss: str = "bce",
    ) -> None:
        super().__init__(model, optimizer, scheduler, epochs, layers)
        check_noise(noise, noise_level)
        choose("input_loss", input_loss, LOSSES)
        self.tied, self.noise, self.noise_level = tied, noise, noise_level
        self.losses = [input_loss] + ["mse"] * (len(self.layer_names) - 1)
        linears = [encoder_linear(layer, name) for name, layer in zip(self.layer_names, self.layers)]
        self.decoders = nn.ModuleList(LayerDecoder(lin.out_features, lin.in_features, tied) for lin in linears)

    @override
    def layer_parameters(self, index: int) -> list[nn.Parameter]:
        return [*self.layers[index].parameters(), *self.decoders[index].parameters()]

    @override
    def layer_loss(self, index: int, x: torch.Tensor) -> torch.Tensor:
        noise = self.noise if self.training else "none"
        return layer_loss(self.layers[index], self.decoders[index], x, self.losses[index], noise, self.noise_level)

    def reconstruct(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """``x`` through the bottom ``depth`` layers (default all) and back through their decoders."""
        depth = len(self.layer_names) if depth is None else depth
        return reconstruct(self.layers[:depth], list(self.decoders)[:depth], x, self.losses[:depth])

    @override
    def save_pictures(self, folder: Path, images: torch.Tensor) -> list[Path]:
        was_training = self.training
        self.eval()
        outputs = self.reconstruct(images)
        self.train(was_training)
        files = [
            save_reconstructions(folder / "reconstructions.png", images.flatten(1), outputs),
            save_filters(folder / "features.png", encoder_linear(self.layers[0]).weight),
        ]
        return [f for f in files if f is not None]
