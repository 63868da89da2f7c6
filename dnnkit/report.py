"""The results table and curves every run ends with (rich in the terminal, Markdown and PNG on disk)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dnnkit.results import StageResult, aggregate


def _fmt(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "-"
    fmt = ".4f" if mean == 0 or abs(mean) >= 1e-3 else ".1e"  # tiny values (gradient ratios) in scientific notation
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def table_rows(results: list[StageResult], metrics: list[str], published: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per stage, metrics averaged over its seeds."""
    by_stage: dict[str, list[StageResult]] = defaultdict(list)
    for r in results:
        by_stage[r.stage].append(r)
    header = ["stage", "seeds", "epochs", *metrics, "published", "fit time"]
    rows = []
    for stage, runs in by_stage.items():
        row = [stage, str(len(runs)), str(runs[0].epochs)]
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


def print_table(results: list[StageResult], metrics: list[str], published: dict[str, dict], title: str) -> None:
    header, rows = table_rows(results, metrics, published)
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("stage", "published") else "right")
    for row in rows:
        table.add_row(*row)
    needed = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, h in enumerate(header)) + 1
    Console(width=max(120, Console().width, needed)).print(table)  # wide enough never to cut a header


def save_table(results: list[StageResult], metrics: list[str], published: dict[str, dict], run_dir: Path, title: str) -> None:
    header, rows = table_rows(results, metrics, published)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")
    (run_dir / "results.json").write_text(json.dumps([r.to_json() for r in results], indent=1))
