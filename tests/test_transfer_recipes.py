"""The transfer recipes run end to end on synthetic data (tiny: a few batches per stage)."""

import torch

from dnnkit.nn import load_inference_model
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def test_transfer_recipe_runs_and_unfreezes(fake_data, tmp_path, capsys):
    cfg = compose_config(
        ["+recipe=transfer", *FAST, "trainer.max_epochs=2", "seeds=[0,1]",
         "stages.B_scratch.data.n_per_class=10", "stages.B_on_A.data.n_per_class=10",
         "stages.B_on_A.callbacks.layer_freezing.unfreeze_at_epoch=1"]
    )
    results = run_recipe(cfg, tmp_path / "run")
    assert [(r.stage, r.seed) for r in results] == [("A", 42), ("B_scratch", 0), ("B_scratch", 1), ("B_on_A", 0), ("B_on_A", 1)]
    out = capsys.readouterr().out
    assert "epoch 2: unfroze model.hidden1" in out and "transfer: results" in out
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| B_on_A | 2 |" in table and "test/acc 0.9940" in table
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000  # report.metrics is test/acc: no curve; val/acc is plotted


def test_reuse_recipe_runs_with_a_cached_frozen_stage(fake_data, tmp_path, capsys):
    results = run_recipe(compose_config(["+recipe=reuse", *FAST]), tmp_path / "run")
    assert [r.stage for r in results] == ["clipping", "reuse", "frozen_cached"]
    assert "caching the outputs of model.hidden1, model.hidden2" in capsys.readouterr().out
    src, frozen = read_state_dict(results[0].best_checkpoint), read_state_dict(results[2].best_checkpoint)
    assert frozen["model.hidden4.linear.weight"].shape == (20, 50)
    for k in ("model.hidden1.linear.weight", "model.hidden2.linear.bias"):
        assert torch.equal(src[k], frozen[k])  # frozen: still the clipping stage's weights
    # the exported model of a reshaped stage rebuilds that shape (it used to fail to load)
    exported = load_inference_model(tmp_path / "run" / "frozen_cached" / "model.pt")
    assert exported.hidden_sizes[-1] == 20 and exported(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
