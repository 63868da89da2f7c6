"""+recipe=mnist_clipping on real MNIST: the seed's clipping run, 20 epochs (data, slow)."""

import pytest

from dnnkit.runner import run_recipe
from tests.conftest import compose_config


@pytest.mark.data
@pytest.mark.slow
def test_mnist_clipping_close_to_the_seed(real_data_dir, tmp_path):
    """Issue check: >= 0.955 (seed: 0.9638 after 20 epochs). Measured with the seed's validation
    set (the file's first 5,000 images): 0.9580 (seed 42), 0.9632 (seed 1)."""
    cfg = compose_config(["+recipe=mnist_clipping", "trainer.enable_progress_bar=false"])
    result = run_recipe(cfg, tmp_path / "run")[0]
    assert result.epochs == 20
    assert result.metrics["val/acc"] >= 0.955, result.metrics
    assert result.metrics["grad/clipped_steps"] >= 0.0  # the callback ran and logged
