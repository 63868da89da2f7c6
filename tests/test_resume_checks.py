"""What a resume may change, checked before Hydra rewrites the stored config; names that would
write outside the run folder. CLI tests (Hydra's callbacks run only there)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FAST
from tests.probes import cli, cli_env

pytestmark = pytest.mark.slow


def run(tmp_path, *args):
    return subprocess.run(cli(*FAST, *args), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)


@pytest.fixture
def interrupted(fake_data, tmp_path):
    """A run folder whose stage was interrupted mid-fit (a SIGKILL at step 2)."""
    folder = tmp_path / "runs" / "r"
    killer = "+callbacks.killer={_target_: tests.probes.KillAtStep, step: 2}"
    proc = run(tmp_path, killer, "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.run.dir={folder}")
    assert proc.returncode == -9, proc.stderr[-2000:]
    return folder, killer


def test_resume_with_a_changed_learning_rate_is_refused_and_the_stored_config_kept(tmp_path, interrupted):
    folder, killer = interrupted
    stored = (folder / ".hydra" / "config.yaml").read_text()
    proc = run(
        tmp_path, killer, "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.run.dir={folder}", "resume=true", "optimizer.lr=0.5"
    )
    assert proc.returncode == 2
    assert "resume=true with settings that shape the run changed: optimizer.lr (0.01 -> 0.5)" in proc.stderr
    assert "Traceback" not in proc.stderr and (folder / ".hydra" / "config.yaml").read_text() == stored


def test_resume_may_extend_max_epochs_of_an_unfinished_run_and_says_so(tmp_path, interrupted):
    folder, killer = interrupted
    proc = run(
        tmp_path, killer, "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.run.dir={folder}", "resume=true",
        "trainer.max_epochs=2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resume: trainer.max_epochs 1 -> 2" in proc.stdout and "epoch 2/2" in proc.stdout
    assert "max_epochs: 2" in (folder / ".hydra" / "config.yaml").read_text()


def test_raising_max_epochs_of_a_finished_run_is_refused(fake_data, tmp_path):
    folder = tmp_path / "runs" / "done"
    assert run(tmp_path, f"hydra.run.dir={folder}").returncode == 0
    proc = run(tmp_path, f"hydra.run.dir={folder}", "resume=true", "trainer.max_epochs=3")
    assert proc.returncode == 2
    assert "trainer.max_epochs changed (1 -> 3) but train finished already" in proc.stderr
    assert "max_epochs: 1" in (folder / ".hydra" / "config.yaml").read_text()


def test_resume_without_a_run_folder_names_the_latest_run(fake_data, tmp_path):
    assert run(tmp_path, "hydra.run.dir=runs/train/first").returncode == 0
    proc = run(tmp_path, "resume=true", "hydra.job.chdir=false")  # the default, timestamped folder
    assert proc.returncode == 2
    assert "holds no run to resume: pass the folder of the run with hydra.run.dir=...; the latest run there is" in proc.stderr
    assert "runs/train/first" in proc.stderr


@pytest.mark.parametrize("name", ["${oc.env:HOME}", "../../etc", "x" * 300])
def test_a_run_name_that_is_a_path_is_refused_before_anything_is_written(fake_data, tmp_path, monkeypatch, name):
    home = tmp_path / "home"
    home.mkdir()
    canary = home / "canary.txt"
    canary.write_text("keep me\n")
    digest = hashlib.sha256(canary.read_bytes()).hexdigest()
    caches = str(tmp_path / "caches")  # matplotlib's font cache is not ours to check
    env = cli_env(HOME=str(home), MPLCONFIGDIR=caches, XDG_CACHE_HOME=caches, XDG_CONFIG_HOME=caches)
    proc = subprocess.run(cli(*FAST, f"name={name}", f"hydra.run.dir={tmp_path / 'runs' / 'n'}"),
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "is not a plain file name" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in home.iterdir()) == ["canary.txt"]
    assert hashlib.sha256(canary.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "runs" / "n").exists()


def test_runs_started_in_the_same_second_get_their_own_folders(fake_data, tmp_path):
    procs = [subprocess.Popen(cli(*FAST), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(), cwd=tmp_path) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read()[-1000:] for p in procs]
    folders = sorted((tmp_path / "runs" / "train").iterdir())
    assert len(folders) == 2 and all((f / "results.md").is_file() for f in folders)


def test_a_refused_second_run_leaves_the_first_runs_stored_config_alone(tmp_path, interrupted):
    folder, killer = interrupted
    stored = (folder / ".hydra" / "config.yaml").read_text()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (folder / ".dnnkit.lock").write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename, "since": "x"}))
        proc = run(tmp_path, killer, f"hydra.run.dir={folder}", "resume=true", "trainer.max_epochs=9")
    finally:
        other.kill()
    assert proc.returncode == 2 and f"another run (process {other.pid}" in proc.stderr
    assert (folder / ".hydra" / "config.yaml").read_text() == stored


def test_resume_with_a_sweep_is_refused(fake_data, tmp_path):
    proc = subprocess.run(cli("-m", *FAST, "optimizer.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'sweep'}", "resume=true"),
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "resume=true with -m is not supported" in proc.stderr
