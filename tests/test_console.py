"""Output a person can read: one channel (the ``dnnkit`` logger), Lightning's per-Trainer lines
once per run, no progress-bar frames in a redirected file, train.log holding everything."""

import logging
import os
import subprocess
import sys

import pytest

from dnnkit.callbacks import EpochSummary, ProgressBar
from dnnkit.console import ConsoleHandler, OncePerRun
from tests.conftest import FAST


def record(message: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_once_per_run_passes_the_first_of_each_kind_only():
    once = OncePerRun()
    messages = ["GPU available: False, used: False", "TPU available: False", "GPU available: False, used: False",
                "Restoring states from the checkpoint path at a/best.ckpt", "Restoring states from the checkpoint path at b/best.ckpt",
                "something else", "something else"]
    assert [once.filter(record(m)) for m in messages] == [True, True, False, True, False, True, True]


def test_console_handler_writes_to_the_current_stdout_and_skips_file_only_records(capsys):
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(record("shown"))
    handler.emit(record("for train.log only", console=False))
    assert capsys.readouterr().out == "shown\n"


def test_epoch_summary_lines_reach_stdout_without_any_logging_setup(capsys):
    class Trainer:
        max_epochs, current_epoch, callback_metrics = 3, 0, {}

    EpochSummary(keys=["val/acc"])._print(Trainer(), {"epoch": 1, "val/acc": 0.5})
    assert capsys.readouterr().out.startswith("epoch 1/3  val/acc 0.5000")


def test_progress_bar_draws_first_even_right_after_boot(monkeypatch):
    monkeypatch.setattr("time.monotonic", lambda: 5.0)  # a machine up for 5 s
    assert ProgressBar(min_interval=60)._should_update(1, 10)


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_is_drawn_on_a_terminal_only(monkeypatch, tty):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty, raising=False)
    class Trainer:
        is_global_zero = True

    bar = ProgressBar()
    bar.setup(Trainer(), None, "fit")
    assert bar.is_enabled is tty
    tolerant = ProgressBar(tty_only=False)
    tolerant.setup(Trainer(), None, "fit")
    assert tolerant.is_enabled


@pytest.mark.slow
def test_redirected_run_prints_lines_not_frames_and_train_log_holds_them(fake_data, tmp_path):
    fast = [o for o in FAST if "progress_bar" not in o]  # the bar stays on: redirection must switch it off
    stages = "+stages={A: {}, B: {seeds: [0, 1], reuse: {from: A}}}"
    run = tmp_path / "run"
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "dnnkit.train", *fast, "trainer.max_epochs=2", stages, f"hydra.run.dir={run}"],
                              stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=tmp_path, timeout=300)
    text = out.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text  # no progress-bar frames
    assert text.count("GPU available:") == 1  # three Trainers, one line
    assert text.count("epoch 2/2") == 3
    assert "smaller than the logging interval" not in text
    table = text[text.index("train: results"):]
    assert max(len(line) for line in table.splitlines()) <= 100
    log = (run / "train.log").read_text()
    assert log.count("epoch 2/2") == 3 and "== stage B, seed 1" in log and "train: results" in log


@pytest.mark.slow
def test_an_error_is_in_train_log_too(fake_data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dnnkit.train", *FAST, "optimizer.lr=-1", f"hydra.run.dir={run}"],
                          capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("optimizer.lr must be a positive number, got -1") == 1
    assert "optimizer.lr must be a positive number, got -1" not in proc.stdout
    assert "error: optimizer.lr must be a positive number, got -1" in (run / "train.log").read_text()
