"""Decoding an image folder once: the decoded uint8 tensor kept in a checked on-disk cache.

A folder's images are decoded (:func:`dnnkit.data.image_files.decode`) into one uint8 tensor
``(N, C, H, W)`` and saved with :func:`torch.save` to a cache file that a later run loads instead
(``torch.load(weights_only=True, mmap=True)``: no pickled code runs, and the pixels are paged in
from the file as they are used). The cache is trusted only when it proves itself:

* its **fingerprint** (SHA-256 of every image file's relative path, size and modification time,
  and of the decode options ``channels``/``image_size``) equals the folder's now: a file added,
  removed, renamed or rewritten makes it stale, and it is decoded again and overwritten;
* its content checks out: the format version, the types and shapes, and a CRC-32 of the pixels
  (a file cut short, or bytes flipped on disk, is noticed, logged and rebuilt, never used).

Where: ``data.cache_dir`` if given; else ``<root>/.dnnkit-cache/`` beside the data; where that
cannot be written (a read-only folder or disk), ``$DNNKIT_CACHE_DIR`` (default
``~/.cache/dnnkit``)``/images/``. The file name hashes the folder's real path and the options, so
each folder and option set has one cache file. The write is atomic (:mod:`dnnkit.io`): a run
killed while writing leaves the previous cache or none. The log says which file was used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dnnkit.data.image_files import BadImage, Tree, probe
from dnnkit.errors import DnnkitError
from dnnkit.io import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
LOCAL = ".dnnkit-cache"  # beside the data (hidden: scan_folder skips it)
PROGRESS_AFTER = 2.0  # seconds: a decode that takes longer shows a progress bar (on a terminal)


@dataclass
class Decoded:
    """A folder's images decoded: ``images`` (uint8 ``(K, C, H, W)``) of the files whose ``kept``
    entry is True (all but the ``bad`` ones, which ``skip_bad`` skipped), in ``Tree`` order."""

    images: torch.Tensor
    kept: torch.Tensor
    bad: list[str] = field(default_factory=list)
    where: Path | None = None  # the cache file read or written


def fingerprint(tree: Tree, channels: int | None, size: tuple[int, int] | None) -> str:
    """SHA-256 over the files' relative paths, sizes and mtimes, and the decode options."""
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, channels, list(size) if size else None, tree.layout]).encode())
    skip = len(str(tree.root)) + 1
    for path, (st_size, mtime) in zip(tree.all_files(), tree.stamps):
        h.update(f"{str(path)[skip:]}\0{st_size}\0{mtime}\n".encode())
    return h.hexdigest()


def user_cache_dir() -> Path:
    """``$DNNKIT_CACHE_DIR``, else ``~/.cache/dnnkit``."""
    return Path(os.environ.get("DNNKIT_CACHE_DIR") or "~/.cache/dnnkit").expanduser()


def cache_files(root: Path, channels: int | None, size: tuple[int, int] | None, cache_dir: str | None = None) -> list[Path]:
    """Where the cache of ``root`` with these options may be, in the order they are tried."""
    key = hashlib.sha256(json.dumps([os.path.realpath(root), channels, list(size) if size else None]).encode()).hexdigest()[:16]
    name = f"images-{key}.pt"
    if cache_dir is not None:
        return [Path(cache_dir).expanduser() / name]
    return [Path(root) / LOCAL / name, user_cache_dir() / "images" / name]


def checksum(images: torch.Tensor) -> int:
    return zlib.crc32(images.contiguous().view(-1).numpy().data)


def _problem(blob, key: str, n_files: int, verify: bool) -> str | None:
    """Why the loaded ``blob`` cannot be used for the folder with fingerprint ``key``, or None."""
    if not isinstance(blob, dict) or blob.get("format") != CACHE_FORMAT:
        return "not a dnnkit image cache of this version"
    if blob.get("fingerprint") != key:
        return "stale: the folder's files or the decode options changed since it was written"
    images, kept = blob.get("images"), blob.get("kept")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        return "its images are not a uint8 (N, C, H, W) tensor"
    if not isinstance(kept, torch.Tensor) or kept.dtype != torch.bool or kept.shape != (n_files,) or int(kept.sum()) != len(images):
        return "its index does not match its images"
    bad = blob.get("bad")
    if not isinstance(bad, list) or len(bad) != n_files - len(images):
        return "its list of skipped files does not match"
    if verify and checksum(images) != blob.get("crc"):
        return "its pixels fail the CRC check (the file is damaged)"
    return None


