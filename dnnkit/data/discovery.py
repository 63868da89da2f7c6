"""Find MNIST-like IDX files on disk, or download them, and say exactly where we looked.

Search order for dataset ``name`` (``mnist`` or ``fashion_mnist``):

1. the ``root`` argument (a flat folder of the four IDX files, gzipped or not);
2. ``$DNNKIT_DATA_DIR``: a ``<name>/`` subfolder (``mnist/``, ``fashion-mnist/`` or
   ``fashion_mnist/``), torchvision's ``<Name>/raw/`` layout (``MNIST/raw``, ``FashionMNIST/raw``),
   then the folder itself (flat);
3. Debian's dataset folder (``/usr/share/datasets/fashion-mnist`` from ``dataset-fashion-mnist``);
4. a torchvision download into ``$DNNKIT_CACHE_DIR`` (default ``~/.cache/dnnkit``), which is
   then searched like a ``DNNKIT_DATA_DIR``.

When every place fails, :class:`DatasetNotFound` lists them all and the ways to fix it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dnnkit.errors import DnnkitError, choose


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    subfolders: tuple[str, ...]
    torchvision_class: str
    debian_dirs: tuple[str, ...]
    debian_package: str | None
    classes: tuple[str, ...]


DATASETS = {
    "mnist": DatasetInfo(
        "mnist", ("mnist", "MNIST/raw"), "MNIST", (), None, tuple(str(d) for d in range(10))
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
        "FashionMNIST",
        ("/usr/share/datasets/fashion-mnist",),
        "dataset-fashion-mnist",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DatasetNotFound(DnnkitError):
    """None of the places searched holds the dataset."""


def files_in(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (each gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def candidate_folders(info: DatasetInfo, root: str | Path | None) -> list[tuple[str, Path]]:
    """(where it came from, folder) pairs, in search order, without the download."""
    places: list[tuple[str, Path]] = []
    if root:
        places.append(("root argument", Path(root).expanduser()))
    bases = []
    if os.environ.get("DNNKIT_DATA_DIR"):
        bases.append(("$DNNKIT_DATA_DIR", Path(os.environ["DNNKIT_DATA_DIR"]).expanduser()))
    for label, base in bases:
        # the named subfolders first: both sets use the same file names, so a flat folder of
        # MNIST must not answer for fashion_mnist when a fashion-mnist/ subfolder is there
        places += [(label, base / sub) for sub in info.subfolders]
        places.append((label, base))
    places += [("Debian package " + (info.debian_package or ""), Path(d)) for d in info.debian_dirs]
    return places


def cache_dir() -> Path:
    return Path(os.environ.get("DNNKIT_CACHE_DIR", Path.home() / ".cache" / "dnnkit")).expanduser()


def _download(info: DatasetInfo, target: Path, timeout: float) -> str | None:
    """Try torchvision's download into ``target``; return None on success, else why it failed."""
    import torchvision.datasets as tvd

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urllib calls have no timeout of their own
    try:
        getattr(tvd, info.torchvision_class)(str(target), train=True, download=True)
        return None
    except Exception as err:  # network errors come in many types; we report, never hide
        # torchvision's message spans lines ("Error downloading ...:\nTried URL, got:\n<urlopen error ...>")
        return " ".join(f"{type(err).__name__}: {err}".split())[:300]
    finally:
        socket.setdefaulttimeout(old)


def find_dataset(name: str, root: str | Path | None = None, download: bool = True, timeout: float = 10.0) -> dict[str, Path]:
    """Paths of the four IDX files of dataset ``name``; see the module docstring for the order.

    Example::

        files = find_dataset("fashion_mnist")   # {'train_images': Path(...), ...}
    """
    info = DATASETS[choose("dataset", name, DATASETS)]
    tried = []
    for label, folder in candidate_folders(info, root):
        if (found := files_in(folder)) is not None:
            return found
        tried.append(f"{label}: {folder}")
    if not os.environ.get("DNNKIT_DATA_DIR"):
        tried.insert(1 if root else 0, "$DNNKIT_DATA_DIR: not set")  # where it is searched: after root
    cache = cache_dir()
    for sub in info.subfolders:
        if (found := files_in(cache / sub)) is not None:
            return found
    if download:
        why = _download(info, cache, timeout)
        if why is None and (found := files_in(cache / f"{info.torchvision_class}/raw")) is not None:
            return found
        tried.append(f"torchvision download into {cache}: {why or 'finished without the four files'}")
    else:
        tried.append(f"download: switched off (cache {cache} is empty)")
    fixes = [
        f"point DNNKIT_DATA_DIR at a folder holding {', '.join(v + '[.gz]' for v in FILES.values())} "
        f"(flat, in a {info.subfolders[0]}/ subfolder, or torchvision's {info.torchvision_class}/raw/)",
        "pass data.root=/path/to/folder",
        "connect to the internet once so torchvision can download it",
    ]
    if info.debian_package:
        fixes.append(f"apt-get install {info.debian_package}")
    raise DatasetNotFound(
        f"dataset {name!r} not found. Looked in:\n  - "
        + "\n  - ".join(tried)
        + "\nTo fix, any one of:\n  - "
        + "\n  - ".join(fixes)
    )
