"""torchvision's image-classification sets: ``data=torchvision data.name=CIFAR10`` (KMNIST, EMNIST, SVHN, ...).

Where the set is looked for, in order (torchvision's own layout under each folder, e.g.
``KMNIST/raw/``, ``cifar-10-batches-py/``):

1. ``data.root``, when given, and nothing else: a root without the set is an error naming it;
2. ``$DNNKIT_DATA_DIR``;
3. ``$DNNKIT_CACHE_DIR`` (default ``~/.cache/dnnkit``), then a torchvision download into it
   (``data.download=true``, a 10-second timeout per connection).

When every place fails, :class:`~dnnkit.data.discovery.DatasetNotFound` lists what each said.

Each split is converted once to one uint8 tensor (from the dataset's ``.data`` and
``.targets``/``.labels`` where it has them, else by iterating it) and kept for the process
(stages and the preflight share it), so :meth:`TorchvisionDataModule.input_shape` reads the set
once, not the header only as the IDX and ``.npz`` sources do. Images of different sizes need
``data.image_size`` (shorter side resized, then centre-cropped square). Class names come from
the dataset's ``classes``. Extra constructor arguments go in ``data.options``
(``data.options={split: balanced}`` for EMNIST). Sets with their own validation split
(Flowers102, DTD, PCAM, ...) use it; sets with a single split (EuroSAT, SEMEION, ...) get a
seeded ``test_size`` held out.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from dnnkit.data.base import TensorDataModule
from dnnkit.data.discovery import DatasetNotFound, cache_dir
from dnnkit.errors import DnnkitError, choose, number, shorten

log = logging.getLogger(__name__)

# name -> the constructor argument choosing the split, and its values for (train, val, test):
# "train" is the boolean train=, "split" a string, None a set of one split
TRAIN_FLAG = ("train", True, None, False)
SETS: dict[str, tuple] = {
    **{n: TRAIN_FLAG for n in ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "CIFAR10", "CIFAR100", "USPS")},
    **{n: ("split", "train", None, "test") for n in ("SVHN", "STL10", "GTSRB", "Food101", "StanfordCars")},
    **{n: ("split", "train", "val", "test") for n in ("Flowers102", "DTD", "FGVCAircraft", "PCAM", "RenderedSST2")},
    "Country211": ("split", "train", "valid", "test"),
    "OxfordIIITPet": ("split", "trainval", None, "test"),
    "Imagenette": ("split", "train", None, "val"),
    "ImageNet": ("split", "train", None, "val"),
    **{n: (None, None, None, None) for n in ("EuroSAT", "SEMEION", "Caltech101", "Caltech256", "SUN397")},
}


def dataset_class(name: str):
    """The torchvision dataset class ``name``, one of :data:`SETS` that this torchvision has."""
    import torchvision.datasets as tvd

    valid = [n for n in SETS if hasattr(tvd, n)]
    return getattr(tvd, choose("torchvision image-classification set", name, valid))


def _construct(cls, name: str, root: Path, split: str, options: dict, download: bool):
    kind, *values = SETS[name]
    kwargs = dict(options)
    if kind is not None:
        kwargs[kind] = values[("train", "val", "test").index(split)]
    import torchvision.datasets as tvd

    if "download" in inspect.signature(cls).parameters or issubclass(cls, tvd.MNIST):  # EMNIST, QMNIST take it as **kwargs
        kwargs.setdefault("download", download)
    try:
        return cls(str(root), **kwargs)
    except TypeError as err:
        raise DnnkitError(f"torchvision.datasets.{name}: {err}; give its other arguments in data.options, "
                          f"e.g. data.options={{split: balanced}} for EMNIST") from None
    except ValueError as err:  # torchvision's verify_str_arg: a bad option value
        raise DnnkitError(f"torchvision.datasets.{name}: {' '.join(str(err).split())}") from None


def _targets(ds) -> torch.Tensor | None:
    for attr in ("targets", "labels", "_labels"):
        value = getattr(ds, attr, None)
        if value is not None and len(value) == len(ds):
            targets = torch.as_tensor(np.asarray(value), dtype=torch.int64)
            return targets[:, 0] if targets.dim() == 2 else targets  # QMNIST: the class is the first of 8 columns
    return None


def _to_chw(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        return images.permute(0, 3, 1, 2).contiguous()
    return images


def _fit(image: torch.Tensor, size: int | None) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size]) if size else image


def convert(ds, name: str, image_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, H, W) or (N, C, H, W), int64 labels) of torchvision dataset ``ds``."""
    data, targets = getattr(ds, "data", None), _targets(ds)
    if isinstance(data, (torch.Tensor, np.ndarray)) and targets is not None and len(data) == len(ds):
        images = torch.as_tensor(data)
        if images.dtype == torch.uint8 and images.dim() in (3, 4):  # MNIST family, CIFAR, SVHN, STL10, USPS, SEMEION
            images = _to_chw(images)
            if image_size:
                images = _fit(images if images.dim() == 4 else images.unsqueeze(1), image_size)
            return images, targets
    from torchvision.transforms.v2 import functional as TF

    images, labels = [], []
    for i in range(len(ds)):
        image, label = ds[i]
        if hasattr(image, "mode") and image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        images.append(_fit(TF.pil_to_tensor(image) if not isinstance(image, torch.Tensor) else image, image_size))
        labels.append(int(label))
    sizes = sorted({tuple(t.shape) for t in images})
    if len(sizes) > 1:
        raise DnnkitError(f"torchvision {name}'s images differ in size ({', '.join('x'.join(map(str, s)) for s in sizes[:4])}, ...); "
                          "set data.image_size=64 (or another side) to resize them to one square size")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _download(cls, name: str, target: Path, options: dict, timeout: float = 10.0) -> str | None:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urllib calls have no timeout of their own
    try:
        _construct(cls, name, target, "train", options, True)
        return None
    except Exception as err:  # noqa: BLE001 - network errors come in many types; reported, never hidden
        return " ".join(f"{type(err).__name__}: {err}".split())[:300]
    finally:
        socket.setdefaulttimeout(old)


