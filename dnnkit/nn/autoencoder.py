"""Autoencoders for greedy layer-wise pretraining, in plain PyTorch.

A hidden layer of an :class:`~dnnkit.nn.MLP` (``hidden1``: ``linear -> act``) is the encoder;
a :class:`LayerDecoder` maps its code back to the layer's input. Training one layer at a time
(``hidden1`` on the images, ``hidden2`` on ``hidden1``'s codes, ...) is what
:class:`dnnkit.modules.AutoencoderPretrainer` does with these pieces.

* **Tied weights**: the decoder reuses the encoder's weight transposed (``W.T``) and owns only
  a bias, halving the parameters (Hands-On ML 1e, ch. 15, "Tying weights").
* **Denoising** (Vincent et al., 2008): the encoder sees a corrupted input, the loss compares
  the reconstruction with the clean one. ``gaussian`` adds N(0, level²) noise; ``dropout``
  zeroes a ``level`` fraction of the inputs (masking noise, no 1/(1-p) rescaling, so the
  surviving pixels keep their values).
* **Loss**: ``bce`` (a sigmoid decoder, for inputs in [0, 1] such as pixels) or ``mse``
  (a linear decoder, for codes of any range such as ELU outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dnnkit.errors import DnnkitError, choose

NOISES = ("none", "gaussian", "dropout")
LOSSES = ("bce", "mse")


def encoder_linear(layer: nn.Module, name: str = "layer") -> nn.Linear:
    """The ``nn.Linear`` of a hidden layer (``layer.linear`` in a DenseBlock, or the layer itself)."""
    linear = layer if isinstance(layer, nn.Linear) else getattr(layer, "linear", None)
    if not isinstance(linear, nn.Linear):
        raise DnnkitError(f"{name} has no nn.Linear to pretrain (expected a DenseBlock with .linear), got {type(layer).__name__}")
    return linear


def corrupt(x: torch.Tensor, noise: str = "none", level: float = 0.0) -> torch.Tensor:
    """The denoising autoencoder's corrupted input (a new tensor; ``x`` is untouched).

    Example::

        >>> x = torch.ones(2, 1000)
        >>> kept = (corrupt(x, "dropout", 0.3) > 0).float().mean().item()
        >>> 0.6 < kept < 0.8
        True
    """
    choose("noise", noise, NOISES)
    if noise == "none" or level == 0:
        return x
    if noise == "gaussian":
        return x + level * torch.randn_like(x)
    return x * (torch.rand_like(x) >= level)


def check_noise(noise: str, level: float) -> None:
    choose("noise", noise, NOISES)
    if not isinstance(level, (int, float)) or level < 0 or (noise == "dropout" and level >= 1):
        raise DnnkitError(f"noise level must be >= 0 (and < 1 for dropout noise), got {level!r}")


class LayerDecoder(nn.Module):
    """Maps a layer's code back to the layer's input; returns pre-activation values.

    Args:
        n_code: the layer's output size.
        n_out: the layer's input size.
        tied: use the encoder's weight transposed (pass it to :meth:`forward`); own only a bias.

    Example::

        >>> enc = nn.Linear(784, 30)
        >>> dec = LayerDecoder(30, 784, tied=True)
        >>> dec(torch.zeros(5, 30), enc.weight).shape
        torch.Size([5, 784])
        >>> sum(p.numel() for p in dec.parameters())  # the bias only
        784
    """

    def __init__(self, n_code: int, n_out: int, tied: bool = False) -> None:
        super().__init__()
        self.tied = tied
        self.weight = None if tied else nn.Parameter(torch.empty(n_out, n_code))
        self.bias = nn.Parameter(torch.zeros(n_out))
        if not tied:
            nn.init.xavier_uniform_(self.weight)

    def forward(self, code: torch.Tensor, encoder_weight: torch.Tensor | None = None) -> torch.Tensor:
        if self.tied:
            if encoder_weight is None:
                raise DnnkitError("a tied LayerDecoder needs the encoder's weight: decoder(code, encoder.weight)")
            return F.linear(code, encoder_weight.t(), self.bias)
        return F.linear(code, self.weight, self.bias)


def reconstruction_loss(out: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """``bce``: ``out`` are logits of targets in [0, 1]; ``mse``: ``out`` are the values."""
    if choose("reconstruction loss", loss, LOSSES) == "bce":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


def decoded(out: torch.Tensor, loss: str) -> torch.Tensor:
    """The reconstruction itself (sigmoid of the logits under ``bce``)."""
    return torch.sigmoid(out) if loss == "bce" else out


def layer_loss(
    layer: nn.Module, decoder: LayerDecoder, x: torch.Tensor, loss: str = "mse", noise: str = "none", level: float = 0.0
) -> torch.Tensor:
    """Reconstruction loss of one layer's autoencoder on its input ``x`` (denoising if asked).

    Example::

        >>> from dnnkit.nn import MLP
        >>> net = MLP(784, [30], 10)
        >>> dec = LayerDecoder(30, 784, tied=True)
        >>> layer_loss(net.hidden1, dec, torch.rand(8, 784), "bce", "dropout", 0.3).shape
        torch.Size([])
    """
    code = layer(corrupt(x, noise, level))
    return reconstruction_loss(decoder(code, encoder_linear(layer).weight), x, loss)


@torch.no_grad()
def reconstruct(layers: list[nn.Module], decoders: list[LayerDecoder], x: torch.Tensor, losses: list[str]) -> torch.Tensor:
    """Encode ``x`` through ``layers`` and decode back down through ``decoders`` (same order)."""
    codes = x.flatten(1)
    for layer in layers:
        codes = layer(codes)
    for layer, decoder, loss in reversed(list(zip(layers, decoders, losses))):
        codes = decoded(decoder(codes, encoder_linear(layer).weight), loss)
    return codes
