"""Test-only callbacks that subprocess tests put into a run with ``+callbacks.NAME={_target_: tests.probes.X}``
(the subprocess needs the repository root on PYTHONPATH: :func:`cli_env`)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m dnnkit.train`` subprocesses: this checkout first on the path."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dnnkit.train", *args]


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class KillAtStep(L.Callback):
    """SIGKILL this process just before optimizer step ``step`` (no cleanup, like a crash); once
    per run folder, so that a resume with the same command (the same config) goes on."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        killed = Path(trainer.default_root_dir) / "killed.once"
        if trainer.global_step == self.step and not killed.exists():
            killed.write_text(str(self.step))
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class SlowTest(L.Callback):
    """Sleep ``seconds`` as the test starts: a wider window for a test that kills a run in it
    (the final test of a small fake-data stage takes some 10 ms)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_test_start(self, trainer, pl_module) -> None:
        time.sleep(self.seconds)


class FailFit(L.Callback):
    """Raise as the fit starts: a stage whose every fit fails."""

    def on_train_start(self, trainer, pl_module) -> None:
        raise RuntimeError("probe: this fit fails")


class RankProbe(L.Callback):
    """Write ``rank<R>.json`` (step, epoch, stop decision, learning rates, weight digest) at fit end."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, error=None)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._write(trainer, pl_module, error=str(exception))

    def _write(self, trainer, pl_module, error: str | None) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        guard = next((c for c in trainer.callbacks if type(c).__name__ == "NonFiniteGuard"), None)
        info = {
            "error": error,
            "skipped": getattr(guard, "skipped", None),
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "should_stop": bool(trainer.should_stop),
            "lrs": [g["lr"] for opt in trainer.optimizers for g in opt.param_groups],
            "frozen": sorted(n for n, p in pl_module.named_parameters() if not p.requires_grad),
            "weights": weights_digest(pl_module),
            "train_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(info, indent=1))


class NanBatchAt(L.Callback):
    """Fill the input batch of ``rank`` with NaN at optimizer step ``step`` (a bad batch on one rank)."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            batch[0].fill_(float("nan"))


class SignalAt(L.Callback):
    """Send ``signum`` to this process before optimizer step ``step`` (as a scheduler or Ctrl-C
    would), or before the first test batch with ``step=-1``; once per run folder (a resume with
    the same command is not signalled again)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, int(signum)

    def _send(self, trainer) -> None:
        sent = Path(trainer.default_root_dir) / "signal.sent"
        if not sent.exists():
            sent.write_text(str(self.signum))
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self._send(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.step == -1:
            self._send(trainer)


class SignalAtEpochEnd(L.Callback):
    """Send SIGTERM to this process in ``on_train_epoch_end`` of epoch ``epoch`` (0-based), once per
    run folder: Lightning's own SIGTERM handling would end the fit there with exit status 0."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sent = Path(trainer.default_root_dir) / "signal.sent"
        if trainer.current_epoch == self.epoch and not sent.exists():
            sent.write_text("SIGTERM")
            os.kill(os.getpid(), signal.SIGTERM)
