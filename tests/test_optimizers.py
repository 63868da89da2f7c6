"""The optimizer configs mean what their comments say: the book's formulas, in PyTorch terms,
and where PyTorch differs from the seed's TF 1 and from Keras 3."""

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


def tf1_rmsprop(steps: int, lr=0.001, decay=0.9, momentum=0.9, eps=1e-6, ms0=1.0) -> torch.Tensor:
    """TF 1's tf.train.RMSPropOptimizer, as the seed called it: ms starts at ms0 (TF 1: 1),
    ms <- decay*ms + (1 - decay)*g^2; mom <- momentum*mom + lr*g/sqrt(ms + eps); theta -= mom."""
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    ms, mom = torch.full((3,), ms0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for _ in range(steps):
        g = grad(theta)
        ms = decay * ms + (1 - decay) * g * g
        mom = momentum * mom + lr * g / (ms + eps).sqrt()
        theta = theta - mom
    return theta


def test_the_seeds_rmsprop_differs_only_by_its_start_at_1_and_eps_inside_the_root():
    # the seed's momentum and decay are optimizer=rmsprop +optimizer.momentum=0.9 ...
    torch_form = run_torch("rmsprop", 30, eps=0.0, momentum=0.9)
    assert torch.allclose(torch_form, tf1_rmsprop(30, eps=0.0, ms0=0.0), atol=1e-12)
    # ... but TF 1 starts its mean square at 1: a first step of lr*|g|/sqrt(0.9 + 0.1*g^2), not
    # PyTorch's lr/sqrt(0.1) = 3.16*lr whatever g is; much smaller where |g| << 1, as in most nets
    start = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g = grad(start).abs()
    torch_step = (run_torch("rmsprop", 1, eps=0.0, momentum=0.9) - start).abs()
    assert torch.allclose(torch_step, torch.full((3,), 0.001 / 0.1**0.5, dtype=torch.float64))
    assert torch.allclose((tf1_rmsprop(1, eps=0.0) - start).abs(), 0.001 * g / (0.9 + 0.1 * g * g).sqrt())
    assert not torch.allclose(run_torch("rmsprop", 30, eps=1e-6, momentum=0.9), tf1_rmsprop(30), atol=1e-4)


def nadam_reference(steps: int, warmup, lr=0.001, b1=0.9, b2=0.999, eps=1e-7) -> torch.Tensor:
    """Nadam as Dozat writes it and Keras 3 codes it, with the momentum warm-up ``warmup(t)``:
    mu_t = b1 * (1 - 0.5 * warmup(t)), bias corrections by the product of the mu's and b2**t."""
    theta = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    m, v, mu_product = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 1.0
    for t in range(1, steps + 1):
        g = grad(theta)
        mu, mu_next = b1 * (1 - 0.5 * warmup(t)), b1 * (1 - 0.5 * warmup(t + 1))
        mu_product *= mu
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = mu_next * m / (1 - mu_product * mu_next) + (1 - mu) * g / (1 - mu_product)
        theta = theta - lr * m_hat / ((v / (1 - b2**t)).sqrt() + eps)
    return theta


def test_nadam_warms_its_momentum_up_as_dozat_not_as_keras_3():
    dozat = nadam_reference(200, lambda t: 0.96 ** (0.004 * t))   # torch's momentum_decay 0.004
    keras3 = nadam_reference(200, lambda t: 0.96**t)
    ours = run_torch("nadam", 200)
    assert torch.allclose(ours, dozat, atol=1e-10)
    assert (ours - keras3).abs().max() > 1e-4  # another trajectory (0.96**t warms up within ~100 steps)
    # the comment's numbers: mu_t from 0.45, 0.52 at step 1,000, 0.81 at 10,000; Keras 0.89 at 100
    mu = lambda t, w: 0.9 * (1 - 0.5 * w(t))  # noqa: E731
    assert [round(mu(t, lambda t: 0.96 ** (0.004 * t)), 2) for t in (1, 1000, 10000)] == [0.45, 0.52, 0.81]
    assert round(mu(100, lambda t: 0.96**t), 2) == 0.89


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam"])
def test_book_learning_rate_and_plain_containers(name):
    opt = optimizer(name, [torch.zeros(1, requires_grad=True)])
    group = opt.param_groups[0]
    assert group["lr"] == 0.001
    assert all(type(v).__module__.split(".")[0] != "omegaconf" for v in group.values())  # weights_only checkpoints