def _opened(cls, name: str, root: Path, options: dict):
    """The training split at ``root`` (no download), or why not."""
    try:
        return _construct(cls, name, root, "train", options, False), None
    except DnnkitError:
        raise
    except Exception as err:  # noqa: BLE001 - "Dataset not found", a missing file, a corrupt one: all reported
        return None, " ".join(str(err).split())[:200] or type(err).__name__


_FOUND: dict[tuple, Path] = {}


def find_root(name: str, root: str | None, options: dict, download: bool) -> Path:
    """The folder holding torchvision set ``name`` in its own layout (see the module docstring);
    once found, remembered for the process (for the same environment)."""
    key = (name, root, json.dumps(options, sort_keys=True), download, os.environ.get("DNNKIT_DATA_DIR"), str(cache_dir()))
    if key not in _FOUND:
        _FOUND[key] = _find_root(name, root, options, download)
    return _FOUND[key]


def _find_root(name: str, root: str | None, options: dict, download: bool) -> Path:
    cls = dataset_class(name)
    if root:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DnnkitError(f"data.root={shorten(root)!r} {'is a file, not a folder' if path.exists() else 'does not exist'}; "
                              f"give the folder holding torchvision's {name} files, or data.root=null to search $DNNKIT_DATA_DIR")
        ds, why = _opened(cls, name, path, options)
        if ds is None:
            raise DatasetNotFound(f"data.root={shorten(root)!r} holds no torchvision {name} (torchvision: {why}); with data.root set "
                                  f"nothing else is searched: put the set there in torchvision's layout, or set data.root=null")
        return path
    tried = []
    places = [("$DNNKIT_DATA_DIR", Path(os.environ["DNNKIT_DATA_DIR"]).expanduser())] if os.environ.get("DNNKIT_DATA_DIR") else []
    if not places:
        tried.append("$DNNKIT_DATA_DIR: not set")
    places.append(("$DNNKIT_CACHE_DIR", cache_dir()))
    for label, folder in places:
        if not folder.is_dir():
            tried.append(f"{label}: {folder} (no such folder)")
            continue
        ds, why = _opened(cls, name, folder, options)
        if ds is not None:
            return folder
        tried.append(f"{label}: {folder} ({why})")
    if download:
        why = _download(cls, name, cache_dir(), options)
        if why is None:
            return cache_dir()
        tried.append(f"torchvision download into {cache_dir()}: {why}")
    else:
        tried.append("download: switched off (data.download=false)")
    raise DatasetNotFound(
        f"dataset {name!r} not found. Looked in:\n  - " + "\n  - ".join(tried)
        + f"\nTo fix, any one of:\n  - point DNNKIT_DATA_DIR at a folder holding torchvision's {name} files in its layout"
        "\n  - pass data.root=/path/to/folder\n  - connect to the internet once so torchvision can download it"
    )


