"""Bernoulli restricted Boltzmann machines trained with contrastive divergence, in plain PyTorch.

An RBM with visible units v, hidden units h, weight ``W`` (hidden x visible, the layout of an
``nn.Linear(n_visible, n_hidden)``), hidden bias ``b_h`` and visible bias ``b_v`` has

    p(h=1 | v) = sigmoid(v W.T + b_h),    p(v=1 | h) = sigmoid(h W + b_v),
    free energy F(v) = -v . b_v - sum_j softplus((v W.T + b_h)_j).

**CD-k** (Hinton, 2002): start a Gibbs chain at the data, run k steps, and follow
``-(dF(v_data) - dF(v_k))``: the gradient of ``mean F(v_data) - mean F(v_k)`` with ``v_k``
held constant, which is what :func:`cd_loss` returns, so any torch optimizer applies the CD
update. **Persistent CD** (Tieleman, 2008) continues the chain from where the previous batch
left it instead of restarting at the data. As Hinton's practical guide advises, hidden states
are sampled but the visible states of the chain are probabilities, and inputs in [0, 1] (grey
pixels, or the lower layer's probabilities when stacking) are used as they are.

The weight and hidden bias are exactly a sigmoid ``nn.Linear`` layer's: a stack of RBMs
initialises a sigmoid MLP layer by layer (:class:`dnnkit.modules.RBMPretrainer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dnnkit.errors import number


def hidden_probs(v: torch.Tensor, weight: torch.Tensor, hidden_bias: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(F.linear(v, weight, hidden_bias))


def visible_probs(h: torch.Tensor, weight: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(F.linear(h, weight.t(), visible_bias))


def free_energy(v: torch.Tensor, weight: torch.Tensor, hidden_bias: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
    """F(v) per sample."""
    return -(v @ visible_bias) - F.softplus(F.linear(v, weight, hidden_bias)).sum(1)


@torch.no_grad()
def gibbs_chain(
    v: torch.Tensor, weight: torch.Tensor, hidden_bias: torch.Tensor, visible_bias: torch.Tensor, k: int
) -> torch.Tensor:
    """k steps v -> h (sampled) -> v (probabilities); returns the last visible probabilities."""
    for _ in range(k):
        h = torch.bernoulli(hidden_probs(v, weight, hidden_bias))
        v = visible_probs(h, weight, visible_bias)
    return v


def cd_loss(
    v: torch.Tensor,
    weight: torch.Tensor,
    hidden_bias: torch.Tensor,
    visible_bias: torch.Tensor,
    k: int = 1,
    chain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CD-k (or, given ``chain``, persistent CD) surrogate loss and the chain's end state.

    Its gradient is the negative CD update; the value (a free-energy gap) is not a likelihood.

    Example::

        >>> rbm = BernoulliRBM(6, 3)
        >>> loss, end = cd_loss(torch.rand(4, 6), rbm.weight, rbm.hidden_bias, rbm.visible_bias, k=2)
        >>> loss.backward(); rbm.weight.grad.shape
        torch.Size([3, 6])
    """
    number("k (Gibbs steps of CD-k)", k, 1, integer=True)
    start = v if chain is None else chain
    end = gibbs_chain(start.detach(), weight, hidden_bias, visible_bias, k)
    loss = free_energy(v, weight, hidden_bias, visible_bias).mean() - free_energy(end, weight, hidden_bias, visible_bias).mean()
    return loss, end


@torch.no_grad()
def reconstruction_error(v: torch.Tensor, weight: torch.Tensor, hidden_bias: torch.Tensor, visible_bias: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the mean-field reconstruction v -> p(h|v) -> p(v|h)."""
    return F.mse_loss(visible_probs(hidden_probs(v, weight, hidden_bias), weight, visible_bias), v)


@torch.no_grad()
def pseudo_likelihood(
    v: torch.Tensor, weight: torch.Tensor, hidden_bias: torch.Tensor, visible_bias: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mean log pseudo-likelihood of the binarised ``v`` (> 0.5), estimated as scikit-learn's
    ``BernoulliRBM.score_samples`` does: one randomly chosen unit flipped per sample,
    ``n_visible * log sigmoid(F(v_flipped) - F(v))``. Higher is better; it is noisy per batch."""
    v = (v > 0.5).float()
    idx = torch.randint(0, v.shape[1], (v.shape[0],), generator=generator, device="cpu").to(v.device)
    flipped = v.clone()
    rows = torch.arange(v.shape[0], device=v.device)
    flipped[rows, idx] = 1 - flipped[rows, idx]
    gap = free_energy(flipped, weight, hidden_bias, visible_bias) - free_energy(v, weight, hidden_bias, visible_bias)
    return (v.shape[1] * F.logsigmoid(gap)).mean()


class BernoulliRBM(nn.Module):
    """A Bernoulli-Bernoulli RBM holding its own parameters.

    Args:
        n_visible: visible units (784 for MNIST pixels).
        n_hidden: hidden units.
        init_std: the weights start as N(0, init_std²) (Hinton's guide: 0.01); biases at 0.

    Example::

        >>> rbm = BernoulliRBM(784, 64)
        >>> opt = torch.optim.SGD(rbm.parameters(), lr=0.1)
        >>> v = torch.rand(32, 784)
        >>> loss, _ = rbm.cd_loss(v, k=1); opt.zero_grad(); loss.backward(); opt.step()
        >>> rbm.transform(v).shape
        torch.Size([32, 64])
    """

    def __init__(self, n_visible: int, n_hidden: int, init_std: float = 0.01) -> None:
        number("n_visible", n_visible, 1, integer=True)
        number("n_hidden", n_hidden, 1, integer=True)
        number("init_std", init_std, 0)
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_hidden, n_visible) * init_std)
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden))
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))

    def params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.weight, self.hidden_bias, self.visible_bias

    def transform(self, v: torch.Tensor) -> torch.Tensor:
        """p(h=1 | v): the features a stacked RBM passes up."""
        return hidden_probs(v, self.weight, self.hidden_bias)

    def cd_loss(self, v: torch.Tensor, k: int = 1, chain: torch.Tensor | None = None):
        return cd_loss(v, *self.params(), k=k, chain=chain)

    def reconstruction_error(self, v: torch.Tensor) -> torch.Tensor:
        return reconstruction_error(v, *self.params())

    def pseudo_likelihood(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return pseudo_likelihood(v, *self.params(), generator=generator)
