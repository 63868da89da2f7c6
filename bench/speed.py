"""Epochs per second of dnnkit against a hand-written PyTorch loop, plain Lightning and Keras.

``python -m bench.speed`` times, for the network of a recipe (default ``+recipe=mnist_bn``:
784-300-200-10, batch norm, SGD 0.01, batch 200, 55,000 training / 5,000 validation images):

* ``dnnkit``: the fit loop exactly as ``python -m dnnkit.train`` runs it
  (:func:`dnnkit.runner.fit_stage` on the composed config: progress bar, EpochSummary, CSV
  logger, best/last checkpoints);
* ``dnnkit-bare``: the same without progress bar, logger and checkpoints;
* ``raw``: a hand-written PyTorch loop over the same in-memory tensors (the floor);
* ``floor``: Lightning's own floor, the raw loop's work as a minimal LightningModule over the
  same loader in a Trainer with no callbacks, logger, progress bar or checkpoints;
* ``lightning``: plain Lightning over torchvision's MNIST ``Dataset`` in a ``DataLoader``;
* ``keras-jax``, ``keras-torch``: the peers, Keras 3 ``model.fit`` on the same network and
  images, each backend in a long-lived child process (:mod:`bench.keras_peers`) asked for one
  fit per round, so the alternation holds; skipped with one line naming
  ``pip install 'dnnkit[bench]'`` when Keras or JAX is missing.

All in one process (the Keras fits in their children), same batch size, alternated: each
round runs one fit of each contender (the order rotates), each fit ``--epochs`` epochs of which
the first is a warm-up (for Keras: the tracing and compiling of its step) and not counted. An
epoch is training plus validation, timed from one epoch start to the next. The table shows
medians, and the ratios with their goals: dnnkit/raw <= 1.05 (and the earlier 1.10),
dnnkit/keras-jax <= 1.00, dnnkit/floor <= 1.05 (dnnkit's own per-step cost over Lightning's
loop), lightning/dnnkit >= 3; as the ratio of the medians and, steadier on a shared machine
whose speed drifts between rounds, as the median of each round's ratio (both contenders timed
within the same minute).

The tables go into ``docs/RESULTS.md``, between ``<!-- bench:speed:begin -->`` and
``<!-- bench:speed:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print).
The contenders' fits are :mod:`bench.baselines`.

Examples::

    python -m bench.speed                                   # mnist_bn, 3 rounds x (1 + 2) epochs
    python -m bench.speed --rounds 5 --only dnnkit raw --no-write
    python -m bench.speed --recipe transfer --stage A       # batch 32: per-step overhead weighs most
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from bench.baselines import CONTENDERS, close_peers, contender_parser, contender_setup, fit_contender
from bench.common import command_line, median, publish
from bench.keras_peers import Skipped
from dnnkit.runner import device_summary

GOALS_VS_RAW = (1.10, 1.05)  # dnnkit / raw: the earlier goal, and issue 17's
GOAL_VS_KERAS = 1.00  # dnnkit / keras-jax (issue 17)
GOAL_VS_FLOOR = 1.05  # dnnkit / floor: dnnkit's own per-step cost over Lightning's empty loop (issue 17)
GOAL_VS_LIGHTNING = 3.0


def run(cfg: DictConfig, name: str, contenders, rounds: int, epochs: int, num_workers: int = 0) -> dict[str, dict]:
    """Alternate the contenders for ``rounds`` rounds; per contender the timed epochs (warm-up
    epochs dropped) and the fit times. A contender that cannot run (a Keras peer without its
    packages) is dropped at its first fit: its entry holds only ``"skipped"``, the reason."""
    times = {c: {"epochs": [], "cpu": [], "fits": [], "rounds": [], "val_acc": []} for c in contenders}
    live = list(contenders)
    try:
        for r in range(rounds):
            order = live[r % len(live):] + live[: r % len(live)] if live else []
            for c in order:
                try:
                    seconds, cpu, fit, acc = fit_contender(c, name, cfg, epochs, num_workers)
                except Skipped as err:
                    print(err, flush=True)
                    times[c] = {"skipped": str(err)}
                    live.remove(c)
                    continue
                times[c]["epochs"] += seconds[1:]
                times[c]["cpu"] += cpu[1:]
                times[c]["rounds"].append(median(seconds[1:]))
                times[c]["fits"].append(fit)
                times[c]["val_acc"].append(acc)
                print(
                    f"round {r + 1}/{rounds}  {c:<12} epochs " + " ".join(f"{s:.2f}" for s in seconds)
                    + " s, CPU " + " ".join(f"{s:.2f}" for s in cpu) + f" s  (fit {fit:.1f} s, val/acc {acc:.4f})",
                    flush=True,
                )
    finally:
        close_peers()
    return times


def report(times: dict[str, dict], recipe: str, stage: str, command: str, load: tuple[tuple, tuple]) -> str:
    """The markdown section: a table of medians (wall-clock and CPU), the ratios and the goals."""
    skipped = [t["skipped"] for t in times.values() if "skipped" in t]
    times = {c: t for c, t in times.items() if "skipped" not in t}
    wall = {c: median(t["epochs"]) for c, t in times.items()}
    cpu = {c: median(t["cpu"]) for c, t in times.items()}
    lines = [
        f"Command: `{command}`  ",
        f"Network: `{recipe}`, stage `{stage}`. Machine: {device_summary()}, "
        f"load average {load[0][0]:.1f} at start, {load[1][0]:.1f} at end. "
        "On a shared CPU wall-clock times wait for a free core; CPU seconds (this process's "
        "`time.process_time`, the child's for the Keras peers) count only work done, so their ratios are the steadier ones.",
        "",
        "| loop | median s/epoch (wall) | epochs/s (wall) | median CPU s/epoch | timed epochs (wall min-max s) "
        "| median fit time (s) | median val/acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, t in times.items():
        e = t["epochs"]
        lines.append(
            f"| {c} | {wall[c]:.3f} | {1 / wall[c]:.2f} | {cpu[c]:.3f} | {len(e)} ({min(e):.2f}-{max(e):.2f}) "
            f"| {median(t['fits']):.1f} | {median(t['val_acc']):.4f} |"
        )
    lines += [""] + [f"Not run: {reason}" for reason in skipped] + ([""] if skipped else [])
    lines += [
        "| ratio | median of the rounds' ratios (wall) | ratio of medians (wall) | ratio of medians (CPU) | goal |",
        "|---|---|---|---|---|",
    ]

    def row(a: str, b: str, goal) -> None:
        if a in wall and b in wall:
            rp = median([x / y for x, y in zip(times[a]["rounds"], times[b]["rounds"])])
            rw, rc = wall[a] / wall[b], cpu[a] / cpu[b]
            lines.append(f"| {a} / {b} | **{rp:.2f}** | {rw:.2f} | {rc:.2f} | {goal(rp) if callable(goal) else goal} |")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def at_most(*goals: float):
        return lambda r: ", ".join(f"<= {g:.2f}: {verdict(r <= g)}" for g in goals)

    row("dnnkit", "raw", at_most(*GOALS_VS_RAW))
    row("dnnkit", "keras-jax", at_most(GOAL_VS_KERAS))
    row("dnnkit", "keras-torch", "")
    row("dnnkit", "floor", lambda r: at_most(GOAL_VS_FLOOR)(r) + " (dnnkit's own cost over Lightning's loop)")
    row("dnnkit-bare", "raw", "")
    row("floor", "raw", "(Lightning's own loop, nothing switched on)")
    row("keras-jax", "raw", "")
    row("keras-torch", "raw", "")
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
