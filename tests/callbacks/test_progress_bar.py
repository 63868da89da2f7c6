"""ProgressBar redraws by time, and at the end of each bar."""

import pytest

from dnnkit.callbacks import ProgressBar
from dnnkit.errors import DnnkitError


def test_redraws_at_most_every_min_interval_and_at_the_end():
    bar = ProgressBar(min_interval=3600)
    assert [bar._should_update(i, 10) for i in range(1, 11)] == [True] + [False] * 8 + [True]
    assert all(ProgressBar(min_interval=0)._should_update(i, 10) for i in range(1, 11))


def test_disabled_bar_never_redraws():
    bar = ProgressBar(min_interval=0)
    bar.disable()
    assert not bar._should_update(10, 10)


def test_min_interval_is_checked():
    with pytest.raises(DnnkitError, match="min_interval \\(seconds\\) must be a number >= 0, got -1"):
        ProgressBar(min_interval=-1)
