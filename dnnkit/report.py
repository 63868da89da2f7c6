"""The results table and curves every run ends with (rich in the terminal, Markdown and PNG on disk)."""

from __future__ import annotations

import io
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dnnkit.io import atomic_write
from dnnkit.results import StageResult, aggregate

log = logging.getLogger(__name__)


def _fmt(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "-"
    fmt = ".4f" if mean == 0 or abs(mean) >= 1e-3 else ".1e"  # tiny values (gradient ratios) in scientific notation
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def epochs_cell(runs: list[StageResult]) -> str:
    """The epochs a stage trained (a range over its seeds), marked where early stopping ended a fit.

    Example::

        >>> epochs_cell([StageResult("a", 0, Path("."), epochs=7, stopped_early=True), StageResult("a", 1, Path("."), epochs=9)])
        '7-9 (stopped early: 1 of 2)'
    """
    low, high = min(r.epochs for r in runs), max(r.epochs for r in runs)
    text = str(low) if low == high else f"{low}-{high}"
    stopped = sum(r.stopped_early for r in runs)
    if stopped:
        text += " (stopped early)" if stopped == len(runs) else f" (stopped early: {stopped} of {len(runs)})"
    return text


def table_rows(results: list[StageResult], metrics: list[str], published: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per stage, metrics averaged over its seeds."""
    by_stage: dict[str, list[StageResult]] = defaultdict(list)
    for r in results:
        by_stage[r.stage].append(r)
    header = ["stage", "seeds", "epochs", *metrics, "published", "fit time"]
    rows = []
    for stage, runs in by_stage.items():
        row = [stage, str(len(runs)), epochs_cell(runs)]
        for m in metrics:
            mean, std = aggregate([r.metrics.get(m, math.nan) for r in runs])
            row.append(_fmt(mean, std, len(runs)))
        pub = published.get(stage)
        if pub:
            mean, _ = aggregate([r.metrics.get(pub["metric"], math.nan) for r in runs])
            delta = f" (ours {mean - pub['value']:+.4f})" if not math.isnan(mean) else ""
            row.append(f"{pub['metric']} {pub['value']:.4f}{delta}" + (f" [{pub['source']}]" if pub.get("source") else ""))
        else:
            row.append("-")
        mean, _ = aggregate([r.fit_seconds for r in runs])
        row.append(f"{mean:.1f} s")
        rows.append(row)
    return header, rows


TABLE_WIDTH = 100  # columns: a terminal's default, and readable in train.log


def render_table(results: list[StageResult], metrics: list[str], published: dict[str, dict], title: str,
                 width: int = TABLE_WIDTH) -> str:
    """The results table as text ``width`` columns wide; the ``published`` column wraps.

    Example::

        >>> r = StageResult("a", 0, Path("."), {"val/acc": 0.91}, fit_seconds=2.0, epochs=3)
        >>> text = render_table([r], ["val/acc"], {"a": {"metric": "val/acc", "value": 0.9, "source": "[book]"}}, "t")
        >>> "(ours +0.0100) [[book]]" in " ".join(text.split()), max(map(len, text.splitlines())) <= 100
        (True, True)
    """
    header, rows = table_rows(results, metrics, published)
    table = Table(title=escape(title))
    for h in header:
        wraps = h == "published"
        table.add_column(escape(h), justify="left" if h in ("stage", "published") else "right",
                         overflow="fold" if wraps else "ellipsis", no_wrap=not wraps)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # user text: "[seed, epoch 20]" is not markup
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, legacy_windows=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def print_table(results: list[StageResult], metrics: list[str], published: dict[str, dict], title: str) -> None:
    """Show the results table (see :func:`render_table`) on dnnkit's output channel."""
    log.info("%s", render_table(results, metrics, published, title))


def save_table(results: list[StageResult], metrics: list[str], published: dict[str, dict], run_dir: Path, title: str) -> None:
    header, rows = table_rows(results, metrics, published)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    atomic_write(run_dir / "results.md", "\n".join(lines) + "\n")
    atomic_write(run_dir / "results.json", json.dumps([r.to_json() for r in results], indent=1))
