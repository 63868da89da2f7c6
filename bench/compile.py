"""What ``compile=true`` costs and gains: compile seconds, eager against compiled step time, the
break-even number of steps (what ``compile=auto`` decides on, :mod:`dnnkit.compile`).

For each network (default: ``+recipe=mnist_bn``'s, batch 200, and ``+recipe=transfer``'s stage
``A``, batch 32), built from the recipe's config with its optimizer, three contenders train on
the same batches in one process, the training step of a hand-written loop (forward, loss,
backward, optimizer step; Lightning's per-step overhead is the same with or without compile):

* ``eager``: the network as it is;
* ``compiled``: the network compiled in place as ``CompileModel`` does
  (:func:`dnnkit.compile.compile_in_place`, Inductor);
* ``compiled+opt``: that, and the optimizer step compiled too (``torch.compile(optimizer.step)``,
  torch's "compiling the optimizer" recipe), to judge whether dnnkit should compile it.

Each round starts from fresh copies and a ``torch._dynamo.reset()``: the first compiled step's
time minus the eager step's median is the compile time (the first round's with Inductor's
on-disk cache as found, the later rounds' warm; ``compiled+opt`` compiles after ``compiled`` has
compiled the same network in the round, so its compile seconds are mostly the optimizer's: add
the two for what a cold start of it costs). Then ``--blocks`` blocks of ``--steps`` steps
per contender, alternated (the order rotates). The table shows medians over rounds and blocks,
with min-max; break-even = compile seconds / (eager - compiled) per step.

The table goes into ``docs/RESULTS.md`` between ``<!-- bench:compile:begin -->`` and
``<!-- bench:compile:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print)::

    python -m bench.compile                                    # both networks, 3 rounds
    python -m bench.compile --networks mnist_bn --rounds 2 --no-write
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from bench.common import add_results_arguments, command_line, md_table, median, publish, quiet, results_target, stage_config
from dnnkit.build import build_module, instantiate
from dnnkit.compile import COMPILE_SECONDS, STEP_GAIN, break_even, compile_in_place
from dnnkit.runner import device_summary

CONTENDERS = ("eager", "compiled", "compiled+opt")
NETWORKS = ("mnist_bn", "transfer:A")


def network(spec: str, overrides: list[str]):
    """``(label, model, optimizer factory, batches, steps per epoch)`` of ``recipe[:stage]``."""
    recipe, _, stage = spec.partition(":")
    name, cfg = stage_config(recipe, stage or None, overrides)
    torch.manual_seed(int(cfg.get("seed", 0)))
    module = build_module(cfg)
    factory = module.optimizer_factory or (lambda params: torch.optim.SGD(params, lr=0.01))
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    batches = [(x.contiguous(), y) for x, y in datamodule.train_dataloader()]
    full = [b for b in batches if len(b[1]) == len(batches[0][1])]  # one batch size: no recompile for a short last batch
    return f"{recipe}:{name}", module.model, factory, full, len(batches)


class Contender:
    """A copy of the network, its optimizer and its (compiled) step."""

    def __init__(self, kind: str, model, factory, backend: str = "inductor") -> None:
        self.kind, self.model = kind, copy.deepcopy(model).train()
        self.optimizer = factory([p for p in self.model.parameters() if p.requires_grad])
        self.step_fn = self.optimizer.step
        if kind != "eager":
            compile_in_place(self.model, kind, backend=backend)
        if kind == "compiled+opt":
            self.step_fn = torch.compile(self.optimizer.step, backend=backend)

    def step(self, x, y) -> None:
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.step_fn()


def timed(contender: Contender, batches, start: int, steps: int) -> list[float]:
    out = []
    for i in range(steps):
        x, y = batches[(start + i) % len(batches)]
        t = time.perf_counter()
        contender.step(x, y)
        out.append(time.perf_counter() - t)
    return out


def measure(model, factory, batches, rounds: int, blocks: int, steps: int, backend: str = "inductor",
            kinds: tuple[str, ...] = CONTENDERS) -> dict:
    """Per contender: per block the median step seconds (wall) and the CPU seconds per step, and
    per round the compile seconds."""
    res = {c: {"blocks": [], "cpu": [], "compile": []} for c in kinds}
    for r in range(rounds):
        torch._dynamo.reset()
        contenders = {c: Contender(c, model, factory, backend) for c in kinds}
        eager_ref = median(timed(contenders["eager"], batches, 0, 5)[1:])
        for c in kinds[1:]:
            first = timed(contenders[c], batches, 0, 1)[0]
            timed(contenders[c], batches, 1, 3)  # the optimizer's own compile, if any, is in its first steps
            res[c]["compile"].append(first - eager_ref)
        res["eager"]["compile"].append(0.0)
        for b in range(blocks):
            k = (r * blocks + b) % len(kinds)
            for c in kinds[k:] + kinds[:k]:
                cpu = time.process_time()
                t = timed(contenders[c], batches, b * steps, steps)
                res[c]["cpu"].append((time.process_time() - cpu) / steps)
                res[c]["blocks"].append(median(t))
        call = getattr(contenders["compiled"].model, "_compiled_call_impl", None)
        if call is not None and call.failed:
            raise SystemExit(f"error: the network did not compile: {call.failed}")
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{c} {1e3 * median(res[c]['blocks'][-blocks:]):.2f} ms/step"
            + (f" (compile {res[c]['compile'][-1]:.1f} s)" if c != "eager" else "") for c in kinds), flush=True)
    return res


def spread(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"{median(values) * scale:{fmt}} ({min(values) * scale:{fmt}}-{max(values) * scale:{fmt}})"


def report(results: dict, command: str, load: tuple, backend: str = "inductor") -> str:
    rows, kinds = [], tuple(next(iter(results.values()))[0])
    for label, (res, batch, per_epoch) in results.items():
        eager = median(res["eager"]["blocks"])
        row = [label, batch, per_epoch, spread(res["eager"]["blocks"], 1e3), f"{1e3 * median(res['eager']['cpu']):.2f}"]
        for c in kinds[1:]:
            comp = median(res[c]["blocks"])
            later = res[c]["compile"][1:] or res[c]["compile"]
            even = break_even(median(later), eager, comp)
            even_text = "never" if even == float("inf") else f"{even:,.0f} ({even / per_epoch:.1f} epochs)"
            cpu_ratio = median(res[c]["cpu"]) / median(res["eager"]["cpu"])
            row += [f"{res[c]['compile'][0]:.1f} / {median(later):.1f}", spread(res[c]["blocks"], 1e3),
                    f"**{comp / eager:.3f}** (CPU {cpu_ratio:.3f})", even_text]
        rows.append(row)
    header = ["network", "batch", "steps/epoch", "eager ms/step", "eager CPU ms/step"]
    for c in kinds[1:]:
        header += [f"{c}: compile s (first / warm)", f"{c} ms/step", f"{c} / eager", f"{c}: break-even steps"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {device_summary()}, torch {torch.__version__}, backend {backend}, load average {load[0][0]:.1f} at start, "
        f"{load[1][0]:.1f} at end. Step = forward, loss, backward, optimizer step (no Lightning), medians over "
        "rounds x blocks (min-max of the blocks); CPU: this process's CPU seconds per step, steadier on a shared "
        "machine. Compile s: the first compiled step minus an eager one "
        "(first round: Inductor's disk cache as found; warm: the later rounds' median; compiled+opt's comes after "
        "compiled's, so it is mostly the optimizer's). "
        f"`compile=auto` estimates today: {COMPILE_SECONDS:g} s to compile, {STEP_GAIN:.0%} of a step saved "
        "(dnnkit/compile.py).",
        "",
        *md_table(header, rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), help="recipe[:stage] each (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="fresh compiles, each followed by the timed blocks")
    p.add_argument("--blocks", type=int, default=4, help="alternated blocks of steps per contender and round")
    p.add_argument("--steps", type=int, default=25, help="timed steps per block")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS[1:], default=list(CONTENDERS[1:]),
                   help="compiled contenders besides eager (default: %(default)s)")
    p.add_argument("--backend", default="inductor", help="torch.compile's backend (eager: a quick smoke run)")
    p.add_argument("overrides", nargs="*", help="config overrides for every network (data.val_size=200)")
    add_results_arguments(p)
    args = p.parse_args(argv)
    if min(args.rounds, args.blocks, args.steps) < 1:
        p.error("--rounds, --blocks and --steps must be >= 1")
    target = results_target(p, args, "compile")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    warnings.filterwarnings("ignore", ".*cpp_extension.*")
    load_start = os.getloadavg()
    results = {}
    for spec in args.networks:
        label, model, factory, batches, per_epoch = network(spec, list(args.overrides))
        print(f"== {label}: batch {len(batches[0][1])}, {per_epoch} steps/epoch", flush=True)
        res = measure(model, factory, batches, args.rounds, args.blocks, args.steps, args.backend, ("eager", *args.contenders))
        results[label] = (res, len(batches[0][1]), per_epoch)
    text = report(results, command_line("python -m bench.compile", argv), (load_start, os.getloadavg()), args.backend)
    publish("compile", text, target)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
