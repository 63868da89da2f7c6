"""The files that cost time but no result (``model.pt2``, ``confusion.png``) come after the
results table, from what each stage saved; a run stopped before them gets them on resume."""

import torch

from dnnkit.nn import load_inference_model
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def test_programs_and_plots_follow_the_table_and_come_back_on_resume(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    run_recipe(compose_config([*FAST, "+stages={A: {}, B: {reuse: {from: A}}}"]), run)
    for stage in "AB":
        assert (run / stage / "model.pt2").stat().st_mtime_ns >= (run / "results.json").stat().st_mtime_ns
        assert (run / stage / "confusion.png").stat().st_mtime_ns >= (run / "results.json").stat().st_mtime_ns
    (run / "B" / "model.pt2").unlink()
    (run / "B" / "confusion.png").unlink()
    capsys.readouterr()
    run_recipe(compose_config([*FAST, "+stages={A: {}, B: {reuse: {from: A}}}", "resume=true"]), run)
    assert "finished earlier" in capsys.readouterr().out  # nothing trained again
    assert (run / "B" / "confusion.png").is_file()
    program = torch.export.load(str(run / "B" / "model.pt2")).module()
    model, x = load_inference_model(run / "B" / "model.pt"), torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - program(x)).abs().max() <= 1e-5
