"""Bernoulli RBM: CD-k (and persistent CD) on a tiny synthetic set lowers reconstruction error."""

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn.rbm import BernoulliRBM, cd_loss, free_energy


def patterns(n=200, seed=0):
    """Four 16-pixel prototypes with 5% of the bits flipped."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1] * 8 + [0] * 8, [0] * 8 + [1] * 8, [1, 0] * 8, [0, 1] * 8], dtype=torch.float)
    v = protos[torch.randint(0, 4, (n,), generator=g)]
    flip = torch.rand(v.shape, generator=g) < 0.05
    return torch.where(flip, 1 - v, v)


@pytest.mark.parametrize("k, persistent", [(1, False), (3, False), (1, True)])
def test_cd_lowers_reconstruction_error(k, persistent):
    torch.manual_seed(0)
    v = patterns()
    rbm = BernoulliRBM(16, 8, init_std=0.01)
    opt = torch.optim.SGD(rbm.parameters(), lr=0.1, momentum=0.5)
    before, pl_before = rbm.reconstruction_error(v).item(), rbm.pseudo_likelihood(v, torch.Generator().manual_seed(1)).item()
    chain = None
    for _epoch in range(30):
        for b in range(0, len(v), 20):
            batch = v[b : b + 20]
            loss, end = rbm.cd_loss(batch, k=k, chain=chain if persistent else None)
            chain = end
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = rbm.reconstruction_error(v).item()
    assert after < 0.5 * before, (before, after)
    assert rbm.pseudo_likelihood(v, torch.Generator().manual_seed(1)).item() > pl_before


def test_cd_gradient_is_the_contrastive_divergence_update():
    torch.manual_seed(0)
    rbm = BernoulliRBM(6, 4, init_std=0.5)
    v = torch.rand(5, 6)
    loss, end = rbm.cd_loss(v, k=1)
    loss.backward()
    ph_data = torch.sigmoid(v @ rbm.weight.T + rbm.hidden_bias).detach()
    ph_model = torch.sigmoid(end @ rbm.weight.T + rbm.hidden_bias).detach()
    positive, negative = ph_data.T @ v / 5, ph_model.T @ end / 5
    assert torch.allclose(-rbm.weight.grad, positive - negative, atol=1e-6)
    assert torch.allclose(-rbm.visible_bias.grad, v.mean(0) - end.mean(0), atol=1e-6)


def test_free_energy_matches_brute_force():
    torch.manual_seed(0)
    rbm = BernoulliRBM(3, 2, init_std=1.0)
    with torch.no_grad():
        rbm.hidden_bias.normal_()
        rbm.visible_bias.normal_()
    v = torch.tensor([[1.0, 0.0, 1.0]])
    hs = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    energies = -(v @ rbm.visible_bias) - hs @ rbm.hidden_bias - (hs @ rbm.weight @ v.T).squeeze(1)
    expected = -torch.logsumexp(-energies, 0)
    assert torch.allclose(free_energy(v, *rbm.params()), expected.detach(), atol=1e-5)


def test_bad_k():
    rbm = BernoulliRBM(4, 2)
    with pytest.raises(DnnkitError, match="k .* must be a positive integer, got 0"):
        cd_loss(torch.rand(2, 4), *rbm.params(), k=0)


@pytest.mark.parametrize("args, message", [
    ((784, -5), "n_hidden must be a positive integer, got -5"),
    ((0, 10), "n_visible must be a positive integer, got 0"),
    ((784, 10, -0.1), "init_std must be a number >= 0, got -0.1"),
])
def test_bad_sizes_fail_in_the_constructor(args, message):
    with pytest.raises(DnnkitError, match=message):
        BernoulliRBM(*args)
