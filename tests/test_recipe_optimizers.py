"""`+recipe=optimizers` end to end on synthetic data: every optimizer stage trains, its
checkpoint loads with weights_only=True, and the run ends in one table and one plot."""

from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config

STAGES = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "nadam"]


def test_optimizers_recipe_smoke(fake_data, tmp_path):
    cfg = compose_config(["+recipe=optimizers", *FAST, "trainer.max_epochs=2"])
    results = run_recipe(cfg, tmp_path / "run")
    assert [r.stage for r in results] == STAGES
    for r in results:
        assert 0.0 <= r.metrics["val/acc"] <= 1.0
        read_state_dict(r.best_checkpoint)  # weights_only=True: no Hydra containers inside
    table = (tmp_path / "run" / "results.md").read_text()
    assert all(f"| {s} |" in table for s in STAGES)
    assert "val/acc 0.8708" in table and "Hands-On ML 3e" in table
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_history_keeps_every_epoch_after_testing_the_best_checkpoint(fake_data, tmp_path):
    # testing from best.ckpt restores callback states; the curves must still cover every epoch
    cfg = compose_config(["+recipe=optimizers", *FAST, "trainer.max_epochs=3", "callbacks.checkpoint.monitor=train/loss",
                          "callbacks.checkpoint.mode=max",
                          "+stages={sgd: null, momentum: null, nesterov: null, adagrad: null, rmsprop: null, adamw: null, nadam: null}"])
    [result] = run_recipe(cfg, tmp_path / "run")  # best (max train loss) is epoch 1
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
