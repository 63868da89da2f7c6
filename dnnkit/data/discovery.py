"""Find MNIST-like IDX files on disk, or download them, and say exactly where we looked.

Given a ``root`` (``data.root``), it is the only place looked at: its ``<name>/`` subfolders
(as below), then the folder itself; a root without the four files is an error naming it, never
a silent fall-back to another copy. Without one, the search order for dataset ``name``
(``mnist`` or ``fashion_mnist``) is:

1. ``$DNNKIT_DATA_DIR``: a ``<name>/`` subfolder (``mnist/``, ``fashion-mnist/`` or
   ``fashion_mnist/``), torchvision's ``<Name>/raw/`` layout (``MNIST/raw``, ``FashionMNIST/raw``),
   then the folder itself (flat);
2. Debian's dataset folder (``/usr/share/datasets/fashion-mnist`` from ``dataset-fashion-mnist``);
3. a torchvision download into ``$DNNKIT_CACHE_DIR`` (default ``~/.cache/dnnkit``), which is
   then searched like a ``DNNKIT_DATA_DIR``.

When every place fails, :class:`DatasetNotFound` lists them all and the ways to fix it.

:func:`check_files` then reads what the files say about themselves, cheaply (headers, and the
first hundred images and labels): an image file and a label file of one split must hold as many
items, and the original files of MNIST and Fashion-MNIST, which look alike (same names, sizes
and counts), are told apart, so that one set's labels beside the other's images, or one set
asked for and the other found, is an error naming the files.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

from dnnkit.errors import DnnkitError, choose, shorten


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


def write_example_files(root: str | Path, n_train: int = 300, n_test: int = 100) -> str:
    """Write four tiny IDX files of random images (labels 0..9 in turn) into ``root``; return it.
    A stand-in for MNIST in examples and tests.

    Example::

        >>> import tempfile
        >>> sorted(os.listdir(write_example_files(tempfile.mkdtemp())))[:2]
        ['t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte']
    """
    import torch

    from dnnkit.data.idx import write_idx

    for key, stem in FILES.items():
        n = n_train if key.startswith("train") else n_test
        data = torch.randint(0, 256, (n, 28, 28)) if key.endswith("images") else torch.arange(n) % 10
        write_idx(os.path.join(root, stem), data)
    return str(root)


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a directory in its place, or a path that cannot be looked at
    (too long, no permission), is one error naming it."""
    try:
        if path.is_file():
            return True
        if path.is_dir():
            raise DnnkitError(f"{path} is a directory, not an IDX file; remove it or put the file {path.name} in its place")
        return False
    except OSError as err:
        raise DnnkitError(f"cannot look for {shorten(path)}: {err.strerror or err}") from None


