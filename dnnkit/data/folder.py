"""``data=folder``: a tree of class folders of PNG/JPEG images, decoded once or streamed.

The layouts, headers and decoding are :mod:`dnnkit.data.image_files`; the decode cache is
:mod:`dnnkit.data.image_cache`; the streaming path is :mod:`dnnkit.data.streaming`. This module
is the :class:`~dnnkit.data.base.TensorDataModule` that ties them together:

* **splits**: ``root/<class>/...`` is one pool; the base holds a seeded ``test_size`` part out
  (the same for every seed) and takes ``val_size`` of the rest for validation.
  ``root/train|val|test/<class>/...`` gives its own splits: ``val/`` replaces the random
  validation split, ``test/`` the held-out one.
* **channels** (``channels``): ``null`` keeps what the images are: 1 if every image is
  grayscale, else 3 (RGB), the grayscale ones converted (logged); 1 or 3 converts every image.
  Alpha is dropped, palettes become RGB.
* **size** (``image_size``): images of mixed sizes need it (one integer: square, or
  ``[height, width]``); they are resized with antialiasing, aspect ratio not kept.
* **in memory or streamed** (``in_memory``): ``null`` decides by the decoded size, N x C x H x W
  bytes, against ``memory_limit_gb`` (default: half the memory available when the run starts);
  above it the images are streamed from the files by ``num_workers`` processes.
* **bad files**: an image that cannot be read is an error naming it; ``skip_bad=true`` leaves it
  out (logged with the count). Found when the headers are read (all files) and when the pixels
  are decoded (in memory: all files at once; streamed: when its batch comes).

Example::

    >>> import tempfile, torch
    >>> from torchvision.io import write_png
    >>> root = Path(tempfile.mkdtemp())
    >>> for c, name in enumerate(["circle", "square"]):
    ...     (root / name).mkdir()
    ...     for i in range(10):
    ...         _ = write_png(torch.full((1, 6, 8), 20 * c + i, dtype=torch.uint8), str(root / name / f"{i}.png"))
    >>> dm = ImageFolderDataModule(str(root), batch_size=4, val_size=4, test_size=4, cache=False)
    >>> dm.input_shape(), dm.class_names, dm.train_size()
    ((1, 6, 8), ['circle', 'square'], 12)
    >>> dm.setup()  # doctest: +ELLIPSIS
    folder ...: 20 images of 1x6x8 (960 B decoded) in memory, within the limit of ...
    decoded 20 images of ... in ... s
    folder ...: 12 train, 4 val, 4 test images
    >>> x, y = next(iter(dm.train_dataloader()))
    >>> tuple(x.shape), x.dtype
    ((4, 1, 6, 8), torch.float32)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from dnnkit.data.base import TensorDataModule
from dnnkit.data.image_cache import Decoded, cache_files, fingerprint, load_images, probe_all, read_cache
from dnnkit.data.image_files import SPLITS, Tree, scan_folder, size_option
from dnnkit.data.loader import TensorLoader
from dnnkit.data.streaming import FileImages, StreamingLoader
from dnnkit.errors import DnnkitError, number

log = logging.getLogger(__name__)

PARALLEL_FROM = 2000  # images: fewer are decoded faster in this process than by starting workers


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` of /proc/meminfo, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


class ImageFolderDataModule(TensorDataModule):
    """Images from ``root``'s class folders (see the module docstring).

    Args:
        root: the folder (required: there is no fall-back to ``$DNNKIT_DATA_DIR``).
        channels: ``null`` (what the images are), 1 (grayscale) or 3 (RGB).
        image_size: ``null`` (all images the same size), an integer or ``[height, width]``.
        in_memory: ``null`` (by size, see ``memory_limit_gb``), true, or false (stream).
        memory_limit_gb: the decoded size above which ``in_memory=null`` streams; ``null``: half
            the memory available at the start.
        skip_bad: leave unreadable images out (counted and logged) instead of failing.
        cache: keep the decoded images in a cache file (:mod:`dnnkit.data.image_cache`).
        cache_dir: where that file goes (``null``: beside the data, else ``$DNNKIT_CACHE_DIR``).
        num_workers: decoding processes (``null``: the CPUs less one, at most 8).
        test_size: held out (seeded) when there is no ``test/`` folder: a count or a fraction.
        The others are :class:`~dnnkit.data.base.TensorDataModule`'s.
    """

    def __init__(
        self,
        root: str | None = None,
        channels: int | None = None,
        image_size: int | Sequence[int] | None = None,
        in_memory: bool | None = None,
        memory_limit_gb: float | None = None,
        skip_bad: bool = False,
        cache: bool = True,
        cache_dir: str | None = None,
        num_workers: int | None = None,
        batch_size: int = 128,
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
        if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
            raise DnnkitError(f"data.channels must be null (what the images are), 1 (grayscale) or 3 (RGB), got {channels!r}")
        for key, value in (("in_memory", in_memory), ("skip_bad", skip_bad), ("cache", cache)):
            if not isinstance(value, bool) and not (value is None and key == "in_memory"):
                raise DnnkitError(f"data.{key} must be true or false{' or null' if key == 'in_memory' else ''}, got {value!r}")
        number("data.memory_limit_gb", memory_limit_gb, 0, low_open=True, optional=True)
        number("data.num_workers", num_workers, 0, integer=True, optional=True)
        self.root, self.channels, self.size = None if root is None else str(root), channels, size_option(image_size)
        self.in_memory, self.memory_limit_gb, self.skip_bad = in_memory, memory_limit_gb, skip_bad
        self.cache, self.cache_dir = cache, cache_dir
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.name = f"folder {Path(root).name or root}" if root else "folder"
        self._tree: Tree | None = None
        self._key: str | None = None
        self._shape: tuple[int, int, int] | None = None
        self._bad: set[Path] = set()
        self._decoded: Decoded | None = None
        self._stream: bool | None = None

    # ------------------------------------------------------------------ the folder, cheaply

    @property
    def tree(self) -> Tree:
        if self._tree is None:
            if self.root is None or not str(self.root).strip():  # checked here: every option of conf/data/ instantiates bare
                raise DnnkitError("data=folder needs data.root=PATH: a folder laid out as root/<class>/*.png|jpg "
                                  "or root/train|val|test/<class>/*.png|jpg")
            self._tree = scan_folder(self.root)
        return self._tree

    def source_class_names(self) -> Sequence[str]:
        return self.tree.class_names

    def _options(self) -> tuple:
        return self.channels, self.size

    @property
    def fingerprint(self) -> str:
        """The folder's fingerprint now (:func:`~dnnkit.data.image_cache.fingerprint`), once."""
        if self._key is None:
            self._key = fingerprint(self.tree, *self._options())
        return self._key

    def _cached_shape(self) -> tuple[int, int, int] | None:
        """The image shape a valid cache file records (its header: no pixel is read)."""
        if not self.cache:
            return None
        key, n = self.fingerprint, len(self.tree.all_files())
        for path in cache_files(self.tree.root, *self._options(), self.cache_dir):
            found = read_cache(path, key, n, verify=False)
            if found is not None:
                self._bad |= {f for f, k in zip(self.tree.all_files(), found.kept.tolist()) if not k}
                return tuple(found.images.shape[1:])
        return None

    def _probed_shape(self) -> tuple[int, int, int]:
        """The decoded image shape from every file's header: the channels rule, the size check."""
        files = self.tree.all_files()
        shapes, bad = probe_all(files, self.skip_bad)
        if bad:
            log.warning("%s: %d unreadable image(s) skipped (data.skip_bad=true), e.g. %s", self.name, len(bad), bad[0])
        self._bad |= {f for f, s in zip(files, shapes) if s is None}
        good = [(f, s) for f, s in zip(files, shapes) if s is not None]
        if not good:
            raise DnnkitError(f"data.root={self.root!r}: none of its {len(files)} images can be read")
        channels = self.channels
        if channels is None:
            kinds = {s[0] for _, s in good}
            channels = max(kinds)
            if len(kinds) > 1:
                log.info("%s: grayscale and colour images mixed: all are converted to RGB (data.channels=3; "
                         "set data.channels=1 for grayscale)", self.name)
        size = self.size
        if size is None:
            first = good[0]
            other = next(((f, s) for f, s in good if s[1:] != first[1][1:]), None)
            if other is not None:
                a, b = (f"{f.relative_to(self.tree.root)} is {s[2]}x{s[1]}" for f, s in (first, other))
                raise DnnkitError(f"data.root={self.root!r} holds images of different sizes ({a}, {b}; width x height): "
                                  f"set data.image_size=[height, width] (or one number, square) to resize them all")
            size = first[1][1:]
        return channels, *size

    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` after the channel rule and resizing: from the options when they say all,
        else a valid cache's header, else the files' headers (no image is decoded)."""
        if self._shape is None:
            if self.channels is not None and self.size is not None:
                self.tree  # noqa: B018 - a folder that holds nothing usable fails here, not at setup
                self._shape = (self.channels, *self.size)
            else:
                self._shape = self._cached_shape() or self._probed_shape()
        return self._shape

    def _source(self, split: str) -> str:
        """The :class:`~dnnkit.data.image_files.Tree` split that is the base's source ``split``."""
        return "all" if self.tree.layout == "classes" and split == "train" else split

    def source_labels(self, split: str) -> torch.Tensor | None:
        source = self._source(split)
        if source not in self.tree.files:
            return None
        files, labels = self.tree.files[source], self.tree.labels[source]
        return torch.tensor([y for f, y in zip(files, labels) if f not in self._bad], dtype=torch.long)

    def _source_files(self, split: str) -> list[Path]:
        return [f for f in self.tree.files[self._source(split)] if f not in self._bad]

    # ------------------------------------------------------------------ in memory or streamed

    def streams(self) -> bool:
        """Whether the images are streamed from the files (logged once, with the reason)."""
        if self._stream is None:
            shape = self.input_shape()
            n = len(self.tree.all_files()) - len(self._bad)
            size = n * shape[0] * shape[1] * shape[2]
            limit = self.memory_limit_gb * 2**30 if self.memory_limit_gb is not None else available_memory() / 2
            why = (f"data.in_memory={str(self.in_memory).lower()}" if self.in_memory is not None else
                   f"{'above' if size > limit else 'within'} the limit of {human(limit)} "
                   f"({'data.memory_limit_gb' if self.memory_limit_gb is not None else 'half the available memory'})")
            self._stream = (not self.in_memory) if self.in_memory is not None else size > limit
            log.info("%s: %d images of %s (%s decoded) %s, %s", self.name, n, "x".join(map(str, shape)), human(size),
                     (f"streamed by {self.num_workers} worker(s)" if self.num_workers else "streamed, decoded in this process")
                     if self._stream else "in memory", why)
        return self._stream

    def _load(self) -> Decoded:
        if self._decoded is None:
            shape = self.input_shape()
            # one worker would only move the decoding out of this process, which then waits for it
            workers = self.num_workers if len(self.tree.all_files()) >= PARALLEL_FROM and self.num_workers > 1 else 0
            self._decoded = load_images(self.tree, shape, self._options(), self.skip_bad, workers, self.cache, self.cache_dir,
                                        self.fingerprint)
            files = self.tree.all_files()
            bad = {f for f, k in zip(files, self._decoded.kept.tolist()) if not k}
            if bad - self._bad:
                log.warning("%s: %d unreadable image(s) skipped (data.skip_bad=true)", self.name, len(bad))
                self._plan = None  # the splits are planned without them
            self._bad |= bad
        return self._decoded

    def setup(self, stage: str | None = None) -> None:
        if not self._splits and not self.streams():
            self._load()  # learns which files are unreadable before the splits are planned
        super().setup(stage)

    def load_source(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self.source_labels(split)
        if self.streams():
            return FileImages(self._source_files(split), self.input_shape(), self.skip_bad), labels
        decoded = self._load()
        # the images of `split` are one contiguous run of the decoded tensor (files in Tree order)
        start = 0
        for source, files in self.tree.files.items():
            n = sum(1 for f in files if f not in self._bad)
            if source == self._source(split):
                return decoded.images[start : start + n], labels
            start += n
        raise DnnkitError(f"{self.name} has no {split} split")  # source_labels said so first

    def make_loader(self, split: str) -> TensorLoader:
        images, labels = self.split(split)
        if isinstance(images, FileImages):
            return StreamingLoader(images, labels, workers=self.num_workers, **self.loader_options(split))
        return TensorLoader(images, labels, **self.loader_options(split))


__all__ = ["SPLITS", "ImageFolderDataModule"]
