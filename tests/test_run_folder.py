"""The run folder: one run at a time, markers that survive a kill, results persisted before the
test and the export, atomic writes that keep the previous file."""

import json
import os
import subprocess
import sys

import pytest
import torch

from dnnkit import runner
from dnnkit.errors import DnnkitError
from dnnkit.io import atomic_write
from dnnkit.run_folder import LOCK, RunLock, finished
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_in_the_same_folder_is_refused(fake_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename, "since": "x"}))
        with pytest.raises(DnnkitError, match=rf"another run \(process {other.pid} on .*\) is using '.*run'; wait"):
            run_recipe(compose_config(FAST), run)
    finally:
        other.kill()
    assert not (run / "train").exists()  # nothing of the refused run was written
    assert (run / LOCK).exists()  # the other run's lock is left alone


def test_the_lock_is_reentrant_for_its_own_process(fake_data, tmp_path):
    run = tmp_path / "run"
    with RunLock(run):  # as the CLI takes it before Hydra writes .hydra/
        run_recipe(compose_config(FAST), run)
        assert (run / LOCK).exists()
    assert not (run / LOCK).exists()


def test_a_stale_lock_is_taken_over(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename, "since": "x"}))
    run_recipe(compose_config(FAST), run)
    assert "is no longer running" in capsys.readouterr().out
    assert finished(run / "train") is not None and not (run / LOCK).exists()


def test_an_unreadable_result_marker_means_not_finished(fake_data, tmp_path, capsys):
    run = tmp_path / "run"
    first = run_recipe(compose_config(FAST), run)
    (run / "train" / "result.json").write_text('{"stage": "tr')  # half-written by an old version
    again = run_recipe(compose_config(FAST + ["resume=true"]), run)
    assert "result.json is unreadable" in capsys.readouterr().out
    assert again[0].metrics == first[0].metrics  # fit.json held the fit; the test ran again, same numbers
    assert json.loads((run / "train" / "result.json").read_text())["metrics"] == first[0].metrics


def test_a_kill_during_export_loses_nothing(fake_data, tmp_path):
    reference = run_recipe(compose_config(FAST + ["trainer.max_epochs=2"]), tmp_path / "ref")[0]
    run = tmp_path / "run"

    def killed(*args, **kwargs):
        raise SystemExit(137)  # as if the process died here

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr(runner, "export_stage", killed)
        run_recipe(compose_config(FAST + ["trainer.max_epochs=2"]), run)
    assert not (run / "train" / "result.json").exists() and (run / "train" / "fit.json").is_file()
    resumed = run_recipe(compose_config(FAST + ["trainer.max_epochs=2", "resume=true"]), run)[0]
    assert resumed.metrics == reference.metrics and resumed.epochs == reference.epochs
    assert [h["val/acc"] for h in resumed.history] == [h["val/acc"] for h in reference.history]
    assert resumed.fit_seconds > 0 and (run / "train" / "model.pt").is_file()


def test_atomic_write_keeps_the_previous_file_when_the_write_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_write(path, b"good")

    class Boom:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(DnnkitError, match=r"cannot write last.ckpt in '.*': No space left on "
                                          r"device \(.* MiB free\); the previous file is kept"):
        from dnnkit.io import atomic_torch_save

        atomic_torch_save(Boom(), path)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_checkpoints_are_written_through_the_atomic_writer(fake_data, tmp_path, monkeypatch):
    from dnnkit import checkpoint_io

    written = []
    real = checkpoint_io.atomic_torch_save
    monkeypatch.setattr(checkpoint_io, "atomic_torch_save", lambda obj, path: (written.append(os.path.basename(path)), real(obj, path)))
    run_recipe(compose_config(FAST), tmp_path / "run")
    assert {"last.ckpt", "best.ckpt"} <= set(written)
    assert torch.load(tmp_path / "run" / "train" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write(tmp_path / "results.md", "x")
    assert (tmp_path / "results.md").stat().st_mode & 0o777 == 0o666 & ~umask
