"""Epochs per second of dnnkit against a hand-written PyTorch loop and plain Lightning.

``python -m bench.speed`` times, for the network of a recipe (default ``+recipe=mnist_bn``:
784-300-200-10, batch norm, SGD 0.01, batch 200, 55,000 training / 5,000 validation images):

* ``dnnkit``: the fit loop exactly as ``python -m dnnkit.train`` runs it
  (:func:`dnnkit.runner.fit_stage` on the composed config: progress bar, EpochSummary, CSV
  logger, best/last checkpoints);
* ``dnnkit-bare``: the same without progress bar, logger and checkpoints;
* ``raw``: a hand-written PyTorch loop over the same in-memory tensors (the floor);
* ``floor``: Lightning's own floor, the raw loop's work as a minimal LightningModule over the
  same loader in a Trainer with no callbacks, logger, progress bar or checkpoints;
* ``lightning``: plain Lightning over torchvision's MNIST ``Dataset`` in a ``DataLoader``.

All in one process, same batch size, alternated: each round runs one fit of each contender
(the order rotates), each fit ``--epochs`` epochs of which the first is a warm-up and not
counted. An epoch is training plus validation, timed from one epoch start to the next. The
table shows medians, and the ratios dnnkit/raw (goals <= 1.15 and <= 1.10) and lightning/dnnkit (goal >= 3):
as the ratio of the medians and, steadier on a shared machine whose speed drifts between
rounds, as the median of each round's ratio (both contenders timed within the same minute).

The tables go into ``docs/RESULTS.md``, between ``<!-- bench:speed:begin -->`` and
``<!-- bench:speed:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print).
The contenders' fits are :mod:`bench.baselines`.

Examples::

    python -m bench.speed                                   # mnist_bn, 3 rounds x (1 + 2) epochs
    python -m bench.speed --rounds 5 --only dnnkit raw --no-write
    python -m bench.speed --recipe transfer --stage B_on_A  # any recipe's stage
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from bench.baselines import CONTENDERS, contender_parser, contender_setup, fit_contender
from bench.common import command_line, median, publish
from dnnkit.runner import device_summary

GOALS_VS_RAW = (1.15, 1.10)  # dnnkit / raw: the goal, and the stretch goal
GOAL_VS_LIGHTNING = 3.0


def run(cfg: DictConfig, name: str, contenders, rounds: int, epochs: int, num_workers: int = 0) -> dict[str, dict]:
    """Alternate the contenders for ``rounds`` rounds; per contender the timed epochs (warm-up
    epochs dropped) and the fit times."""
    times = {c: {"epochs": [], "cpu": [], "fits": [], "rounds": []} for c in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            seconds, cpu, fit, _ = fit_contender(c, name, cfg, epochs, num_workers)
            times[c]["epochs"] += seconds[1:]
            times[c]["cpu"] += cpu[1:]
            times[c]["rounds"].append(median(seconds[1:]))
            times[c]["fits"].append(fit)
            print(
                f"round {r + 1}/{rounds}  {c:<12} epochs " + " ".join(f"{s:.2f}" for s in seconds)
                + " s, CPU " + " ".join(f"{s:.2f}" for s in cpu) + f" s  (fit {fit:.1f} s)",
                flush=True,
            )
    return times


def report(times: dict[str, dict], recipe: str, stage: str, command: str, load: tuple[tuple, tuple]) -> str:
    """The markdown section: a table of medians (wall-clock and CPU), the ratios and the goals."""
    wall = {c: median(t["epochs"]) for c, t in times.items()}
    cpu = {c: median(t["cpu"]) for c, t in times.items()}
    lines = [
        f"Command: `{command}`  ",
        f"Network: `{recipe}`, stage `{stage}`. Machine: {device_summary()}, "
        f"load average {load[0][0]:.1f} at start, {load[1][0]:.1f} at end. "
        "On a shared CPU wall-clock times wait for a free core; CPU seconds (this process's "
        "`time.process_time`) count only work done, so their ratios are the steadier ones.",
        "",
        "| loop | median s/epoch (wall) | epochs/s (wall) | median CPU s/epoch | timed epochs (wall min-max s) | median fit time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for c, t in times.items():
        e = t["epochs"]
        lines.append(
            f"| {c} | {wall[c]:.3f} | {1 / wall[c]:.2f} | {cpu[c]:.3f} | {len(e)} ({min(e):.2f}-{max(e):.2f}) "
            f"| {median(t['fits']):.1f} |"
        )
    lines += [
        "", "| ratio | median of the rounds' ratios (wall) | ratio of medians (wall) | ratio of medians (CPU) | goal |",
        "|---|---|---|---|---|",
    ]

    def row(a: str, b: str, goal) -> None:
        if a in wall and b in wall:
            rp = median([x / y for x, y in zip(times[a]["rounds"], times[b]["rounds"])])
            rw, rc = wall[a] / wall[b], cpu[a] / cpu[b]
            lines.append(f"| {a} / {b} | **{rp:.2f}** | {rw:.2f} | {rc:.2f} | {goal(rp) if callable(goal) else goal} |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    row("dnnkit", "raw", lambda r: ", ".join(f"<= {g:.2f}: {verdict(r <= g)}" for g in GOALS_VS_RAW))
    row("dnnkit-bare", "raw", "")
    row("floor", "raw", "(Lightning's own loop, nothing switched on)")
    row("lightning", "dnnkit", lambda r: f">= {GOAL_VS_LIGHTNING:.0f} (dnnkit that many times faster): {verdict(r >= GOAL_VS_LIGHTNING)}")
    row("lightning", "raw", "")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = contender_parser("python -m bench.speed", __doc__.split("\n\n")[0], list(CONTENDERS))
    p.add_argument("--rounds", type=int, default=3, help="fits per contender, alternated")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    target, name, cfg = contender_setup(p, args, "speed")
    load_start = os.getloadavg()
    times = run(cfg, name, list(args.only), args.rounds, args.epochs, args.workers)
    text = report(times, args.recipe, name, command_line("python -m bench.speed", argv), (load_start, os.getloadavg()))
    publish("speed", text, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
