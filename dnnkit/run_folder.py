"""The run folder's own files: the lock that keeps a second run out, and the per-stage markers
that say how far a stage got (``fit.json`` after fitting and testing, ``result.json`` when done).

A stage's results are persisted as soon as its fit ends, so a kill during the final test or the
export loses nothing: a resume re-runs only what is missing and reports the same numbers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path

from dnnkit.errors import DnnkitError
from dnnkit.io import atomic_write
from dnnkit.results import StageResult

log = logging.getLogger(__name__)

LOCK = ".dnnkit.lock"


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file in it, or raise one readable error."""
    probe = folder / f".dnnkit-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise DnnkitError(
            f"cannot write to the output folder {str(folder)!r} ({err.strerror or err}); "
            "choose a writable folder with hydra.run.dir=..."
        ) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class RunLock:
    """``with RunLock(run_dir):`` holds ``<run_dir>/.dnnkit.lock`` (pid and host) for the run.

    A second run in the same folder is refused with one line. A lock left by a process that is
    no longer running on this host is taken over, with a message; one from another host is
    never taken over (its process cannot be checked from here).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return True

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            try:
                owner = json.loads(self.path.read_text())
                pid, host = int(owner["pid"]), str(owner["host"])
            except (OSError, ValueError, KeyError, TypeError):
                owner, pid, host = {}, -1, socket.gethostname()  # unreadable: a writer that died mid-write
            if host == socket.gethostname() and pid == os.getpid():
                return self  # this process holds it already (taken before Hydra wrote its config)
            if host == socket.gethostname() and (pid <= 0 or not _alive(pid)):
                who = pid if pid > 0 else "(unknown)"
                log.warning("taking over the lock of %s: process %s is no longer running", self.path.parent, who)
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            raise DnnkitError(
                f"another run (process {pid} on {host}, since {owner.get('since', '?')}) is using {str(self.path.parent)!r}; "
                f"wait for it to finish, or choose another folder with hydra.run.dir=... (if it is not running, delete {self.path})"
            )
        raise DnnkitError(f"cannot take the lock {str(self.path)!r}: it keeps changing")

    def __exit__(self, *exc) -> None:
        if self.held:
            try:
                self.path.unlink()
            except OSError as err:
                if err.errno != errno.ENOENT:
                    log.warning("could not remove the lock %s: %s", self.path, err)
            self.held = False


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 outside DDP, before Lightning sets it)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def read_marker(path: Path) -> dict | None:
    """A stage marker's content, or None when it is absent or unreadable (reported in one line:
    the stage then counts as not finished)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        StageResult.from_json({k: v for k, v in data.items() if k != "tested"})
        return data
    except (OSError, ValueError, TypeError, KeyError) as err:
        log.warning("%s is unreadable (%s): the stage counts as not finished and runs again", path, err)
        return None


def write_marker(path: Path, result: StageResult, **extra) -> None:
    atomic_write(path, json.dumps({**result.to_json(), **extra}, indent=1))


def finished(stage_dir: Path) -> StageResult | None:
    """The stage's result if it finished (``result.json`` readable), else None."""
    data = read_marker(stage_dir / "result.json")
    return StageResult.from_json(data) if data else None


def fitted(stage_dir: Path) -> tuple[StageResult, bool] | None:
    """``(result, tested)`` if the stage's fit finished (``fit.json``), else None."""
    data = read_marker(stage_dir / "fit.json")
    if not data:
        return None
    tested = bool(data.pop("tested", False))
    return StageResult.from_json(data), tested
