"""What a stage produced (:class:`StageResult`) and how a stage's seeds are summarised."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """What one fit of one stage with one seed produced."""

    stage: str
    seed: int
    dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    best_checkpoint: str | None = None
    fit_seconds: float = 0.0
    epochs: int = 0
    stopped_early: bool = False  # an EarlyStopping callback ended the fit (after `epochs` epochs)
    wall_seconds: float = 0.0  # the stage from start to result: building, fit, test, export
    search: dict | None = None  # a reuse search's tries and pick (dnnkit/search.py)

    def to_json(self) -> dict:
        return {**self.__dict__, "dir": str(self.dir)}

    @classmethod
    def from_json(cls, data: dict) -> StageResult:
        return cls(**{**data, "dir": Path(data["dir"])})


def aggregate(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), ignoring NaN.

    Example::

        >>> aggregate([0.9, 1.0, float("nan")])
        (0.95, 0.07071067811865474)
    """
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
