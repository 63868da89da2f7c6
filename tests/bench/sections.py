"""Readers of what a bench wrote into a results file (for the bench smoke tests)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from bench.common import markers


def _bounds(lines: list[str], name: str) -> tuple[int, int]:
    begin, end = markers(name)
    return lines.index(begin), lines.index(end)


def section(path: Path, name: str) -> str:
    """The text between bench ``name``'s markers in the file ``path``."""
    lines = path.read_text().splitlines()
    b, e = _bounds(lines, name)
    return "\n".join(lines[b + 1 : e])


def outside(text: str, name: str) -> list[str]:
    """The lines of ``text`` around bench ``name``'s block (the markers included)."""
    lines = text.splitlines()
    b, e = _bounds(lines, name)
    return lines[: b + 1] + lines[e:]


def table(text: str, first: str) -> dict[str, list[str]]:
    """The markdown table whose header starts with ``| first |``: its rows by first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def number(cell: str) -> float:
    """The first number in a cell (``**1.20**``, ``5 (0.12-0.20)``, ``+0.31``)."""
    match = re.search(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group())


def positive(cell: str) -> bool:
    x = number(cell)
    return math.isfinite(x) and x > 0


def seconds(cell: str) -> bool:
    """A time as printed: finite and not negative (a short one on the fake data may round to 0.0)."""
    x = number(cell)
    return math.isfinite(x) and x >= 0
