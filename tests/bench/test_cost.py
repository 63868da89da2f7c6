"""Smoke test of ``python -m bench.cost`` on the small fake data set (spawns a training process)."""

import pytest

from bench import cost
from tests.bench.sections import number, positive, seconds, section, table


@pytest.mark.slow
def test_cost_of_a_recipe_run_goes_into_its_section(fake_data, results, tmp_path):
    argv = ["mnist_fast", "--runs", str(tmp_path / "runs"), "--results", str(results),
            "--", "trainer.max_epochs=1", "data.val_size=200"]
    assert cost.main(argv) == 0
    text = section(results, "cost")
    row = table(text, "recipe")["`mnist_fast`"]
    stages, wall, cpu, fit, rss, test_acc, val_acc = row
    assert stages == "1" and all(positive(c) for c in (wall, cpu, rss)) and seconds(fit)
    assert 0.0 <= number(test_acc) <= 1.0 and 0.0 <= number(val_acc) <= 1.0
    assert "-- trainer.max_epochs=1 data.val_size=200`" in text  # the command as given, overrides included
