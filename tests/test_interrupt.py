"""SIGTERM and Ctrl-C: the step finishes, last.ckpt is saved, the resume command is printed, the
exit status is 143 / 130, and the printed command resumes exactly."""

import json
import shlex
import signal
import subprocess

import pytest

from dnnkit.interrupt import resume_command
from tests.probes import cli, cli_env
from tests.test_resume import RUN

pytestmark = pytest.mark.slow


def table(run_dir) -> list[tuple]:
    """The results without the fit times (which a resume cannot reproduce)."""
    return [(r["stage"], r["seed"], r["epochs"], r["metrics"].get("val/acc"), r["metrics"].get("test/acc"), r["metrics"].get("test/loss"))
            for r in json.loads((run_dir / "results.json").read_text())]


@pytest.mark.parametrize(
    "signum, code, step", [(signal.SIGTERM, 143, 25), (signal.SIGINT, 130, -1)], ids=["sigterm-in-training", "sigint-in-test"]
)
def test_signal_saves_prints_the_resume_command_and_resumes_exactly(fake_data, tmp_path, signum, code, step):
    ref = tmp_path / "ref"
    proc = subprocess.run(cli(*RUN, f"hydra.run.dir={ref}"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    probe = f"+callbacks.signal={{_target_: tests.probes.SignalAt, step: {step}, signum: {int(signum)}}}"
    proc = subprocess.run(
        cli(*RUN, probe, f"hydra.run.dir={run}"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-2000:]
    assert f"interrupted by {signal.Signals(signum).name}; resume with:" in out
    assert "Traceback" not in out
    command = out.split("resume with:")[1].strip().splitlines()[0]
    assert command.endswith(f"resume=true hydra.run.dir={run}")
    stage = run / "train"
    if step >= 0:  # stopped in training: last.ckpt holds the step that just finished
        import torch

        assert torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 1
        assert not (stage / "fit.json").exists()
    else:  # stopped in the final test: the fit's results are kept
        assert json.loads((stage / "fit.json").read_text())["tested"] is False
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "dnnkit.train"]
    resumed = subprocess.run(cli(*args[3:]), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert table(run) == table(ref)


def test_resume_command_quotes_what_the_shell_would_split():
    assert resume_command("runs/a b", ["-m", "name=my run", "resume=true"]) == (
        "python -m dnnkit.train 'name=my run' resume=true 'hydra.run.dir=runs/a b'"
    )


def test_sigterm_at_an_epoch_end_is_not_an_exit_0(fake_data, tmp_path):
    run = tmp_path / "run"
    probe = "+callbacks.signal={_target_: tests.probes.SignalAtEpochEnd, epoch: 0}"
    proc = subprocess.run(cli(*RUN, probe, f"hydra.run.dir={run}"),
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 143, (proc.stdout + proc.stderr)[-2000:]
    assert "interrupted by SIGTERM; resume with:" in proc.stdout + proc.stderr
