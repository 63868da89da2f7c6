"""What every bench shares: one epoch timer, one raw training loop, one config helper, and the
writer of ``docs/RESULTS.md``'s generated sections.

* :class:`EpochTimer` (a Lightning callback) and :func:`now`, :func:`median`: epoch times, wall
  and CPU, with or without validation.
* :func:`raw_fit`: the hand-written PyTorch loop (no Lightning) over dnnkit's own
  :class:`~dnnkit.data.loader.TensorLoader` batches, the floor every bench compares against.
* :func:`recipe_config`, :func:`stage_config`, :func:`train_command`: a recipe composed in
  process as ``python -m dnnkit.train +recipe=NAME`` would, or the command that runs it.
* :func:`write_results` and the ``--results`` / ``--no-write`` options
  (:func:`add_results_arguments`, :func:`results_target`, :func:`publish`): each bench's figures
  go between the lines ``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` of
  ``docs/RESULTS.md``, written atomically.

``EpochTimer`` lives here, not in a bench's ``__main__``, so that Hydra, which instantiates it
from ``_target_: bench.common.EpochTimer`` inside :func:`dnnkit.runner.fit_stage`, and the bench
reading :attr:`EpochTimer.last` see the same class.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dnnkit.stages import config_dir, stage_configs

RESULTS = Path("docs/RESULTS.md")


# ----------------------------------------------------------------------------- timing


def now() -> tuple[float, float]:
    """(wall-clock, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


class EpochTimer(L.Callback):
    """Per-epoch times of a Lightning fit, wall-clock and this process's CPU seconds
    (``time.process_time``: on a shared CPU it does not count the time spent waiting for a core,
    so it is the steadier measure of work).

    * :attr:`epoch_seconds`, :attr:`epoch_cpu_seconds`: from one epoch's start to the next (the
      last to the end of training), so each epoch includes its validation, logging,
      checkpointing and progress-bar work.
    * :attr:`train_seconds`: from an epoch's start to its validation's start, or, in an epoch
      without validation, to the epoch's end (put the timer last among the callbacks so that
      the others' epoch-end work is inside it).
    * :attr:`build_seconds`: the datamodule's ``build_seconds`` at the end of the fit (the
      one-off cost of a cache of frozen layers), else ``None``.

    Example::

        timer = EpochTimer()
        L.Trainer(max_epochs=3, callbacks=[timer]).fit(model, dm)
        timer.epoch_seconds   # [s, s, s]
        timer.train_seconds   # the same without validation
    """

    last: EpochTimer | None = None  # the most recently built timer (for configs built by Hydra)

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []
        self.train_ends: list[float] = []
        self.end: tuple[float, float] | None = None
        self.build_seconds: float | None = None
        EpochTimer.last = self

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.stamps.append(now())

    def _train_done(self) -> None:
        if len(self.train_ends) < len(self.stamps):
            self.train_ends.append(time.perf_counter())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._train_done()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._train_done()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = now()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.build_seconds = getattr(trainer.datamodule, "build_seconds", None)

    def _spans(self, i: int) -> list[float]:
        bounds = self.stamps + ([self.end] if self.end is not None else [])
        return [b[i] - a[i] for a, b in zip(bounds, bounds[1:])]

    @property
    def epoch_seconds(self) -> list[float]:
        return self._spans(0)

    @property
    def epoch_cpu_seconds(self) -> list[float]:
        return self._spans(1)

    @property
    def train_seconds(self) -> list[float]:
        return [end - start[0] for start, end in zip(self.stamps, self.train_ends)]


# ----------------------------------------------------------------------------- the raw loop


class RawFit(NamedTuple):
    """Per epoch: wall-clock and CPU seconds (training + validation), validation accuracy (NaN
    without a validation loader)."""

    wall: list[float]
    cpu: list[float]
    val_acc: list[float]


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Fraction of ``batches`` whose argmax matches the label (``model`` in eval mode)."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total if total else float("nan")


def raw_fit(model: nn.Module, optimizer: torch.optim.Optimizer, train, epochs: int, val=None) -> RawFit:
    """Train ``model`` ``epochs`` epochs over ``train`` with cross-entropy, by hand: per batch
    forward, backward, step, nothing else (no logging, checkpoints or progress bar); then the
    accuracy on ``val`` if given.

    ``train`` and ``val`` are dnnkit loaders (:class:`~dnnkit.data.loader.TensorLoader`, or a
    :class:`~dnnkit.data.feature_cache.FeatureLoader` over cached features): one gather per
    batch, the same batches a dnnkit fit sees. A loader's epoch advances after each epoch, so
    epoch ``e`` of the loader's shuffle order follows ``e - 1`` across calls too.

    Example::

        >>> from dnnkit.data.loader import TensorLoader
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        >>> x, y = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (100,))
        >>> fit = raw_fit(model, torch.optim.SGD(model.parameters(), lr=0.01), TensorLoader(x, y, 20, shuffle=True), 2,
        ...               val=TensorLoader(x, y, 50))
        >>> len(fit.wall), len(fit.cpu), 0.0 <= fit.val_acc[-1] <= 1.0
        (2, 2, True)
    """
    out = RawFit([], [], [])
    for _ in range(epochs):
        start = now()
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sampler = getattr(train, "sampler", None)
        if sampler is not None:
            sampler.set_epoch(sampler.epoch + 1)
        out.val_acc.append(accuracy(model, val) if val is not None else float("nan"))
        end = now()
        out.wall.append(end[0] - start[0])
        out.cpu.append(end[1] - start[1])
    return out


# ----------------------------------------------------------------------------- configs


def recipe_config(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python -m dnnkit.train +recipe=NAME OVERRIDES...`` runs, composed here."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"+recipe={recipe}", *overrides])


def stage_config(recipe: str, stage: str | None = None, overrides: Sequence[str] = ()) -> tuple[str, DictConfig]:
    """``(stage name, config)`` of one stage of ``+recipe=NAME`` (the first by default), as a
    plain mutable config; an unknown stage exits with status 2 and the stage names."""
    stages = stage_configs(recipe_config(recipe, overrides))
    names = [n for n, _ in stages]
    if stage is not None and stage not in names:
        print(f"error: stage {stage!r} not in recipe {recipe!r}; stages: {names}", file=sys.stderr)
        raise SystemExit(2)
    name, cfg = next((n, c) for n, c in stages if stage in (None, n))
    return name, OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))


