"""Ctrl-C and SIGTERM: finish the step, save ``last.ckpt``, print how to resume, exit 130 / 143.

:func:`install` (called by ``python -m dnnkit.train``) replaces the default handlers. The first
signal only sets a flag; :class:`StopOnSignal`, a callback in every Trainer the runner builds,
acts on it at the next step boundary: after a training step it saves ``last.ckpt`` (unless that
step was just saved) and raises :class:`Interrupted`; in validation or testing it raises at the
next batch. A second signal raises at once (nothing more is saved). Lightning's own handling
would exit 0 on SIGTERM and 1 on Ctrl-C, without a checkpoint.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

import lightning as L
from typing_extensions import override

log = logging.getLogger(__name__)

_received: list[int] = []


class Interrupted(BaseException):
    """Raised once a SIGINT/SIGTERM has been handled; ``exit_code`` is 128 + the signal number.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in user code lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


def _handler(signum: int, frame) -> None:
    _received.append(signum)
    if len(_received) > 1:
        raise Interrupted(signum)
    log.info("%s received: stopping after this step (%s again stops at once)", signal.Signals(signum).name,
             "Ctrl-C" if signum == signal.SIGINT else "the signal")


_installed: list[bool] = []


def install() -> None:
    """Handle SIGINT and SIGTERM as described in the module docstring (main thread only)."""
    _received.clear()
    _installed[:] = [True]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)


def pending() -> int | None:
    """The signal received and not yet acted on, if any."""
    return _received[0] if _received else None


def check() -> None:
    """Raise :class:`Interrupted` if a signal is pending (between the runner's phases)."""
    if _received:
        raise Interrupted(_received[0])


def _decision(trainer: L.Trainer) -> int | None:
    """The pending signal; under DDP taken together (a signal sent to one rank stops them all, at
    the same batch: a rank stopping alone would leave the others waiting in a collective)."""
    signum = pending()
    if trainer.world_size > 1:
        anyone = trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
        if anyone and signum is None:
            signum = signal.SIGTERM  # another rank's signal
    return signum


class StopOnSignal(L.Callback):
    """Act on a pending signal at the next step boundary (see the module docstring)."""

    def _own_handler(self, *args, **kwargs) -> None:
        # Lightning installs its SIGTERM handler when fit starts; it would exit 0 at the epoch's end
        if _installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _handler)

    on_train_start = _own_handler
    on_test_start = _own_handler

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        signum = _decision(trainer)
        if signum is None:
            return
        saved = {getattr(cb, "_last_global_step_saved", None) for cb in trainer.checkpoint_callbacks}
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if trainer.global_step not in saved or not last.is_file():
            trainer.save_checkpoint(last, weights_only=False)  # every rank takes part; rank 0 writes
            log.info("saved %s at step %d", last, trainer.global_step)
        raise Interrupted(signum)

    def _stop_now(self, trainer: L.Trainer, *args, **kwargs) -> None:
        signum = _decision(trainer)
        if signum is not None:
            raise Interrupted(signum)

    on_validation_batch_end = _stop_now
    on_test_batch_end = _stop_now
    on_train_epoch_start = _stop_now


def resume_command(run_dir: str | Path, overrides: list[str] | None = None) -> str:
    """The command that resumes this run: its overrides (a sweep job's own values, without
    ``-m``), ``resume=true`` and its folder.

    Example::

        >>> resume_command("runs/x/1", ["+recipe=mnist_bn", "resume=false", "optimizer.lr=0.1"])
        'python -m dnnkit.train +recipe=mnist_bn optimizer.lr=0.1 resume=true hydra.run.dir=runs/x/1'
    """
    args = list(sys.argv[1:] if overrides is None else overrides)
    args = [a for a in args if a not in ("-m", "--multirun")
            and not a.startswith(("resume=", "hydra.run.dir=", "+resume=", "++resume=", "hydra.sweep."))]
    return shlex.join(["python", "-m", "dnnkit.train", *args, "resume=true", f"hydra.run.dir={run_dir}"])
