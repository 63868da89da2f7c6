"""Plain-PyTorch autoencoder pieces: corruption, tied decoders, layer loss."""

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.nn.autoencoder import LayerDecoder, corrupt, layer_loss, reconstruct


def test_corrupt_kinds_leave_the_input_untouched():
    x = torch.rand(50, 100)
    before = x.clone()
    assert torch.equal(corrupt(x, "none", 0.5), x)
    dropped = corrupt(x, "dropout", 0.5)
    zeroed = (dropped == 0).float().mean().item()
    assert 0.4 < zeroed < 0.6
    assert torch.equal(dropped[dropped != 0], x[dropped != 0])  # survivors keep their values
    assert 0.15 < (corrupt(x, "gaussian", 0.2) - x).std().item() < 0.25
    assert torch.equal(x, before)


def test_bad_noise_is_one_message():
    with pytest.raises(DnnkitError, match="unknown noise 'salt'; valid: dropout, gaussian, none"):
        corrupt(torch.zeros(2), "salt", 0.1)


def test_tied_decoder_uses_the_encoder_weight():
    net = MLP(20, [5], 2)
    dec = LayerDecoder(5, 20, tied=True)
    code = torch.rand(3, 5)
    expected = code @ net.hidden1.linear.weight + dec.bias
    assert torch.allclose(dec(code, net.hidden1.linear.weight), expected)
    with pytest.raises(DnnkitError, match="needs the encoder's weight"):
        dec(code)


def test_one_layer_autoencoder_learns():
    torch.manual_seed(0)
    net = MLP(16, [8], 2, activation="elu")
    dec = LayerDecoder(8, 16, tied=False)
    x = (torch.rand(64, 16) > 0.5).float()
    opt = torch.optim.Adam([*net.hidden1.parameters(), *dec.parameters()], lr=0.01)
    first = layer_loss(net.hidden1, dec, x, "bce").item()
    for _ in range(300):
        loss = layer_loss(net.hidden1, dec, x, "bce", "dropout", 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert layer_loss(net.hidden1, dec, x, "bce").item() < 0.7 * first
    out = reconstruct([net.hidden1], [dec], x, ["bce"])
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
