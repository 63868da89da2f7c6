"""``python -m dnnkit.predict model.pt INPUT [key=value ...]``: classes of new images, as a CSV.

INPUT is an image file (PNG, JPEG, GIF, WEBP), a folder of them (subfolders included, in sorted
order) or an ``.npz`` of images (uint8 pixels, or floats in [0, 1]; ``(N, H, W)``,
``(N, C, H, W)`` or ``(N, H, W, C)``). Images are scaled as the training loader scaled them
(``model.pt`` keeps the loader's mean/std in ``meta["input"]``) and must have the model's
channels and size; ``resize=true`` converts the others (grey <-> RGB, alpha dropped, resized
with antialiasing). ``predictions.csv`` (file, class, probability, then the next ``top_k - 1``
classes and probabilities) is written beside the input (into a folder INPUT) or into ``out=DIR``.

Options: ``top_k`` (3), ``out`` (beside the input), ``resize`` (false), ``key`` (the ``.npz``
array: default ``images``, ``x`` or ``X``, or its only array), ``batch_size`` (256), ``device``
(cpu). See docs/evaluate.md.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from dnnkit.cli import Parser, parse_options, run
from dnnkit.errors import DnnkitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
DEFAULTS = {"top_k": 3, "out": None, "resize": False, "key": None, "batch_size": 256, "device": "cpu"}
PROGRESS_FROM = 500  # images: a folder this large shows a progress bar (on a terminal)
MNIST_LIKE = ("mnist", "fashion_mnist")


def input_meta(loader, example) -> dict:
    """What ``model.pt`` keeps about the model's input: ``shape`` (C, H, W) and the loader's
    ``mean``/``std`` (numbers, one per channel, or None: pixels in [0, 1])."""

    def plain(value):
        if value is None or isinstance(value, (int, float)):
            return value
        return [float(v) for v in value.flatten().tolist()]

    return {"shape": list(example.shape[1:]), "mean": plain(getattr(loader, "mean", None)), "std": plain(getattr(loader, "std", None))}


def scaling(meta: dict) -> tuple:
    """``(mean, std)`` the model's training loader used (``meta["input"]``; files written before
    it was recorded: MNIST's and Fashion-MNIST's statistics where ``data.normalize`` was set)."""
    if isinstance(meta.get("input"), dict):
        return meta["input"].get("mean"), meta["input"].get("std")
    data = meta.get("data") or {}
    if data.get("normalize") and data.get("name") in MNIST_LIKE:
        from dnnkit.data.datamodule import STATS

        return STATS[data["name"]]
    return None, None


def expected_shape(meta: dict) -> tuple[int, ...] | None:
    """``(C, H, W)`` the model takes, or None where ``model.pt`` does not say."""
    shape = (meta.get("input") or {}).get("shape")
    if shape:
        return tuple(int(s) for s in shape)
    return (1, 28, 28) if (meta.get("data") or {}).get("name") in MNIST_LIKE else None


def shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


def fit_to(images, shape: tuple[int, ...] | None, resize: bool, what: str, hint: str = "pass resize=true to convert"):
    """``images`` (N, C, H, W) with ``shape``'s channels and size: as they are, converted with
    ``resize`` (torchvision.transforms.v2), or one error naming both shapes."""
    from torchvision.transforms.v2 import functional as F

    if shape is None or tuple(images.shape[1:]) == tuple(shape):
        return images
    if not resize or len(shape) != 3 or images.dim() != 4:
        unit = " (channels x height x width)" if images.dim() == 4 else ""
        raise DnnkitError(
            f"{what} {'is' if len(images) == 1 else 'are'} {shape_text(images.shape[1:])}{unit}; "
            f"the model takes {shape_text(shape)}: {hint}"
        )
    channels, height, width = shape
    if images.shape[1] in (2, 4):  # grey or RGB with alpha
        images = images[:, : images.shape[1] - 1]
    if images.shape[1] == 3 and channels == 1:
        images = F.rgb_to_grayscale(images)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != channels:
        raise DnnkitError(f"{what}: cannot convert {images.shape[1]} channels to the model's {channels}")
    if tuple(images.shape[2:]) != (height, width):
        images = F.resize(images, [height, width], antialias=True)
    return images.contiguous()


@contextlib.contextmanager
def progress(total: int, description: str, enabled: bool = True):
    """A rich progress bar on stderr (a terminal only) while the block runs; yields ``advance()``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder`` (subfolders too, hidden ones skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_images(files: list[Path], root: Path, shape, resize: bool):
    """uint8 (N, C, H, W) of ``files`` and their names relative to ``root``."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    images, names = [], []
    with progress(len(files), "reading images", enabled=len(files) >= PROGRESS_FROM) as advance:
        for path in files:
            name = str(path.relative_to(root)) if path != root else path.name
            try:
                image = decode_image(str(path), mode=ImageReadMode.UNCHANGED)
            except (RuntimeError, ValueError) as err:
                raise DnnkitError(f"cannot read image {str(path)!r}: {str(err).splitlines()[0] if str(err) else err}") from None
            images.append(fit_to(image.unsqueeze(0), shape, resize, name)[0])
            names.append(name)
            advance()
    if not images:
        raise DnnkitError(f"{str(root)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) > 1:  # the model's shape is unknown: the images must at least agree
        first, other = images[0].shape, next(i for i in images if i.shape != images[0].shape).shape
        raise DnnkitError(f"the images are of several sizes ({shape_text(first)}, {shape_text(other)}): pass resize=true "
                          "with a model that records its input shape, or give images of one size")
    return torch.stack(images), names


def read_npz(path: Path, key: str | None, shape, resize: bool):
    """Images (N, C, H, W) of an ``.npz`` array, and their names ``file.npz[i]``."""
    import numpy as np
    import torch

    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = list(arrays.files)
            wanted = key or next((k for k in ("images", "x", "X") if k in keys), keys[0] if len(keys) == 1 else None)
            if wanted not in keys:
                raise DnnkitError(f"{str(path)!r} holds arrays {keys}: choose one with key=NAME")
            array = arrays[wanted]
    except (OSError, ValueError, EOFError) as err:
        raise DnnkitError(f"cannot read {str(path)!r} as an .npz file: {err}") from None
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise DnnkitError(f"{path.name}[{wanted!r}] holds {array.dtype}; give uint8 pixels or floats in [0, 1]")
    x = torch.from_numpy(array.astype(np.float32) if array.dtype != np.uint8 else array)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C)
    if x.dim() not in (2, 4) or not len(x):
        raise DnnkitError(f"{path.name}[{wanted!r}] is {tuple(array.shape)}; give images (N, H, W), (N, C, H, W) or (N, H, W, C)")
    x = fit_to(x, shape, resize, f"the images of {path.name}[{wanted!r}]")
    return x.contiguous(), [f"{path.name}[{i}]" for i in range(len(x))]


def load_model(path: Path):
    """The inference model of ``path`` (a ``model.pt``, or a stage folder holding one)."""
    from dnnkit.nn.export import load_inference_model

    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    return load_inference_model(path), path


def predict(model, images, meta: dict, batch_size: int = 256, device: str = "cpu"):
    """Softmax probabilities (N, classes) of ``images`` (uint8, or floats in [0, 1]), batched
    and scaled by :class:`~dnnkit.data.loader.TensorLoader` as in training."""
    import torch

    from dnnkit.data.loader import TensorLoader

    mean, std = scaling(meta)
    loader = TensorLoader(images, torch.zeros(len(images), dtype=torch.long), batch_size, mean=mean, std=std)
    model = model.to(device)
    out = []
    with torch.inference_mode():
        for x, _ in loader:
            try:
                logits = model(x.to(device))
            except RuntimeError as err:
                first = (str(err).splitlines() or [type(err).__name__])[0]
                raise DnnkitError(f"the model cannot take inputs of {shape_text(x.shape[1:])}: {first}") from None
            out.append(logits.float().softmax(1).cpu())
    return torch.cat(out)


def csv_text(names: list[str], probs, class_names: list[str], top_k: int) -> str:
    """``file,class,probability[,class_2,probability_2,...]``, one row per image.

    Example::

        >>> import torch
        >>> print(csv_text(["a.png"], torch.tensor([[0.1, 0.7, 0.2]]), ["x", "y", "z"], 2), end="")
        file,class,probability,class_2,probability_2
        a.png,y,0.700000,z,0.200000
    """
    import csv
    import io

    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["file", "class", "probability"]
    for i in range(2, k + 1):
        header += [f"class_{i}", f"probability_{i}"]
    writer.writerow(header)
    for name, values, indices in zip(names, top.values.tolist(), top.indices.tolist()):
        row = [name]
        for p, c in zip(values, indices):
            row += [class_names[c] if c < len(class_names) else str(c), f"{p:.6f}"]
        writer.writerow(row)
    return buffer.getvalue()


def build_parser() -> Parser:
    parser = Parser(prog="python -m dnnkit.predict", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                    epilog="options (key=value): top_k=3, out=DIR (default: beside INPUT), resize=false, key=NAME (.npz array), "
                           "batch_size=256, device=cpu. Errors: one line, exit status 2.")
    parser.add_argument("model", help="a model.pt (or the stage folder holding it) exported by python -m dnnkit.train")
    parser.add_argument("input", help="an image file, a folder of images or an .npz of images")
    parser.add_argument("options", nargs="*", default=[], metavar="key=value", help="options, listed below")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    opts = parse_options(args.options, DEFAULTS, "dnnkit.predict")
    if opts["top_k"] < 1 or opts["batch_size"] < 1:
        raise DnnkitError(f"top_k and batch_size must be positive integers, got top_k={opts['top_k']}, batch_size={opts['batch_size']}")
    source = Path(args.input)
    if not source.exists():
        raise DnnkitError(f"input {str(source)!r} does not exist: give an image file, a folder of images or an .npz")
    model, model_path = load_model(Path(args.model))
    meta = model.inference_meta
    shape = expected_shape(meta)
    if source.is_dir():
        images, names = read_images(image_files(source), source, shape, opts["resize"])
    elif source.suffix.lower() == ".npz":
        images, names = read_npz(source, opts["key"], shape, opts["resize"])
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        images, names = read_images([source], source, shape, opts["resize"])
    else:
        raise DnnkitError(f"input {str(source)!r} is not an image ({', '.join(IMAGE_SUFFIXES)}), a folder or an .npz")
    probs = predict(model, images, meta, opts["batch_size"], device_of(opts["device"]))
    class_names = [str(c) for c in meta.get("class_names") or []]
    folder = Path(opts["out"]) if opts["out"] else source if source.is_dir() else source.parent
    from dnnkit.io import atomic_write

    out = folder / "predictions.csv"
    atomic_write(out, csv_text(names, probs, class_names, opts["top_k"]))
    best = probs.max(1)
    for name, p, c in list(zip(names, best.values.tolist(), best.indices.tolist()))[:10]:
        print(f"{name}: {class_names[c] if c < len(class_names) else c} ({p:.4f})")
    if len(names) > 10:
        print(f"... and {len(names) - 10} more")
    print(f"{len(names)} prediction{'s' if len(names) != 1 else ''} of {model_path} written to {out}")
    return out


def device_of(name: str) -> str:
    """``name`` if torch can use it here, else one error."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise DnnkitError(f"device={name} is not a device: give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DnnkitError(f"device={name} but no CUDA device is available here: use device=cpu")
    return name


def cli() -> int:
    """The ``dnnkit-predict`` console script: :func:`main`, a bad input as one line and status 2."""
    return run(main)


if __name__ == "__main__":
    sys.exit(cli())
