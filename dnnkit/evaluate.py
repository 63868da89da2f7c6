"""``python -m dnnkit.evaluate RUN_DIR|model.pt [key=value ...]``: accuracy, per-class accuracy,
the most-confused pairs and the confusion matrix of exported models on a split of their data.

RUN_DIR is a run folder of ``python -m dnnkit.train`` (every finished stage that exported a
``model.pt`` is evaluated; ``stage=NAME`` picks one), a sweep folder, or one stage's folder. The
data is rebuilt from the config ``model.pt`` keeps (``meta["data"]``: the same split, class
subset and scaling as in training; the training split in file order, without augmentation).
Each model's ``confusion.json`` and ``confusion.png`` (``confusion_<split>.*`` for a split other
than ``test``) go into its stage folder, or the folder of ``model.pt``, or ``out=DIR``.

Options: ``split`` (test, val or train), ``stage``, ``out``, ``root`` (where the data is, instead
of the stored ``data.root``), ``batch_size`` (0: the data's ``eval_batch_size``), ``device`` (cpu).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dnnkit.cli import Parser, parse_options, run
from dnnkit.errors import DnnkitError, choose

SPLITS = ("test", "val", "train")
DEFAULTS = {"split": "test", "stage": None, "out": None, "root": None, "batch_size": 0, "device": "cpu"}
DATA_TARGETS = "dnnkit.data."  # a model.pt names its datamodule: only dnnkit's own are built from a file


@dataclass
class Target:
    """One model to evaluate: its label, ``model.pt``, where its outputs go (confined to ``base``)
    and the stage's recorded metrics (``result.json``)."""

    label: str
    model: Path
    out: Path
    base: Path
    recorded: dict = field(default_factory=dict)


