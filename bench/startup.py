"""What a run costs outside training: start-up, a config error, testing and exporting a stage.

``python -m bench.startup`` runs ``python -m dnnkit.train`` in child processes (progress bar
off) and measures, against issue 17's goals:

* the floor: ``python -c "import lightning"``, which every training run pays before its first step;
* ``--help``: wall seconds of the whole process (goal <= 2 s);
* a config error (``optimizer=nope``, Hydra's composition error): wall seconds to its exit;
* the first training step: seconds from just before the child is started (``time.time()`` in this
  process) to the start of the first training batch (``time.time()`` in the child, in a
  :class:`StartupProbe` callback), ``+recipe=mnist_bn ++trainer.max_steps=5`` (goal <= 4 s);
* test + export of a stage: from the fit's end (the probe's ``on_fit_end``) to the stage's
  ``result.json`` being written (the runner writes it once testing and exporting are done),
  same mnist_bn run (goal <= 1 s);
* ``+recipe=transfer``: the share of the whole process's wall time that its stages' ``fit_seconds``
  (``results.json``) make up (goal >= 80 %), with the test+export seconds of its stages.

The short measurements alternate round by round (``--rounds``, medians and min-max spreads); the
transfer recipe runs ``--transfer-runs`` times with ``--transfer-seeds`` (default ``[0,1]``, as
in the issue) and ``--transfer-epochs`` (default: the recipe's 20; at least 5, since B_on_A unfreezes at 4).

The table goes into ``docs/RESULTS.md``, between ``<!-- bench:startup:begin -->`` and
``<!-- bench:startup:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print).

Examples::

    python -m bench.startup                                   # 5 rounds, transfer once (2 seeds)
    python -m bench.startup --rounds 2 --transfer-runs 0 --no-write
    python -m bench.startup --transfer-epochs 5 -- data.val_size=1000   # Hydra overrides after --
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
from typing_extensions import override

from bench.common import add_results_arguments, command_line, md_table, median, publish, results_target, train_command

PROBE_FILE = "startup_probe.json"  # in each stage's folder (the Trainer's default_root_dir)
GOALS = {"help": 2.0, "error": 2.0, "first_step": 4.0, "test_export": 1.0, "fit_share": 0.80}


class StartupProbe(L.Callback):
    """Writes ``time.time()`` of the first training batch's start and of the fit's end to
    ``<stage folder>/startup_probe.json`` (put in a run with ``+callbacks.startup_probe=...``)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:
            (Path(trainer.default_root_dir) / PROBE_FILE).write_text(json.dumps(self.times))

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if "first_step" not in self.times:
            self.times["first_step"] = time.time()
            self._write(trainer)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times["fit_end"] = time.time()
        self._write(trainer)


