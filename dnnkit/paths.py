"""Paths dnnkit writes or deletes must lie inside the run folder: checks for names and for paths
read back from files (checkpoints are input too)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dnnkit.errors import DnnkitError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*")
MAX_NAME = 100


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, with ``..`` and symbolic links resolved, lies in ``folder`` (a URL such as
    ``s3://...`` never does).

    Example::

        >>> is_inside("/run/a/checkpoints/best.ckpt", "/run/a/checkpoints")
        True
        >>> is_inside("/run/a/checkpoints/../../../etc/passwd", "/run/a/checkpoints")
        False
    """
    if "://" in str(path):
        return False
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return real != base and os.path.commonpath([real, base]) == base


def check_name(kind: str, name) -> str:
    """``name`` if it is a plain file name (letters, digits and ``. _ = , + -``, not starting with
    a dot or dash, at most 100 characters), else one error saying so.

    Example::

        >>> check_name("stage name", "B_on_A")
        'B_on_A'
    """
    text = str(name)
    if isinstance(name, bool) or not isinstance(name, (str, int)) or not NAME.fullmatch(text) or len(text) > MAX_NAME:
        raise DnnkitError(
            f"{kind} {text[:MAX_NAME]!r}{'...' if len(text) > MAX_NAME else ''} is not a plain file name: use at most "
            f"{MAX_NAME} letters, digits and . _ = , + - (no '/', no leading dot), as it names a folder in the run folder"
        )
    return text


def confined(path: str | os.PathLike, folder: str | os.PathLike, what: str = "a file") -> Path:
    """``path`` if it lies inside ``folder``, else one error naming both."""
    if not is_inside(path, folder):
        raise DnnkitError(f"refusing to write {what} at {str(path)!r}: it lies outside the run folder {str(folder)!r}")
    return Path(path)
