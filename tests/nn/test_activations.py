import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn.activations import ACTIVATIONS, default_init, make_activation


def test_rrelu_random_in_training_fixed_in_eval():
    act = make_activation("rrelu", lower=0.1, upper=0.3)
    x = -torch.ones(10_000)
    act.train()
    slopes = -act(x)
    assert slopes.min() >= 0.1 and slopes.max() <= 0.3
    assert slopes.std() > 0.03  # U(0.1, 0.3) has std 0.058: really random
    act.eval()
    assert torch.allclose(-act(x), torch.full_like(x, 0.2))  # (lower + upper) / 2


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_runs(name):
    out = make_activation(name)(torch.linspace(-3, 3, 7))
    assert out.shape == (7,)


def test_parameters_reach_the_activation():
    assert make_activation("leaky_relu", negative_slope=0.2)(torch.tensor([-1.0])).item() == pytest.approx(-0.2)
    assert make_activation("elu", alpha=2.0)(torch.tensor([-100.0])).item() == pytest.approx(-2.0)


def test_bad_names_and_parameters_are_clear():
    with pytest.raises(DnnkitError, match="unknown activation 'relu6'.*valid: elu"):
        make_activation("relu6")
    with pytest.raises(DnnkitError, match="bad parameters"):
        make_activation("elu", slope=3)


def test_default_init_follows_the_activation():
    assert default_init("relu") == default_init("elu") == "he"
    assert default_init("selu") == "lecun"
    assert default_init("sigmoid") == default_init("tanh") == "xavier"


def test_rrelu_needs_lower_at_most_upper():
    with pytest.raises(DnnkitError, match="rrelu needs lower <= upper"):
        make_activation("rrelu", lower=0.5, upper=0.1)
