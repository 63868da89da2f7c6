"""``data=folder`` on a 10,000-image PNG folder written from MNIST: the decode cache and streaming.

Writes the first ``--images`` MNIST training images (``$DNNKIT_DATA_DIR``, read with
:func:`dnnkit.data.idx.read_idx`) as PNGs into ``<tmp>/<digit>/NNNNN.png``, then measures, in
one process and with the same folder:

* **start**: ``ImageFolderDataModule.setup()`` with no cache (the folder scanned, every header
  read, every image decoded, the cache written) against a second run's start (the cache found
  valid: the files' sizes and mtimes hashed, the cache mapped and its CRC checked), and the
  cheap ``input_shape()`` in both states. Misses and hits are alternated, the cache deleted
  before each miss.
* **epoch**: one epoch of the training split, in memory against streamed from the files by
  ``--workers`` processes (``data.in_memory=false``): the loader alone, and with a 784-300-100-10
  MLP trained by plain SGD (:func:`bench.common.raw_fit`), the two paths alternated.

Every figure is the median over ``--repeats``::

    python -m bench.data_folder                       # ~1-2 minutes on 2 shared cores
    python -m bench.data_folder --images 2000 --repeats 5 --workers 2

The table goes into ``docs/RESULTS.md`` between ``<!-- bench:data_folder:begin -->`` and
``<!-- bench:data_folder:end -->`` (``--results PATH`` for another file, ``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import add_results_arguments, command_line, md_table, median, now, publish, quiet, raw_fit, results_target
from dnnkit.data.discovery import find_dataset
from dnnkit.data.folder import ImageFolderDataModule
from dnnkit.data.idx import read_idx
from dnnkit.nn import MLP


def write_pngs(root: Path, n: int) -> float:
    """The first ``n`` MNIST training images as PNGs under ``root/<digit>/``; returns seconds."""
    from torchvision.io import encode_png

    files = find_dataset("mnist", None, download=False)
    images, labels = read_idx(files["train_images"]), read_idx(files["train_labels"])
    if n > len(images):
        raise SystemExit(f"error: --images {n} is more than the {len(images)} MNIST training images")
    start = time.perf_counter()
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / str(int(labels[i])) / f"{i:05d}.png").write_bytes(bytes(encode_png(images[i].unsqueeze(0)).numpy()))
    return time.perf_counter() - start


def datamodule(root: Path, workers: int, in_memory: bool = True) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(root), in_memory=in_memory, num_workers=workers, batch_size=200, val_size=0.1, test_size=0.1)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn) -> tuple[float, float]:
    """(wall, this process's CPU) seconds of ``fn()``."""
    wall, cpu = now()
    fn()
    end = now()
    return end[0] - wall, end[1] - cpu


def starts(root: Path, workers: int, repeats: int) -> dict[str, list]:
    """Seconds of ``setup()`` (wall, CPU) and ``input_shape()`` without and with a valid cache, alternated."""
    out: dict[str, list] = {"miss": [], "hit": [], "shape miss": [], "shape hit": []}
    for _ in range(repeats):
        shutil.rmtree(root / ".dnnkit-cache", ignore_errors=True)
        out["shape miss"].append(timed(datamodule(root, workers).input_shape))
        out["miss"].append(timed_cpu(datamodule(root, workers).setup))
        out["shape hit"].append(timed(datamodule(root, workers).input_shape))
        out["hit"].append(timed_cpu(datamodule(root, workers).setup))
    return out


def worker_cpu(loader) -> float:
    """CPU seconds used so far by a streaming loader's decoding processes (0 for none): their
    ``/proc/<pid>/stat`` user + system ticks (a bench-only peek at the DataLoader's workers)."""
    iterator = getattr(getattr(getattr(loader, "images", None), "loader", None), "_iterator", None)
    total = 0.0
    for worker in getattr(iterator, "_workers", []):
        try:
            fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")
    return total


def epochs(root: Path, workers: int, repeats: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(wall, CPU of this process and the decoding workers) seconds of one training epoch, the
    loader alone and with an MLP, in memory and streamed, alternated."""
    loaders = {}
    for path, in_memory in (("in memory", True), ("streamed", False)):
        dm = datamodule(root, workers, in_memory)
        dm.setup()
        loaders[path] = dm.train_dataloader()
    torch.manual_seed(0)
    model = MLP(784, [300, 100], 10, "elu")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def measure(loader, fn) -> tuple[float, float]:
        wall, cpu = now()
        before = worker_cpu(loader)
        fn()
        end = now()
        return end[0] - wall, end[1] - cpu + worker_cpu(loader) - before

    for r in range(repeats + 1):  # round 0 warms up (worker start, page cache) and is not counted
        for path, loader in loaders.items():
            loader.sampler.set_epoch(r)
            data = measure(loader, lambda loader=loader: sum(len(y) for _, y in loader))
            loader.sampler.set_epoch(r)
            fit = measure(loader, lambda loader=loader: raw_fit(model, opt, loader, 1))
            if r:
                out.setdefault((path, "loader"), []).append(data)
                out.setdefault((path, "mlp"), []).append(fit)
    return out


def report(n: int, write_s: float, start: dict, epoch: dict, workers: int, repeats: int, train: int, command: str) -> str:
    miss, hit = (median([w for w, _ in start[k]]) for k in ("miss", "hit"))
    miss_cpu, hit_cpu = (median([c for _, c in start[k]]) for k in ("miss", "hit"))
    rows = [
        ("first run: scan, headers, decode, write cache", f"{miss:.2f}", f"{miss_cpu:.2f}", f"{median(start['shape miss']):.3f}"),
        ("second run: cache hit (hash, map, CRC)", f"{hit:.2f}", f"{hit_cpu:.2f}", f"{median(start['shape hit']):.3f}"),
    ]

    def cells(kind: str) -> list[str]:
        (mw, mc), (sw, sc) = [[median([t[i] for t in epoch[(path, kind)]]) for i in (0, 1)] for path in ("in memory", "streamed")]
        return [f"{mw:.3f}", f"{mc:.3f}", f"{sw:.3f}", f"{sc:.3f}", f"{sw / mw:.1f}x"]

    lines = [
        f"Command: `{command}`  ",
        f"{n:,} MNIST training images as 1x28x28 PNGs (written in {write_s:.1f} s), {train:,} in the training split, "
        f"batch 200; {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, median of {repeats}.",
        "",
        *md_table(["start", "setup() wall (s)", "setup() CPU (s)", "input_shape() wall (s)"], rows),
        "",
        f"Second start: **{miss / hit:.0f}x** faster than the first (CPU time: {miss_cpu / hit_cpu:.0f}x).",
        "",
        *md_table(["training epoch", "in memory: wall (s)", "CPU (s)", f"streamed, {workers} worker(s): wall (s)",
                   "CPU, workers included (s)", "wall: streamed / in memory"], [
            ("loader alone", *cells("loader")),
            ("784-300-100-10 MLP, SGD", *cells("mlp")),
        ]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_folder", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="MNIST training images written as PNGs")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (the median is reported)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes of the streaming path")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the PNGs (default: a temporary folder, removed after)")
    add_results_arguments(parser)
    args = parser.parse_args(argv)
    target = results_target(parser, args, "data_folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet()
    root = args.folder or Path(tempfile.mkdtemp(prefix="bench_data_folder_"))
    try:
        print(f"writing {args.images} PNGs into {root} ...", flush=True)
        write_s = write_pngs(root, args.images)
        print("timing starts without and with the cache ...", flush=True)
        start = starts(root, args.workers, args.repeats)
        print("timing epochs in memory and streamed ...", flush=True)
        epoch = epochs(root, args.workers, args.repeats)
        train = datamodule(root, args.workers).train_size()
    finally:
        if args.folder is None:
            shutil.rmtree(root, ignore_errors=True)
    text = report(args.images, write_s, start, epoch, args.workers, args.repeats, train, command_line("python -m bench.data_folder", argv))
    publish("data_folder", text, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
