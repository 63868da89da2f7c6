"""Atomic writes for every file dnnkit owns: a temporary name in the same folder, fsync, rename.

A kill or a full disk at any moment leaves either the previous file or the new one, never a
truncated one. The temporary file sits next to the target (not in ``$TMPDIR``), so the rename
never crosses filesystems. A write that fails keeps the previous file and raises one
:class:`~dnnkit.errors.DnnkitError` naming the folder (and, for a full disk, its free space).

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "result.json"
    >>> atomic_write(path, '{"ok": true}')
    >>> path.read_text()
    '{"ok": true}'
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dnnkit.errors import DnnkitError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every filesystem lets a folder be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode open() would give it
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except OSError as err:
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        space = f" ({_free(folder)})" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise DnnkitError(f"cannot write {path.name} in {str(folder)!r}: {err.strerror or err}{space}; {kept}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    payload = data.encode() if isinstance(data, str) else data
    atomic_write_with(path, lambda f: f.write(payload))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    atomic_write_with(path, lambda f: torch.save(obj, f))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    """``fig.savefig(path)``, atomically; the format follows ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write_with(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
