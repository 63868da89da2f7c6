"""The optimizer configs mean what their comments say: the book's formulas, in PyTorch terms."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dnnkit.stages import config_dir


def optimizer(name: str, params, **overrides):
    cfg = OmegaConf.load(config_dir() / "optimizer" / f"{name}.yaml")
    return instantiate(cfg, **overrides)(params)


def grad(theta: torch.Tensor) -> torch.Tensor:
    """Gradient of an ill-conditioned quadratic 0.5 * sum(a * theta**2)."""
    return torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64) * theta


def run_torch(name: str, steps: int, lrs=None, **overrides) -> torch.Tensor:
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    opt = optimizer(name, [theta], **overrides)
    for k in range(steps):
        if lrs:
            opt.param_groups[0]["lr"] = lrs[k]
        theta.grad = grad(theta.detach())
        opt.step()
    return theta.detach()


def book_nesterov(steps: int, lrs: list[float], beta: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's look-ahead form: m <- beta*m - lr*grad(theta + beta*m); theta <- theta + m."""
    theta, m = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for k in range(steps):
        m = beta * m - lrs[k] * grad(theta + beta * m)
        theta = theta + m
    return theta, m


def test_nesterov_is_the_books_look_ahead_at_a_constant_lr():
    lrs = [0.01] * 50
    theta, m = book_nesterov(50, lrs)
    # PyTorch's weights are the book's look-ahead point theta + beta*m: the same algorithm
    assert torch.allclose(run_torch("nesterov", 50, lrs), theta + 0.9 * m, atol=1e-12)


def test_nesterov_differs_from_the_book_under_a_schedule():
    lrs = [0.01 * 0.1 ** (k / 10) for k in range(50)]
    theta, m = book_nesterov(50, lrs)
    assert not torch.allclose(run_torch("nesterov", 50, lrs), theta + 0.9 * m, atol=1e-6)


def test_rmsprop_uses_the_books_decay_0_9():
    theta, s = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for _ in range(20):  # the book: s <- rho*s + (1 - rho)*g^2; theta <- theta - lr*g/sqrt(s) (eps 0 here)
        g = grad(theta)
        s = 0.9 * s + 0.1 * g * g
        theta = theta - 0.001 * g / s.sqrt()
    assert torch.allclose(run_torch("rmsprop", 20, eps=0.0), theta, atol=1e-12)


def test_adagrad_starts_its_accumulator_at_kerass_0_1():
    theta, s = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), torch.full((3,), 0.1, dtype=torch.float64)
    for _ in range(20):
        g = grad(theta)
        s = s + g * g
        theta = theta - 0.001 * g / s.sqrt()
    assert torch.allclose(run_torch("adagrad", 20, eps=0.0), theta, atol=1e-12)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam"])
def test_book_learning_rate_and_plain_containers(name):
    opt = optimizer(name, [torch.zeros(1, requires_grad=True)])
    group = opt.param_groups[0]
    assert group["lr"] == 0.001
    assert all(type(v).__module__.split(".")[0] != "omegaconf" for v in group.values())  # weights_only checkpoints