def stage_folders(folder: Path) -> list[Path]:
    """Folders under ``folder`` (itself included) holding a readable ``result.json``."""
    from dnnkit.run_folder import finished

    found = [folder] if (folder / "result.json").is_file() else sorted(
        p.parent for p in folder.rglob("result.json") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return [f for f in found if finished(f) is not None]


def find_targets(path: Path, stage: str | None, out: str | None) -> list[Target]:
    """What ``path`` (a model.pt, a stage folder, a run or sweep folder) asks to evaluate."""
    from dnnkit.run_folder import finished

    if not path.exists():
        raise DnnkitError(f"{str(path)!r} does not exist: give a run folder of python -m dnnkit.train, a stage folder or a model.pt")
    if path.is_file():
        folder = Path(out) if out else path.parent
        return [Target(path.parent.name or path.stem, path, folder, folder)]
    stages = stage_folders(path)
    if not stages:
        started = sorted(str(p.parent.relative_to(path)) or "." for p in path.rglob("fit.json"))
        hint = f" (stages {', '.join(started)} did not finish: resume the run with resume=true)" if started else ""
        raise DnnkitError(
            f"{str(path)!r} holds no finished stage (no result.json){hint}: give a run folder of python -m dnnkit.train, "
            "a stage folder or a model.pt"
        )
    results = {f: finished(f) for f in stages}
    labels = {f: str(f.relative_to(path)) if f != path else f.name for f in stages}
    if stage is not None:
        picked = [f for f in stages if results[f].stage == stage or labels[f] == stage]
        if not picked:
            names = sorted({results[f].stage for f in stages} | set(labels.values()))
            raise DnnkitError(f"no finished stage {stage!r} in {str(path)!r}; valid: {', '.join(names)}")
        stages = picked
    exported = [f for f in stages if (f / "model.pt").is_file()]
    if not exported:
        raise DnnkitError(
            f"the finished stages of {str(path)!r} ({', '.join(labels[f] for f in stages)}) hold no model.pt: they ran with "
            "export=false, or their module has no .model to export"
        )
    for f in stages:
        if f not in exported:
            print(f"{labels[f]}: no model.pt (export=false?), skipped")
    base = Path(out) if out else path
    return [Target(labels[f], f / "model.pt", base / labels[f] if out and f != path else (base if out else f), base,
                   results[f].metrics) for f in exported]


def build_data(data: dict, root: str | None, batch_size: int):
    """The datamodule ``model.pt``'s data config describes (only dnnkit's own classes)."""
    from dnnkit.build import instantiate

    target = data.get("_target_") if isinstance(data, dict) else None
    if not isinstance(target, str) or not target.startswith(DATA_TARGETS):
        raise DnnkitError(
            f"the model's data config names {target!r}; only dnnkit's datamodules ({DATA_TARGETS}*) are built from a model file"
        )
    data = dict(data)
    if root is not None:
        if "root" not in data:
            raise DnnkitError(f"root={root}: the model's data ({target}) takes no root")
        data["root"] = root
    if batch_size:
        data["eval_batch_size"] = batch_size
    return instantiate(data, _convert_="all")


def split_loader(datamodule, split: str):
    """The datamodule's loader of ``split``; the training split's in file order, not augmented."""
    datamodule.setup("test" if split == "test" else "fit")
    loader = getattr(datamodule, f"{split}_dataloader")()
    if split == "train":
        for name, value in (("shuffle", False), ("augment", None)):
            if hasattr(loader, name):
                setattr(loader, name, value)
    return loader


def evaluate_model(target: Target, split: str, root: str | None = None, batch_size: int = 0, device: str = "cpu") -> dict:
    """Evaluate ``target``'s model on ``split``; write and return its confusion summary."""
    import torch

    from dnnkit.confusion import ConfusionMetrics, confusion_files, save_confusion
    from dnnkit.nn.export import load_inference_model
    from dnnkit.paths import confined
    from dnnkit.predict import expected_shape, fit_to

    model = load_inference_model(target.model)
    meta = model.inference_meta
    if not meta.get("data"):
        raise DnnkitError(f"{str(target.model)!r} keeps no data config (meta['data']): use python -m dnnkit.predict on files")
    datamodule = build_data(meta["data"], root, batch_size)
    loader = split_loader(datamodule, split)
    if len(loader) == 0:
        raise DnnkitError(f"the {split} split of {target.label} is empty")
    for path in confusion_files(target.out, split):
        confined(path, target.base, "an evaluation file")
    model = model.to(device)
    metrics, shape = None, expected_shape(meta)
    with torch.inference_mode():
        for x, y in loader:
            if metrics is None:  # one line naming both shapes, not the first layer's traceback
                fit_to(x, shape, False, f"the {split} images of {target.label}", "give the data it was trained on (root=DIR)")
            logits = model(x.to(device))
            if metrics is None:
                names = list(meta.get("class_names") or getattr(datamodule, "class_names", []) or [])
                metrics = ConfusionMetrics(logits.shape[1], names)
            metrics.update(logits.cpu(), y)
    summary = metrics.summary(split, model=str(target.model))
    summary["files"] = [str(p) for p in save_confusion(target.out, summary)]
    return summary


def render(table) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None, legacy_windows=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def report(target: Target, summary: dict) -> str:
    """One model's accuracy, per-class accuracy and most-confused pairs, as text."""
    from rich.table import Table

    from dnnkit.confusion import pairs_text

    recorded = target.recorded.get("test/acc") if summary["split"] == "test" else None
    line = f"accuracy {summary['accuracy']:.4f}" + (f" (the run's test/acc: {recorded:.4f})" if recorded is not None else "")
    table = Table(title=f"{target.label}: {summary['split']} split, {summary['images']} images", title_justify="left")
    for column in ("class", "images", "accuracy", "most often taken for"):
        table.add_column(column, justify="left" if column in ("class", "most often taken for") else "right")
    matrix = summary["matrix"]
    for row in summary["per_class"]:
        i = row["index"]
        wrong = [(n, j) for j, n in enumerate(matrix[i]) if j != i and n]
        taken = f"{summary['classes'][max(wrong)[1]]} ({max(wrong)[0]})" if wrong else "-"
        table.add_row(str(row["class"]), str(row["images"]), "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}", taken)
    return "\n".join([render(table), line, f"most confused (true -> predicted: images): {pairs_text(summary, 5)}",
                      "wrote " + ", ".join(summary["files"])])


def summary_table(rows: list[tuple[Target, dict]]) -> str:
    from rich.table import Table

    from dnnkit.confusion import pairs_text

    table = Table(title="evaluation", title_justify="left")
    for column in ("model", "split", "images", "accuracy", "run's test/acc", "worst class", "most confused"):
        table.add_column(column, justify="right" if column in ("images", "accuracy", "run's test/acc") else "left")
    for target, s in rows:
        recorded = target.recorded.get("test/acc") if s["split"] == "test" else None
        scored = [r for r in s["per_class"] if r["accuracy"] is not None]
        worst = min(scored, key=lambda r: r["accuracy"]) if scored else None
        table.add_row(target.label, s["split"], str(s["images"]), f"{s['accuracy']:.4f}",
                      "-" if recorded is None else f"{recorded:.4f}",
                      f"{worst['class']} ({worst['accuracy']:.4f})" if worst else "-", pairs_text(s, 1))
    return render(table)


def build_parser() -> Parser:
    parser = Parser(prog="python -m dnnkit.evaluate", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                    epilog="options (key=value): split=test|val|train, stage=NAME, out=DIR, root=DIR (the data), "
                           "batch_size=N (0: the data's eval_batch_size), device=cpu. Errors: one line, exit status 2.")
    parser.add_argument("path", help="a run folder (or sweep folder, or stage folder) of python -m dnnkit.train, or a model.pt")
    parser.add_argument("options", nargs="*", default=[], metavar="key=value", help="options, listed below")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    opts = parse_options(args.options, DEFAULTS, "dnnkit.evaluate")
    split = choose("split", opts["split"], SPLITS)
    if opts["batch_size"] < 0:
        raise DnnkitError(f"batch_size must be a positive integer (or 0: the data's eval_batch_size), got {opts['batch_size']}")
    targets = find_targets(Path(args.path), opts["stage"], opts["out"])
    from dnnkit.predict import device_of

    device = device_of(opts["device"])
    rows = []
    for target in targets:
        summary = evaluate_model(target, split, opts["root"], opts["batch_size"], device)
        print(report(target, summary), end="\n\n")
        rows.append((target, summary))
    print(summary_table(rows))
    return [s for _, s in rows]


def cli() -> int:
    """The ``dnnkit-evaluate`` console script: :func:`main`, a bad input as one line and status 2."""
    return run(main)


if __name__ == "__main__":
    sys.exit(cli())