def files_in(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (each gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if _is_file(candidate):
                found[key] = candidate
                break
        else:
            return None
    return found


def _root_folders(info: DatasetInfo, root: str | Path) -> list[tuple[str, Path]]:
    """The folders a given root offers (its named subfolders, then itself); one error if the
    root is no folder at all."""
    path, shown = Path(root).expanduser(), shorten(root)
    hint = f"give a folder holding the four {info.name} IDX files, or data.root=null to search $DNNKIT_DATA_DIR"
    try:
        if not path.exists():
            raise DnnkitError(f"data.root={shown!r} does not exist; {hint}")
        if not path.is_dir():
            raise DnnkitError(f"data.root={shown!r} is a file, not a folder; {hint}")
    except OSError as err:
        raise DnnkitError(f"data.root={shown!r} cannot be read: {err.strerror or err}") from None
    return [("data.root", path / sub) for sub in info.subfolders] + [("data.root", path)]


def _not_in_root(info: DatasetInfo, root: str | Path) -> DatasetNotFound:
    folder = Path(root).expanduser()
    missing = [f"{stem}[.gz]" for stem in FILES.values() if not (_is_file(folder / stem) or _is_file(folder / f"{stem}.gz"))]
    return DatasetNotFound(
        f"data.root={shorten(root)!r} holds no {info.name} IDX files (missing {', '.join(missing)}); with data.root set "
        f"nothing else is searched: put {', '.join(v + '[.gz]' for v in FILES.values())} there (flat, or in a "
        f"{info.subfolders[0]}/ subfolder), or set data.root=null to search $DNNKIT_DATA_DIR"
    )


def candidate_folders(info: DatasetInfo, root: str | Path | None) -> list[tuple[str, Path]]:
    """(where it came from, folder) pairs, in search order, without the download; a given
    ``root`` is the only place."""
    if root:
        return _root_folders(info, root)
    places: list[tuple[str, Path]] = []
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
    except Exception as err:  # noqa: BLE001 - network errors come in many types (urllib, socket, torchvision's own); reported, never hidden
        # torchvision's message spans lines ("Error downloading ...:\nTried URL, got:\n<urlopen error ...>")
        return " ".join(f"{type(err).__name__}: {err}".split())[:300]
    finally:
        socket.setdefaulttimeout(old)


def find_dataset(name: str, root: str | Path | None = None, download: bool = True, timeout: float = 10.0) -> dict[str, Path]:
    """Paths of the four IDX files of dataset ``name``; see the module docstring for the order.

    Example::

        >>> import os, tempfile, torch
        >>> from dnnkit.data.idx import write_idx
        >>> from dnnkit.data.discovery import FILES
        >>> root = tempfile.mkdtemp(); os.mkdir(os.path.join(root, "fashion-mnist"))
        >>> for key, stem in FILES.items():  # a tiny stand-in for the four IDX files
        ...     n = 300 if key.startswith("train") else 100
        ...     data = torch.randint(0, 256, (n, 28, 28)) if key.endswith("images") else torch.arange(n) % 10
        ...     write_idx(os.path.join(root, "fashion-mnist", stem), data)
        >>> files = find_dataset("fashion_mnist", root=root)   # {'train_images': Path(...), ...}
        >>> files["train_images"].relative_to(root).as_posix()
        'fashion-mnist/train-images-idx3-ubyte'
        >>> find_dataset("mnist", root=tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        dnnkit.data.discovery.DatasetNotFound: data.root='...' holds no mnist IDX files (missing train-images-idx3-ubyte[.gz], ...
    """
    info = DATASETS[choose("dataset", name, DATASETS)]
    tried = []
    for label, folder in candidate_folders(info, root):
        if (found := files_in(folder)) is not None:
            return found
        tried.append(f"{label}: {folder}")
    if root:
        raise _not_in_root(info, root)
    if not os.environ.get("DNNKIT_DATA_DIR"):
        tried.insert(0, "$DNNKIT_DATA_DIR: not set")  # where it is searched: first
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


# ----------------------------------------------------------------------------- what the files hold

LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
SPLITS = {"train": "training", "test": "test"}
PREFIX = 100  # images or labels fingerprinted (after the header)
# sha256 (first 16 hex digits) of the header and first PREFIX items of each original file, gunzipped
# (the same for any compression of it): key -> (dataset, file key)
KNOWN = {
    "3f4288d4dbf00675": ("mnist", "train_images"), "c895432d586001e5": ("mnist", "train_labels"),
    "abe442c64c6c4687": ("mnist", "test_images"), "2dadd29ec1425ee4": ("mnist", "test_labels"),
    "000ee7912b582b24": ("fashion_mnist", "train_images"), "0033286b5ee1f2a0": ("fashion_mnist", "train_labels"),
    "92ac3c38a919b36c": ("fashion_mnist", "test_images"), "3baea5070bff7500": ("fashion_mnist", "test_labels"),
}


def _why(err: BaseException) -> str:
    if isinstance(err, zlib.error):
        return f"its gzip data is corrupt ({err}); copy or download the file again"
    if isinstance(err, OSError) and err.errno == errno.EACCES:
        return "Permission denied; make the file readable"
    if isinstance(err, OSError) and err.errno == errno.EISDIR:
        return "it is a directory, not an IDX file"
    return f"{err} (truncated or not gzip?)" if isinstance(err, (EOFError, gzip.BadGzipFile)) else str(err.strerror or err)


def read_head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of ``path``'s content (gunzipped for ``.gz``), or one error naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as err:
        raise DnnkitError(f"cannot read IDX file {path}: {_why(err)}") from None


def idx_shape(path: Path, dims: int) -> list[int] | None:
    """The shape an IDX file of ``dims`` dimensions declares in its header, or None when it has no
    such header (the full reader, :func:`dnnkit.data.idx.read_idx`, then says what is wrong)."""
    head = read_head(path, 4 + 4 * dims)
    if len(head) < 4 + 4 * dims or head[:3] != b"\x00\x00\x08" or head[3] != dims:
        return None
    return [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]


def _identify(path: Path, shape: list[int] | None) -> tuple[str, str] | None:
    """(dataset, file key) if ``path`` is one of the original files (see :data:`KNOWN`)."""
    if not shape or shape[0] < PREFIX:
        return None
    size = 4 + 4 * len(shape) + PREFIX * (shape[1] * shape[2] if len(shape) == 3 else 1)
    return KNOWN.get(hashlib.sha256(read_head(path, size)).hexdigest()[:16])


def check_files(name: str, files: dict[str, Path]) -> dict[str, list[int] | None]:
    """The shapes the four files' headers declare, once they are known to belong together: per
    split as many images as labels, one image size, and no original file of another set (the
    labels of one set beside the other's images, or the other set where ``name`` was asked for).

    Example::

        >>> import os, tempfile, torch
        >>> root = write_example_files(tempfile.mkdtemp())  # a tiny stand-in for the four IDX files
        >>> check_files("mnist", find_dataset("mnist", root=root))
        {'train_images': [300, 28, 28], 'train_labels': [300], 'test_images': [100, 28, 28], 'test_labels': [100]}
        >>> from dnnkit.data.idx import write_idx
        >>> write_idx(os.path.join(root, FILES["test_labels"]), torch.zeros(99))   # one label missing
        >>> check_files("mnist", find_dataset("mnist", root=root))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        dnnkit.errors.DnnkitError: ...t10k-images-idx3-ubyte holds 100 images but ...t10k-labels-idx1-ubyte 99 labels: ...
    """
    shapes = {key: idx_shape(path, 3 if key.endswith("images") else 1) for key, path in files.items()}
    for split in SPLITS:
        images, labels = shapes[f"{split}_images"], shapes[f"{split}_labels"]
        if images and labels and images[0] != labels[0]:
            raise DnnkitError(
                f"{files[split + '_images']} holds {images[0]} images but {files[split + '_labels']} {labels[0]} labels: "
                "the images and labels of one split must be one dataset's, as many of each"
            )
    train, test = shapes["train_images"], shapes["test_images"]
    if train and test and train[1:] != test[1:]:
        raise DnnkitError(
            f"{files['train_images']} holds {'x'.join(map(str, train[1:]))} images but {files['test_images']} "
            f"{'x'.join(map(str, test[1:]))}: the training and test images must be one dataset's, of one size"
        )
    known = {key: _identify(path, shapes[key]) for key, path in files.items()}
    for split, split_name in SPLITS.items():
        images, labels = known[f"{split}_images"], known[f"{split}_labels"]
        if images and labels and images[0] != labels[0]:
            raise DnnkitError(
                f"{files[split + '_labels']} holds {LABELS[labels[0]]}'s {split_name} labels but {files[split + '_images']} "
                f"{LABELS[images[0]]}'s {split_name} images: the images and labels of one split must be one dataset's"
            )
    sets = {key: found[0] for key, found in known.items() if found}
    first = next(iter(sets), None)
    if any(other != sets[first] for other in sets.values()):
        second = next(key for key, other in sets.items() if other != sets[first])
        raise DnnkitError(
            f"{files[first]} is {LABELS[sets[first]]}'s but {files[second]} {LABELS[sets[second]]}'s: "
            "the four files must be one dataset's"
        )
    if first is not None and sets[first] != name:
        other = sets[first]
        raise DnnkitError(
            f"data.name={name!r} but {files[first].parent} holds {LABELS[other]}'s files: point data.root at "
            f"{name}'s files, or set data.name={other}"
        )
    return shapes