def read_cache(path: Path, key: str, n_files: int, verify: bool = True) -> Decoded | None:
    """The cache at ``path`` if it is this folder's and intact (module docstring), else None (a
    damaged or stale cache is logged and left to be overwritten)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a cache to rebuild, not an error
        log.warning("image cache %s is unreadable (%s); decoding the images again", path, str(err).splitlines()[0][:200])
        return None
    problem = _problem(blob, key, n_files, verify)
    if problem is not None:
        log.warning("image cache %s ignored: %s; decoding the images again", path, problem)
        return None
    return Decoded(blob["images"], blob["kept"], list(blob["bad"]), path)


def write_cache(paths: list[Path], key: str, decoded: Decoded) -> Path | None:
    """Save ``decoded`` to the first of ``paths`` that can be written (atomically); None if none can."""
    blob = {"format": CACHE_FORMAT, "fingerprint": key, "images": decoded.images, "kept": decoded.kept,
            "bad": decoded.bad, "crc": checksum(decoded.images)}
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(blob, path)
            return path
        except (OSError, DnnkitError) as err:
            log.info("image cache: cannot write %s (%s); trying the next place", path.parent, getattr(err, "strerror", None) or err)
    log.warning("image cache: none of %s can be written; the images will be decoded again next run", [str(p.parent) for p in paths])
    return None


def _progress(total: int, root: Path):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"decoding {root.name}", unit="img", delay=PROGRESS_AFTER, mininterval=0.5,
                disable=None if sys.stderr.isatty() else True, leave=False, dynamic_ncols=True)


def decode_files(files: list[Path], shape: tuple[int, int, int], skip_bad: bool, root: Path, workers: int = 0) -> Decoded:
    """Decode ``files`` into one uint8 ``(N, *shape)`` tensor (``workers`` processes when > 0);
    a bad file is an error naming it, or with ``skip_bad`` counted and left out."""
    from dnnkit.data.streaming import ImageFiles, collate

    channels, height, width = shape
    images = torch.empty((len(files), channels, height, width), dtype=torch.uint8)
    kept = torch.ones(len(files), dtype=torch.bool)
    bad: list[str] = []
    dataset = ImageFiles(files, [0] * len(files), channels, (height, width), tolerant=True)
    if workers > 0:  # a batch comes back as one stacked tensor: one shared-memory transfer, not one per image
        batches = iter(torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate))
    else:
        batches = (collate([dataset[i] for i in range(j, min(j + 64, len(files)))]) for j in range(0, len(files), 64))
    start = 0
    with _progress(len(files), root) as bar:
        for batch, problems in batches:
            for i, problem in enumerate(problems, start):
                if problem is not None:
                    if not skip_bad:
                        raise BadImage(f"{problem}; fix or remove it, or set data.skip_bad=true to skip unreadable images")
                    kept[i] = False
                    bad.append(problem)
            images[start : start + len(batch)] = batch
            start += len(batch)
            bar.update(len(batch))
    return Decoded(images if not bad else images[kept], kept, bad)


def load_images(tree: Tree, shape: tuple[int, int, int], options: tuple, skip_bad: bool, workers: int = 0,
                cache: bool = True, cache_dir: str | None = None, key: str | None = None) -> Decoded:
    """Every image of ``tree`` decoded to ``shape``: from the cache when it holds them (checked),
    else decoded (and cached, when ``cache``). ``options`` are the decode options as given
    (``channels``, ``image_size``), part of the fingerprint ``key`` (computed if not given)."""
    key = key or fingerprint(tree, *options)
    files = tree.all_files()
    paths = cache_files(tree.root, *options, cache_dir) if cache else []
    for path in paths:
        found = read_cache(path, key, len(files))
        if found is not None:
            if found.bad and not skip_bad:
                raise BadImage(f"{found.bad[0]}; fix or remove it, or set data.skip_bad=true to skip unreadable images")
            log.info("image cache: %d images %s loaded from %s", len(found.images), "x".join(map(str, found.images.shape[1:])), path)
            return found
    start = time.perf_counter()
    decoded = decode_files(files, shape, skip_bad, tree.root, workers)
    seconds = time.perf_counter() - start
    log.info("decoded %d images of %s in %.1f s", len(decoded.images), tree.root, seconds)
    if paths:
        decoded.where = write_cache(paths, key, decoded)
        if decoded.where is not None:
            log.info("image cache written: %s", decoded.where)
    return decoded


def probe_all(files: list[Path], skip_bad: bool) -> tuple[list[tuple[int, int, int] | None], list[str]]:
    """:func:`~dnnkit.data.image_files.probe` of each file (None for a bad one with ``skip_bad``)."""
    shapes: list[tuple[int, int, int] | None] = []
    bad: list[str] = []
    for path in files:
        try:
            shapes.append(probe(path))
        except BadImage as err:
            if not skip_bad:
                raise BadImage(f"{err}; fix or remove it, or set data.skip_bad=true to skip unreadable images") from None
            shapes.append(None)
            bad.append(str(err))
    return shapes, bad
