"""``dnnkit.errors.number``: the one check behind every numeric constructor argument."""

import math

import pytest

from dnnkit.callbacks import LastCheckpoint
from dnnkit.errors import DnnkitError, number


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("k", 0, 1), {"integer": True}, "k must be a positive integer, got 0"),
        (("lr", -0.1, 0), {"low_open": True}, "lr must be a positive number, got -0.1"),
        (("steps", -1, 0), {"integer": True}, "steps must be an integer >= 0, got -1"),
        (("every", -1, 0), {"optional": True}, "every must be a number >= 0 or null, got -1"),
        (("factor", 1, 0, 1), {"low_open": True, "high_open": True}, r"factor must be a number in \(0, 1\), got 1"),
        (("momentum", 0.0, 0, 1), {"low_open": True}, r"momentum must be a number in \(0, 1\], got 0.0"),
        # a bool is an int to Python, never a number to us; NaN is within no bounds; 2.0 is no integer
        (("steps", True, 0), {"integer": True}, "steps must be an integer >= 0, got True"),
        (("lr", math.nan, 0), {"low_open": True}, "lr must be a positive number, got nan"),
        (("k", 2.0, 1), {"integer": True}, "k must be a positive integer, got 2.0"),
        (("lr", "0.1", 0), {"low_open": True}, "lr must be a positive number, got '0.1'"),
    ],
)
def test_out_of_range_or_wrong_type_is_one_message(args, kwargs, message):
    with pytest.raises(DnnkitError, match=f"^{message}$"):
        number(*args, **kwargs)


def test_valid_values_come_back_unchanged():
    assert number("k", 3, 1, integer=True) == 3
    assert number("lr", 0.5, 0, low_open=True) == 0.5
    assert number("every", None, 0, optional=True) is None
    assert number("momentum", 1, 0, 1, low_open=True) == 1
    assert number("explode_growth", math.inf, 0, math.inf, low_open=True) == math.inf


def test_callbacks_refuse_a_bool_where_they_want_a_count():
    # `every_n_train_steps=True` used to pass as 1
    with pytest.raises(DnnkitError, match="every_n_train_steps must be an integer >= 0, got True"):
        LastCheckpoint(every_n_train_steps=True)


def test_infinity_only_where_the_upper_bound_is_infinite():
    with pytest.raises(DnnkitError, match="^lr must be a positive number, got inf$"):
        number("lr", math.inf, 0, low_open=True)
