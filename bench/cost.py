"""Wall time, CPU time and peak memory of whole recipe runs.

``python -m bench.cost mnist_bn mnist_fast fashion_mlp`` runs each
``python -m dnnkit.train +recipe=NAME`` in its own process (progress bar off, run folder under
``--runs``) and reads that process's resource usage when it exits (``os.wait4``): wall-clock
seconds, user+system CPU seconds and peak resident memory (``ru_maxrss``). It also reads the
run's ``results.json`` for each stage's fit time and metrics, so one command gives both what a
recipe costs and what it reached. :func:`measure_recipe` is the same for one recipe, for use
from other scripts.

Examples::

    python -m bench.cost mnist_bn                         # one recipe
    python -m bench.cost mnist_fast --seeds 0 1 2         # each seed in its own run
    python -m bench.cost transfer -- trainer.max_epochs=5 # Hydra overrides after --

The table goes into ``docs/RESULTS.md``, between ``<!-- bench:cost:begin -->`` and
``<!-- bench:cost:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import add_results_arguments, command_line, md_table, publish, results_target, train_command


def measure_recipe(recipe: str, overrides: list[str] | None = None, runs: str | Path = "runs/bench_cost",
                   threads: int | None = None) -> dict:
    """Run ``+recipe=NAME`` in a child process; return its wall/CPU seconds, peak RSS (MiB), the
    exit status, the run folder, its log and the stages' results (``results.json``).

    Example::

        cost = measure_recipe("mnist_bn", ["trainer.max_epochs=1"])
        cost["wall_s"], cost["peak_rss_mib"], cost["stages"][0]["metrics"]["test/acc"]
    """
    run_dir = Path(runs) / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cmd = train_command(recipe, run_dir, overrides or [])
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_suffix(".log")  # the run's stdout and stderr
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    results_file = run_dir / "results.json"
    stages = json.loads(results_file.read_text()) if results_file.is_file() else []
    return {
        "recipe": recipe,
        "command": "python -m dnnkit.train " + " ".join(cmd[3:]),
        "returncode": code,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "run_dir": str(run_dir),
        "stages": stages,
        "log": str(log),
    }


def report(costs: list[dict], command: str) -> str:
    """The markdown block: per run wall and CPU seconds, fit time, peak memory and accuracies."""
    rows = []
    for c in costs:
        st = c["stages"]
        fit = sum(s.get("fit_seconds", 0.0) for s in st)
        test = ", ".join(f"{s['metrics']['test/acc']:.4f}" for s in st if "test/acc" in s.get("metrics", {})) or "-"
        val = ", ".join(f"{s['metrics']['val/acc']:.4f}" for s in st if "val/acc" in s.get("metrics", {})) or "-"
        status = "" if c["returncode"] == 0 else f" (exit {c['returncode']})"
        rows.append((f"`{c['recipe']}`{status}", len(st), f"{c['wall_s']:.1f}", f"{c['cpu_s']:.1f}", f"{fit:.1f}",
                     f"{c['peak_rss_mib']:.0f}", test, val))
    lines = [
        f"Command: `{command}` (each recipe in its own process; wall and CPU seconds of the whole "
        "process, including start-up, data loading, testing and plots; peak resident memory).",
        "",
        *md_table(["recipe", "stages x seeds", "wall (s)", "CPU (s)", "fit time, sum (s)", "peak RSS (MiB)",
                   "test/acc", "val/acc"], rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("recipes", nargs="+")
    p.add_argument("--seeds", nargs="*", type=int, default=None, help="run each recipe once per seed")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs")
    p.add_argument("--runs", default="runs/bench_cost", help="parent folder of the run folders")
    add_results_arguments(p)
    args = p.parse_args(options)
    target = results_target(p, args, "cost")
    costs = []
    for recipe in args.recipes:
        for seed in args.seeds or [None]:
            extra = overrides + ([f"seed={seed}"] if seed is not None else [])
            cost = measure_recipe(recipe, extra, args.runs, args.threads)
            costs.append(cost)
            print(json.dumps({k: v for k, v in cost.items() if k != "stages"}, indent=1), flush=True)
    publish("cost", report(costs, command_line("python -m bench.cost", argv)), target)
    return 0 if all(c["returncode"] == 0 for c in costs) else 1


if __name__ == "__main__":
    sys.exit(main())