PROBE = ["+callbacks.startup_probe={_target_:bench.startup.StartupProbe}"]


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """``(time.time() just before the start, wall seconds, exit status)`` of ``cmd``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        t0, start = time.time(), time.perf_counter()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        return t0, time.perf_counter() - start, code


def stage_costs(run_dir: Path) -> list[dict]:
    """Per stage folder holding a probe file: first step and test+export seconds (absolute times)."""
    out = []
    for probe in sorted(run_dir.glob(f"**/{PROBE_FILE}")):
        times = json.loads(probe.read_text())
        result = probe.parent / "result.json"
        after = result.stat().st_mtime - times["fit_end"] if result.is_file() and "fit_end" in times else float("nan")
        out.append({"stage": str(probe.parent.relative_to(run_dir)), "first_step": times.get("first_step"), "test_export": after})
    return out


def measure_short(runs: Path, r: int, steps: int, extra: list[str]) -> dict[str, float]:
    """One round: ``import lightning`` (the floor of a training run's start), ``--help``, a config
    error, and a tiny mnist_bn run."""
    py = [sys.executable, "-m", "dnnkit.train"]
    out = {}
    _, out["floor"], code = timed([sys.executable, "-c", "import lightning"], runs / f"floor{r}.log")
    assert code == 0, f"import lightning failed: {runs / f'floor{r}.log'}"
    _, out["help"], code = timed([*py, "--help"], runs / f"help{r}.log")
    assert code == 0, f"--help exited {code}: {runs / f'help{r}.log'}"
    error_dir = runs / f"error{r}"
    _, out["error"], code = timed([*py, "optimizer=nope", f"hydra.run.dir={error_dir}"], runs / f"error{r}.log")
    assert code != 0, "optimizer=nope did not fail"
    run_dir = runs / f"mnist_bn{r}"
    t0, out["mnist_bn_wall"], code = timed(train_command("mnist_bn", run_dir, [f"++trainer.max_steps={steps}", *PROBE, *extra]),
                                           runs / f"mnist_bn{r}.log")
    assert code == 0, f"mnist_bn exited {code}: see {runs / f'mnist_bn{r}.log'}"
    (stage,) = stage_costs(run_dir)
    out["first_step"], out["test_export"] = stage["first_step"] - t0, stage["test_export"]
    return out


def measure_transfer(runs: Path, i: int, seeds: list[int], epochs: int | None, extra: list[str]) -> dict:
    """One ``+recipe=transfer`` run: wall, the fit seconds' sum and share, and per-stage test+export."""
    run_dir = runs / f"transfer{i}"
    overrides = [f"seeds=[{','.join(map(str, seeds))}]", *PROBE] + ([f"trainer.max_epochs={epochs}"] if epochs else []) + extra
    t0, wall, code = timed(train_command("transfer", run_dir, overrides), runs / f"transfer{i}.log")
    assert code == 0, f"transfer exited {code}: see {runs / f'transfer{i}.log'}"
    fit = sum(s["fit_seconds"] for s in json.loads((run_dir / "results.json").read_text()))
    stages = stage_costs(run_dir)
    return {"wall": wall, "fit": fit, "fit_share": fit / wall, "first_step": min(s["first_step"] for s in stages) - t0,
            "test_export": [s["test_export"] for s in stages]}


def cell(values: list[float], unit: str = "", fmt: str = ".2f") -> str:
    """``median (min-max)`` of ``values``."""
    if not values:
        return "-"
    m = f"{median(values):{fmt}}{unit}"
    return m if len(values) == 1 else f"{m} ({min(values):{fmt}}-{max(values):{fmt}})"


def verdict(value: float, goal: float, higher: bool = False) -> str:
    return "met" if (value >= goal if higher else value <= goal) else "**not met**"


def report(short: list[dict], transfers: list[dict], command: str, steps: int) -> str:
    """The markdown block: one row per measurement, its goal beside it."""
    rows = []
    col = lambda key: [r[key] for r in short]  # noqa: E731
    n = f"{len(short)} runs"
    if short:
        rows += [
            ("`--help`, whole process (s)", cell(col("help")), n, f"<= {GOALS['help']:g} s", verdict(median(col("help")), GOALS["help"])),
            ("config error `optimizer=nope`, to exit (s)", cell(col("error")), n, f"<= {GOALS['error']:g} s (as `--help`)",
             verdict(median(col("error")), GOALS["error"])),
            ("first training step, mnist_bn, from the command (s)", cell(col("first_step")), n, f"<= {GOALS['first_step']:g} s",
             verdict(median(col("first_step")), GOALS["first_step"])),
            ("test + export of the stage, mnist_bn (s)", cell(col("test_export")), n, f"<= {GOALS['test_export']:g} s",
             verdict(median(col("test_export")), GOALS["test_export"])),
            ("floor: `python -c \"import lightning\"` (s)", cell(col("floor")), n, "-", "what a run pays before its first step"),
            (f"mnist_bn `++trainer.max_steps={steps}`, whole process (s)", cell(col("mnist_bn_wall")), n, "-", "-"),
        ]
    if transfers:
        shares = [100 * t["fit_share"] for t in transfers]
        per_stage = [x for t in transfers for x in t["test_export"]]
        m = f"{len(transfers)} runs"
        rows += [
            ("`+recipe=transfer`: fit share of wall (%)", cell(shares, fmt=".1f"), m, f">= {100 * GOALS['fit_share']:g} %",
             verdict(median(shares), 100 * GOALS["fit_share"], higher=True)),
            ("`+recipe=transfer`: wall / fit sum (s)", f"{cell([t['wall'] for t in transfers], fmt='.1f')} / "
             f"{cell([t['fit'] for t in transfers], fmt='.1f')}", m, "-", "-"),
            ("`+recipe=transfer`: test + export per stage (s)", cell(per_stage), f"{len(per_stage)} stages",
             f"<= {GOALS['test_export']:g} s", verdict(median(per_stage), GOALS["test_export"])),
            ("`+recipe=transfer`: first training step (s)", cell([t["first_step"] for t in transfers]), m,
             f"<= {GOALS['first_step']:g} s", verdict(median([t["first_step"] for t in transfers]), GOALS["first_step"])),
        ]
    lines = [
        f"Command: `{command}` (each measurement a fresh `python -m dnnkit.train` process, progress bar off; "
        "median (min-max) over the runs; the short ones alternate round by round).",
        "",
        *md_table(["measurement", "median (spread)", "runs", "goal", "verdict"], rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds of --help, a config error and a tiny mnist_bn run")
    p.add_argument("--steps", type=int, default=5, help="trainer.max_steps of the mnist_bn runs")
    p.add_argument("--transfer-runs", type=int, default=1, help="runs of +recipe=transfer (0: none)")
    p.add_argument("--transfer-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--transfer-epochs", type=int, default=None, help="trainer.max_epochs of the transfer runs (>= 5)")
    p.add_argument("--runs", type=Path, default=Path("runs/bench_startup"), help="parent folder of the run folders")
    add_results_arguments(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # Hydra overrides of the training runs
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    target = results_target(p, args, "startup")
    runs = args.runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    short, transfers = [], []
    for r in range(args.rounds):
        short.append(measure_short(runs, r, args.steps, extra))
        print(json.dumps({"round": r, **{k: round(v, 3) for k, v in short[-1].items()}}), flush=True)
    for i in range(args.transfer_runs):
        transfers.append(measure_transfer(runs, i, args.transfer_seeds, args.transfer_epochs, extra))
        print(json.dumps({"transfer": i, **transfers[-1]}), flush=True)
    publish("startup", report(short, transfers, command_line("python -m bench.startup", argv), args.steps), target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
