"""The files that cost time but no result (``model.pt2``, ``confusion.png``) come after the
results table, from what each stage saved; a run stopped before them gets them on resume."""

import pytest
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


def test_a_stage_that_fails_leaves_the_earlier_stages_their_files(fake_data, tmp_path, monkeypatch):
    import dnnkit.runner as runner

    real = runner.fit_stage

    def fit_or_fail(name, *args, **kwargs):
        if name == "B":
            raise RuntimeError("B broke")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runner, "fit_stage", fit_or_fail)
    with pytest.raises(RuntimeError, match="B broke"):
        run_recipe(compose_config([*FAST, "+stages={A: {}, B: {reuse: {from: A}}}"]), tmp_path / "run")
    assert (tmp_path / "run" / "A" / "model.pt2").is_file() and (tmp_path / "run" / "A" / "confusion.png").is_file()


def test_resumed_stages_write_into_this_run_folder_not_the_one_they_were_made_in(fake_data, tmp_path):
    import shutil

    cfg = [*FAST, "+stages={A: {}, B: {reuse: {from: A}}}"]
    run_recipe(compose_config(cfg), tmp_path / "first")
    shutil.copytree(tmp_path / "first", tmp_path / "copy")
    (tmp_path / "copy" / "B" / "model.pt2").unlink()
    (tmp_path / "first" / "B" / "model.pt2").unlink()
    run_recipe(compose_config([*cfg, "resume=true"]), tmp_path / "copy")
    assert (tmp_path / "copy" / "B" / "model.pt2").is_file()
    assert not (tmp_path / "first" / "B" / "model.pt2").exists()  # the folder it was copied from is left alone
