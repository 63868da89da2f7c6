import math

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn.init import TRUNCATED_STD, init_weight_, target_std

FAN_IN, FAN_OUT = 784, 300
SCALE = {"he": 2.0, "xavier": 1.0, "glorot": 1.0, "lecun": 1.0}
N = {"fan_in": FAN_IN, "fan_out": FAN_OUT, "fan_avg": (FAN_IN + FAN_OUT) / 2}


@pytest.mark.parametrize("scheme", list(SCALE))
@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_empirical_std_matches_formula_at_784_to_300(scheme, distribution, mode):
    torch.manual_seed(0)
    w = torch.empty(FAN_OUT, FAN_IN)  # nn.Linear(784, 300).weight
    init_weight_(w, scheme, distribution, mode)
    expected = math.sqrt(SCALE[scheme] / N[mode])  # written out here, not taken from the library
    assert abs(w.std().item() / expected - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * expected


def test_default_modes_follow_the_book():
    w = torch.empty(FAN_OUT, FAN_IN)
    assert target_std(w, "he") == pytest.approx(math.sqrt(2 / FAN_IN))
    assert target_std(w, "xavier") == pytest.approx(math.sqrt(2 / (FAN_IN + FAN_OUT)))
    assert target_std(w, "lecun") == pytest.approx(math.sqrt(1 / FAN_IN))


def test_truncated_normal_is_cut_at_two_of_its_own_stds():
    torch.manual_seed(0)
    w = init_weight_(torch.empty(FAN_OUT, FAN_IN), "he", "truncated_normal")
    bound = 2 * math.sqrt(2 / FAN_IN) / TRUNCATED_STD
    assert w.abs().max().item() <= bound + 1e-6
    assert w.abs().max().item() > 0.95 * bound


def test_uniform_limit_and_plain_normal():
    torch.manual_seed(0)
    w = init_weight_(torch.empty(FAN_OUT, FAN_IN), "glorot", "uniform")
    assert w.abs().max().item() <= math.sqrt(6 / (FAN_IN + FAN_OUT)) + 1e-6
    w = init_weight_(torch.empty(FAN_OUT, FAN_IN), "normal", std=1.0)
    assert abs(w.std().item() - 1.0) < 0.05


def test_conv_fans_include_the_kernel():
    torch.manual_seed(0)
    w = init_weight_(torch.empty(64, 32, 3, 3), "he")
    assert abs(w.std().item() / math.sqrt(2 / (32 * 9)) - 1) < 0.05


@pytest.mark.parametrize("kwargs", [{"scheme": "hee"}, {"distribution": "gauss"}, {"mode": "fan_max"}])
def test_unknown_names_list_the_valid_ones(kwargs):
    with pytest.raises(DnnkitError, match="valid:"):
        init_weight_(torch.empty(3, 4), **kwargs)


def test_negative_std_is_refused():
    from dnnkit.errors import DnnkitError
    from dnnkit.nn.init import init_weight_

    with pytest.raises(DnnkitError, match="std must be a number >= 0, got -1"):
        init_weight_(torch.empty(3, 4), "normal", std=-1)
