"""What ``python -m dnnkit.evaluate`` and ``python -m dnnkit.predict`` share: paths first, then
``key=value`` options as in ``python -m dnnkit.train`` (Hydra's style, without Hydra), and a bad
input as one line on stderr with exit status 2.

Only ``argparse`` and the standard library are imported here, so ``--help`` answers at once;
the commands import torch and Lightning once their arguments are read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from dnnkit.errors import DnnkitError, choose, find_dnnkit_error

TRUE, FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: ...`` line (exit status 2)."""

    def error(self, message: str):
        raise DnnkitError(f"{message} (see {self.prog} --help)")


def parse_options(items: list[str], defaults: dict, command: str) -> dict:
    """``key=value`` strings over ``defaults``: each value takes the type of its default
    (bool: true/false, int, float; ``None`` defaults take strings, ``null`` stays None).

    Example::

        >>> parse_options(["top_k=3", "resize=true"], {"top_k": 1, "resize": False, "out": None}, "predict")
        {'top_k': 3, 'resize': True, 'out': None}
    """
    options = dict(defaults)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DnnkitError(f"{item!r} is not an option: give key=value with a key of {', '.join(sorted(defaults))} ({command} --help)")
        choose(f"{command} option", key, defaults)
        options[key] = convert(key, value, defaults[key])
    return options


def convert(key: str, value: str, default):
    """``value`` as the type of ``default``; one error naming the key otherwise."""
    if isinstance(default, bool):
        if value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise DnnkitError(f"{key}={value} must be true or false")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise DnnkitError(f"{key}={value} must be an integer") from None
    if value.lower() in ("null", "none", ""):
        return None
    return value


def run(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a :class:`DnnkitError` (also one wrapped by another error) becomes
    ``error: ...`` on stderr and exit status 2 (``HYDRA_FULL_ERROR=1``, as for ``dnnkit.train``,
    shows the traceback)."""
    try:
        main(argv)
    except Exception as err:
        ours = find_dnnkit_error(err)
        if ours is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {ours}", file=sys.stderr)
        return 2
    return 0