@functools.lru_cache(maxsize=4)
def load_set(name: str, root: str, options_json: str, image_size: int | None) -> dict:
    """``{split: (images, labels) or None, "classes": names or None}`` of set ``name`` found at
    ``root``, converted once per process."""
    cls, options = dataset_class(name), json.loads(options_json)
    kind = SETS[name][0]
    out: dict = {}
    for i, split in enumerate(("train", "val", "test")):
        if (kind is None and split != "train") or (kind is not None and SETS[name][1 + i] is None):
            out[split] = None
            continue
        ds = _construct(cls, name, Path(root), split, options, False)
        out[split] = convert(ds, name, image_size)
        if split == "train":
            out["classes"] = [str(c) for c in getattr(ds, "classes", None) or []] or None
    log.info("%s: read torchvision's %s from %s", name, ", ".join(s for s in ("train", "val", "test") if out[s] is not None), root)
    return out


class TorchvisionDataModule(TensorDataModule):
    """A torchvision image-classification set held in memory as uint8.

    Args:
        name: the torchvision class, e.g. ``CIFAR10``, ``KMNIST``, ``EMNIST``, ``SVHN`` (:data:`SETS`).
        root: the folder holding it in torchvision's layout; only that folder is searched.
        options: more constructor arguments (``{split: balanced}`` for EMNIST).
        download: let torchvision download it into ``$DNNKIT_CACHE_DIR`` when it is nowhere on disk.
        image_size: resize (shorter side) and centre-crop every image to this square side.
        **kwargs: as for :class:`~dnnkit.data.base.TensorDataModule`.
    """

    def __init__(
        self,
        name: str = "CIFAR10",
        root: str | None = None,
        options: Mapping | None = None,
        download: bool = True,
        image_size: int | None = None,
        batch_size: int = 200,
        eval_batch_size: int = 1000,
        val_size: int | float = 0.1,
        val_split: str = "random",
        classes: Sequence[int] | None = None,
        n_per_class: int | None = None,
        seed: int = 0,
        normalize: bool = False,
        augment: Sequence | None = None,
        test_size: int | float | None = 0.2,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_size, val_split, classes, n_per_class, seed, normalize, augment, test_size)
        if not isinstance(name, str):
            raise DnnkitError(f"data.name must be a torchvision class name such as CIFAR10, got {name!r}")
        dataset_class(name)
        if options is not None and not isinstance(options, Mapping):
            raise DnnkitError(f"data.options must be a mapping of constructor arguments such as {{split: balanced}}, got {options!r}")
        self.options = dict(options or {})
        kind = SETS[name][0]
        if kind is not None and kind in self.options or "root" in self.options:
            raise DnnkitError(f"data.options.{kind if kind in self.options else 'root'} is set by dnnkit (it picks the splits); remove it")
        self.name, self.root, self.download = name, root, download
        self.image_size = number("data.image_size", image_size, 1, integer=True, optional=True)

    def _set(self) -> dict:
        root = find_root(self.name, self.root, self.options, self.download)
        return load_set(self.name, str(root), json.dumps(self.options, sort_keys=True), self.image_size)

    def source_labels(self, split: str) -> torch.Tensor | None:
        part = self._set()[split]
        return None if part is None else part[1]

    def load_source(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self._set()[split]

    def source_class_names(self) -> Sequence[str]:
        found = self._set()
        top = max(int(found[s][1].max()) for s in ("train", "val", "test") if found[s] is not None and len(found[s][1])) + 1
        names = found["classes"]
        return names if names and len(names) >= top else [str(i) for i in range(top)]

    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of the training images (this reads the set once per process)."""
        images = self._set()["train"][0]
        return (1, *images.shape[1:]) if images.dim() == 3 else tuple(images.shape[1:])
