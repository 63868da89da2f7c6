"""What batch norm costs at prediction time, and what folding it gives back.

The seed warns that batch norm makes predictions slower and suggests plain ELU + He init when
predictions must be fast. This bench trains, briefly and on real MNIST, the ``mnist_bn``
network (784-300-200-10, BN before ELU on each hidden layer and on the logits, LeCun init) and
the same network without batch norm (ELU + He), folds the first, and times all three side by
side in one process: many short timings taken in turn from each network (a new random order
each round), each figure the median of its timings, so a burst of load from other processes hits all three
alike. The no-BN network is timed a second time as a control: that ratio is the noise floor.

    python -m bench.fold_bn                       # ~1 minute on 2 idle cores
    python -m bench.fold_bn --epochs 3 --threads 2 --rounds 120

Prints test accuracy, batch-1 and batch-1,000 latency and throughput for each network, and
whether the folded network is within 5% of the one without batch norm. The tables go into
``docs/RESULTS.md``, between ``<!-- bench:fold_bn:begin -->`` and ``<!-- bench:fold_bn:end -->``
(``--results PATH`` for another file, ``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from bench.common import accuracy, add_results_arguments, command_line, md_table, median, publish, raw_fit, results_target
from dnnkit.data import MNISTDataModule
from dnnkit.data.loader import TensorLoader
from dnnkit.nn import MLP, fold_batchnorm


def networks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    bn = MLP(784, [300, 200], 10, "elu", batch_norm=True, output_batch_norm=True, init="lecun", init_distribution="truncated_normal")
    plain = MLP(784, [300, 200], 10, "elu", init="he")
    return {"batch norm": bn, "no batch norm (ELU + He)": plain}


def train(model: nn.Module, loader: TensorLoader, epochs: int, lr: float) -> float:
    """The seed's setup: plain SGD, batch 200 (the loader's). Returns seconds."""
    return sum(raw_fit(model, torch.optim.SGD(model.parameters(), lr=lr), loader, epochs).wall)


@torch.inference_mode()
def seconds_per_call(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    # One untimed call first: otherwise the weights of the model timed just before still fill
    # the cache (a network timed right after itself ran ~10% faster at batch 1).
    model(x)
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - start) / calls


@torch.inference_mode()
def measure(models: dict[str, nn.Module], x: torch.Tensor, samples: int, calls: int) -> dict[str, float]:
    """Median seconds per call over ``samples`` short timings (``calls`` calls each), taken
    in turn from each model, in a new random order each round, so that a burst of load hits
    them alike and no model always follows the same one."""
    names = list(models)
    order = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(samples):
        for i in torch.randperm(len(names), generator=order).tolist():
            times[names[i]].append(seconds_per_call(models[names[i]], x, calls))
    return {name: median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.fold_bn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per network (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for every network (default 1)")
    parser.add_argument("--rounds", type=int, default=60, help="timed batches of 1,000 per network; 5x as many batch-1 timings of 10 calls")
    parser.add_argument("--val-size", type=int, default=5000, help="images held out of training, as in the seed")
    parser.add_argument("--tolerance", type=float, default=0.05, help="folded may be this much slower than no BN")
    add_results_arguments(parser)
    args = parser.parse_args(argv)
    target = results_target(parser, args, "fold_bn")
    torch.set_num_threads(args.threads)

    data = MNISTDataModule("mnist", val_size=args.val_size, seed=0)
    train_x, train_y = data.split("train")
    test_x, test_y = data.split("test")
    test_x = test_x.unsqueeze(1).float() / 255

    nets = networks()
    for name, net in nets.items():
        seconds = train(net, TensorLoader(train_x, train_y, 200, shuffle=True), args.epochs, lr=0.01)
        print(f"trained {name}: {args.epochs} epoch(s) in {seconds:.1f} s")
        net.eval()
    bn, plain = nets.values()
    models = {"batch norm (unfolded)": bn, "batch norm (folded)": fold_batchnorm(bn), "no batch norm (ELU + He)": plain}
    with torch.inference_mode():
        diff = (models["batch norm (folded)"](test_x) - bn(test_x)).abs().max().item()
    acc = {name: accuracy(m, [(test_x, test_y)]) for name, m in models.items()}
    timed = {**models, "control": plain}  # the no-BN network timed twice: the noise floor
    single = measure(timed, test_x[:1], samples=5 * args.rounds, calls=10)
    batch = measure(timed, test_x[:1000], samples=args.rounds, calls=1)
    timing = {name: {"b1": single[name], "b1000": batch[name]} for name in timed}

    rows = []
    for name in models:
        b1, b1000 = timing[name]["b1"], timing[name]["b1000"]
        rows.append((name, f"{acc[name]:.4f}", f"{b1 * 1e6:.1f}", f"{b1000 * 1e3:.2f}", f"{1 / b1:.0f}", f"{1000 / b1000:.0f}"))
    lines = [
        f"Command: `{command_line('python -m bench.fold_bn', argv)}`  ",
        f"MNIST test set, {len(test_y)} images; CPU, torch {torch.__version__}, {args.threads} thread(s); "
        f"medians of {5 * args.rounds} (batch 1) and {args.rounds} (batch 1000) alternating timings; "
        f"max |folded - unfolded| logit {diff:.1e}.",
        "",
        *md_table(["network", "test acc", "batch 1 (us)", "batch 1000 (ms)", "images/s (b1)", "images/s (b1000)"], rows),
        "",
    ]
    folded, no_bn, unfolded = (timing[n] for n in ("batch norm (folded)", "no batch norm (ELU + He)", "batch norm (unfolded)"))
    ok = True
    for key, label in (("b1", "batch 1"), ("b1000", "batch 1000")):
        ratio = folded[key] / no_bn[key]
        ok &= ratio <= 1 + args.tolerance
        noise = timing["control"][key] / no_bn[key]
        lines.append(f"- {label}: folded / no-BN = {ratio:.3f}, unfolded / no-BN = {unfolded[key] / no_bn[key]:.3f} "
                     f"({'ok' if ratio <= 1 + args.tolerance else 'SLOWER'}: limit {1 + args.tolerance:.2f}; "
                     f"noise floor: no-BN timed again / no-BN = {noise:.3f})")
    publish("fold_bn", "\n".join(lines) + "\n", target)
    return {"accuracy": acc, "timing": timing, "ok": ok, "max_logit_diff": diff}


if __name__ == "__main__":
    main()
