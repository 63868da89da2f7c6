"""Real MNIST: the seed's batch-norm run, end to end (skipped without DNNKIT_DATA_DIR)."""

import pytest

from dnnkit.data import MNISTDataModule
from dnnkit.runner import run_recipe
from tests.conftest import compose_config


@pytest.mark.data
@pytest.mark.slow  # reads the real sets
def test_real_mnist_matches_the_published_statistics(real_data_dir):
    dm = MNISTDataModule("mnist", val_size=0)
    x, y = dm.split("train")
    assert y.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(x.float().div(255).mean().item() - 0.1307) < 1e-3
    assert dm.split("test")[1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.data
@pytest.mark.slow
def test_mnist_bn_reaches_the_seed(real_data_dir, tmp_path):
    """Issue check: final validation accuracy >= 0.965 (seed 0.9712 after 20 epochs)."""
    cfg = compose_config(["+recipe=mnist_bn", "trainer.enable_progress_bar=false"])
    result = run_recipe(cfg, tmp_path / "run")[0]
    assert result.epochs == 20
    assert result.metrics["val/acc"] >= 0.965, result.metrics
