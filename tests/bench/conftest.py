"""Fixtures of the bench smoke tests: a results file to write into, never docs/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import markers

BENCHES = ("speed", "caching", "cost", "fold_bn", "seed_curves", "gradient_health_overhead", "baselines", "data_folder",
           "compile", "startup", "threads")
REAL_RESULTS = Path(__file__).resolve().parents[2] / "docs" / "RESULTS.md"


@pytest.fixture
def results(tmp_path) -> Path:
    """A temporary copy of docs/RESULTS.md with a (possibly added) section for every bench."""
    text = REAL_RESULTS.read_text() if REAL_RESULTS.is_file() else "# results\n"
    for name in BENCHES:
        begin, end = markers(name)
        if begin not in text.splitlines():
            text += f"\n## bench.{name}\n\n{begin}\n(not measured yet)\n{end}\n"
    path = tmp_path / "docs" / "RESULTS.md"
    path.parent.mkdir()
    path.write_text(text)
    return path
