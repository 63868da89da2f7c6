"""A checkpoint is input: a crafted ``last.ckpt`` cannot make a resume delete or write files
outside the stage's ``checkpoints/`` folder."""

import hashlib

import torch

from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def test_crafted_checkpoint_paths_are_ignored_on_resume(fake_data, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    run = tmp_path / "runs" / "run"
    run_recipe(compose_config(FAST), run)
    stage = run / "train"
    for marker in ("result.json", "fit.json"):
        (stage / marker).unlink()  # the stage now looks interrupted mid-fit: resume goes on from last.ckpt
    last = stage / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    escape = str(stage / "checkpoints" / ".." / ".." / ".." / ".." / "victim.txt")  # = victim
    crafted = 0
    for state in ckpt["callbacks"].values():
        if "best_model_path" in state:
            state.update(
                best_model_path=escape, kth_best_model_path=escape, last_model_path=escape, best_k_models={escape: torch.tensor(0.0)}
            )
            crafted += 1
    assert crafted == 2  # BestCheckpoint and LastCheckpoint
    torch.save(ckpt, last)
    run_recipe(compose_config(FAST + ["resume=true", "trainer.max_epochs=3"]), run)
    assert victim.is_file() and hashlib.sha256(victim.read_bytes()).hexdigest() == digest
    assert (stage / "checkpoints" / "last.ckpt").is_file() and (stage / "checkpoints" / "best.ckpt").is_file()


def test_a_moved_run_folder_resumes_on_its_own_best_checkpoint(fake_data, tmp_path):
    import shutil

    first = tmp_path / "runs" / "first"
    done = run_recipe(compose_config(FAST + ["trainer.max_epochs=2"]), first)[0]
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(first, moved)
    for marker in ("result.json", "fit.json"):
        (moved / "train" / marker).unlink()  # interrupted at its very end, then the folder was moved
    again = run_recipe(compose_config(FAST + ["trainer.max_epochs=2", "resume=true"]), moved)[0]
    assert again.best_checkpoint == str(moved / "train" / "checkpoints" / "best.ckpt")
    assert again.metrics["val/acc"] == done.metrics["val/acc"] and again.metrics["test/acc"] == done.metrics["test/acc"]