def train_command(recipe: str, run_dir: str | Path, overrides: Sequence[str] = ()) -> list[str]:
    """``python -m dnnkit.train +recipe=NAME`` with the progress bar off, into ``run_dir``."""
    return [sys.executable, "-m", "dnnkit.train", f"+recipe={recipe}", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}", *overrides]


def quiet() -> None:
    """Lightning's and dnnkit's INFO lines and the known harmless warnings off, so a bench prints
    only its own lines."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("dnnkit").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


# ----------------------------------------------------------------------------- docs/RESULTS.md


class ResultsError(Exception):
    """``docs/RESULTS.md`` (or the file given) has no section for a bench."""


def markers(name: str) -> tuple[str, str]:
    """The lines that enclose bench ``name``'s generated block in the results file."""
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def _section(name: str, lines: list[str], path: Path) -> tuple[int, int]:
    begin, end = markers(name)
    stripped = [line.rstrip("\r\n") for line in lines]
    b, e = [i for i, s in enumerate(stripped) if s == begin], [i for i, s in enumerate(stripped) if s == end]
    if len(b) != 1 or len(e) != 1 or b[0] > e[0]:
        found = f"found {len(b)} begin and {len(e)} end line(s)" + (", end before begin" if b and e and b[0] > e[0] else "")
        raise ResultsError(f"{path} has no section for bench {name!r} ({found}): it needs one line {begin!r} "
                           f"and, below it, one line {end!r}")
    return b[0], e[0]


def check_results(name: str, path: str | Path = RESULTS) -> None:
    """Raise :class:`ResultsError` unless ``path`` exists with bench ``name``'s markers."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path} does not exist (the results file with a section for bench {name!r})")
    _section(name, path.read_text().splitlines(keepends=True), path)


def write_results(name: str, markdown: str, path: str | Path = RESULTS) -> Path:
    """Replace what lies between bench ``name``'s marker lines in ``path`` with ``markdown``;
    every other line stays as it is. Written atomically (a temporary file in the same folder,
    fsync, rename), so a reader sees the old file or the new one, never half of one.

    Example::

        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "R.md"
        >>> _ = p.write_text("# R\\n<!-- bench:demo:begin -->\\nold\\n<!-- bench:demo:end -->\\nkept\\n")
        >>> _ = write_results("demo", "| a |\\n|---|\\n", p)
        >>> p.read_text().splitlines()
        ['# R', '<!-- bench:demo:begin -->', '| a |', '|---|', '<!-- bench:demo:end -->', 'kept']
    """
    path = Path(path)
    check_results(name, path)
    lines = path.read_text().splitlines(keepends=True)
    b, e = _section(name, lines, path)
    block = markdown.strip("\n") + "\n" if markdown.strip() else ""
    text = "".join(lines[: b + 1]) + block + "".join(lines[e:])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """``--results PATH`` (default docs/RESULTS.md) and ``--no-write``."""
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="write the figures into this file's section for the bench (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="only print the figures; write no file under docs/")


def results_target(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> Path | None:
    """Where :func:`publish` will write (``None`` with ``--no-write``), checked before the bench
    runs: a results file without the bench's markers is a usage error (exit status 2)."""
    if args.no_write:
        return None
    try:
        check_results(name, args.results)
    except ResultsError as err:
        parser.error(f"{err} (or pass --no-write)")
    return args.results


def publish(name: str, markdown: str, target: Path | None) -> None:
    """Print the bench's markdown block and write it into ``target``'s section."""
    print("\n" + markdown.rstrip("\n") + "\n", flush=True)
    if target is not None:
        write_results(name, markdown, target)
        print(f"written into {target}, section bench:{name}")


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """``python -m bench.NAME ARGS`` as it was called (``argv`` None: the process's)."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out
