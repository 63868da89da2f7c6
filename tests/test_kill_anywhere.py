"""Nothing lost: SIGKILL at 20 random moments of a 2-stage recipe (training, validation, the final
test, the export, between stages), each followed by ``resume=true``, ends with the table of a run
never interrupted; a full disk keeps the previous ``last.ckpt`` and says where. The run folder
lies on a tmpfs the test mounts, another filesystem than ``$TMPDIR``, as on a cluster."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.probes import cli, cli_env
from tests.test_interrupt import table
from tests.test_resume import RUN

pytestmark = pytest.mark.slow

# the final test takes some 10 ms on fake data: SlowTest widens it to 0.5 s, so aimed kills land in it
TWO_STAGES = [*RUN, "+stages={A: {}, B: {reuse: {from: A}}}", "+callbacks.slow_test={_target_: tests.probes.SlowTest, seconds: 0.5}"]


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MiB tmpfs mounted for the test (needs root), else skip with the reason."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env(), cwd=cwd)


def phase(run: Path) -> str:
    """Where a killed run stood, per stage: ``fitted`` (fit.json, in its test), ``tested``
    (result.json, its model.pt2 not yet exported: that happens after the results table) or
    ``exported``."""
    def one(s: str) -> str:
        d = run / s
        if (d / "result.json").exists():
            return "exported" if (d / "model.pt2").exists() else "tested"
        return "fitted" if (d / "fit.json").exists() else "-"
    return " ".join(f"{s}:{one(s)}" for s in ("A", "B"))


def aim(p: subprocess.Popen, run: Path, marker: str, stages: tuple[str, ...], wait: float, spread: float,
        rng: random.Random) -> None:
    """Let ``p`` run until ``marker`` appears in a stage folder of ``stages`` where it was not
    yet (or ``wait`` seconds pass), then up to ``spread`` seconds more."""
    deadline = time.monotonic() + wait
    seen = {s for s in stages if (run / s / marker).exists()}
    while p.poll() is None and time.monotonic() < deadline:
        if {s for s in stages if (run / s / marker).exists()} - seen:
            time.sleep(rng.uniform(0.0, spread))
            return
        time.sleep(0.01)


def test_sigkill_anywhere_then_resume_gives_the_same_table(fake_data, tmp_path, tmpfs):
    rng = random.Random(20261201)
    begin = time.monotonic()
    ref = tmpfs / "ref"
    proc = subprocess.run(
        cli(*TWO_STAGES, f"hydra.run.dir={ref}"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    whole = time.monotonic() - begin
    expected = table(ref)

    kills, runs, hits = 0, 0, []
    while kills < 20:
        run = tmpfs / f"run{runs}"
        runs += 1
        args = [*TWO_STAGES, f"hydra.run.dir={run}"]
        resume = False
        while True:
            p = start([*args, "resume=true"] if resume else args, tmp_path)
            resume = True
            if kills < 20 and kills % 4 == 0:  # aim at a stage's test: just after its fit ends
                aim(p, run, "fit.json", ("A", "B"), whole * 2, 0.3, rng)
            elif kills < 20 and kills % 4 == 2:  # aim at the exports, after the last stage's result
                aim(p, run, "result.json", ("B",), whole * 2, 1.5, rng)
            elif kills < 20:
                time.sleep(rng.uniform(0.5, whole))
            if p.poll() is None and kills < 20:
                p.kill()
                p.wait()
                kills += 1
                hits.append(phase(run))
                continue
            out = p.communicate()[0].decode()
            assert p.returncode == 0, f"after kills at {hits}: {out[-3000:]}"
            assert table(run) == expected, f"{run} after kills at {hits}"
            assert phase(run) == "A:exported B:exported", f"{run} after kills at {hits}"
            break
    assert any("fitted" in h for h in hits), f"no kill landed in a stage's test: {hits}"
    assert any("B:tested" in h for h in hits), f"no kill landed in the exports after the table: {hits}"


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_folder(fake_data, tmp_path, tmpfs):
    ref = tmp_path / "ref"
    assert subprocess.run(cli(*RUN, f"hydra.run.dir={ref}"), capture_output=True, env=cli_env(), cwd=tmp_path, timeout=300).returncode == 0
    run = tmpfs / "run"
    killer = "+callbacks.killer={_target_: tests.probes.KillAtStep, step: 30}"
    args = [*RUN, killer, f"hydra.run.dir={run}"]
    assert subprocess.run(cli(*args), capture_output=True, env=cli_env(), cwd=tmp_path, timeout=300).returncode == -9
    last = run / "train" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["global_step"]
    before = last.read_bytes()

    filler = tmpfs / "filler"
    free = shutil.disk_usage(tmpfs).free
    with filler.open("wb") as f:  # leave room for configs and metrics.csv, not for a checkpoint
        f.write(b"\0" * max(0, free - len(before) // 2))
    proc = subprocess.run(cli(*args, "resume=true"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: cannot write last.ckpt in ") and str(last.parent) in message
    assert "No space left on device" in message and "MiB free" in message and "the previous file is kept" in message
    assert last.read_bytes() == before and torch.load(last, weights_only=True)["global_step"] == saved
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]

    filler.unlink()
    proc = subprocess.run(cli(*args, "resume=true"), capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert table(run) == table(ref)
