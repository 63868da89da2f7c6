"""NullProfiler: what python -m dnnkit.train profiles with unless trainer.profiler is set."""

import pytest
from lightning.pytorch.profilers import SimpleProfiler

from dnnkit.profiler import NullProfiler
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def test_null_profiler_profiles_nothing():
    profiler = NullProfiler()
    with profiler.profile("a") as a, profiler.profile("b") as b:
        assert a is None and b is None
    assert profiler.summary() == ""


class Fitted(Exception):
    pass


@pytest.mark.parametrize(("overrides", "expected"), [([], NullProfiler), (["+trainer.profiler=simple"], SimpleProfiler)])
def test_recipes_use_it_unless_a_profiler_is_asked_for(fake_data, tmp_path, monkeypatch, overrides, expected):
    def fit(trainer, *args, **kwargs):
        raise Fitted(type(trainer.profiler))

    monkeypatch.setattr("lightning.Trainer.fit", fit)
    with pytest.raises(Fitted) as got:
        run_recipe(compose_config(FAST + overrides), tmp_path)
    assert got.value.args[0] is expected
