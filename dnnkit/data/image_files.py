"""Image-folder trees: finding the images and their classes, reading their headers, decoding them.

Two layouts are understood (hidden files and folders, such as the cache's ``.dnnkit-cache``, are
skipped, and images may sit in subfolders of a class folder)::

    root/<class>/*.png|jpg|jpeg                 one pool: the datamodule splits it (seeded)
    root/train|val|test/<class>/*.png|jpg       explicit splits (val and test optional)

Class names are the folder names, sorted. :func:`probe` reads a file's header only (PNG ``IHDR``,
JPEG ``SOFn``): ``(channels, height, width)`` without decoding, so sizes and colour modes of a
whole folder are known cheaply. :func:`decode` decodes with ``torchvision.io.decode_image`` into
uint8 ``(C, H, W)``, resized with ``transforms.v2.functional.resize`` when asked.

torchvision's PNG decoder (0.29) crashes the process (SIGSEGV) on a PNG whose pixel data is
corrupt (a chunk CRC or zlib error while reading rows, pytorch/vision#3613), so
:func:`png_problem` checks every chunk's CRC, the zlib stream and the row filter bytes first
(about 5 us for a 28x28 image, a fifth of its decode): a corrupt file is named in an error.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dnnkit.errors import DnnkitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
LAYOUTS = "root/<class>/*.png|jpg or root/train|val|test/<class>/*.png|jpg"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}  # colour type -> channels kept (alpha dropped, palette -> RGB)
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel in the file
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class BadImage(DnnkitError):
    """A file that is not a readable PNG or JPEG image (``data.skip_bad=true`` skips such files)."""


@dataclass
class Tree:
    """What :func:`scan_folder` found: per split (``all`` for the one-pool layout), the image
    files and their class indices into ``class_names``."""

    root: Path
    layout: str  # "classes" or "splits"
    class_names: list[str]
    files: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)
    stamps: list[tuple[int, int]] = field(default_factory=list)  # (size, mtime_ns) of all_files(), at the scan

    def all_files(self) -> list[Path]:
        return [f for split in self.files for f in self.files[split]]


def _visible(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _images(folder: str, out: list[tuple[Path, int, int]]) -> list[tuple[Path, int, int]]:
    """``(path, size, mtime_ns)`` of the image files under ``folder`` (any depth, hidden entries
    skipped), sorted; ``os.scandir`` entries, so a file costs one ``stat``."""
    for entry in _visible(folder):
        if entry.is_dir():
            _images(entry.path, out)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
            st = entry.stat()
            out.append((Path(entry.path), st.st_size, st.st_mtime_ns))
    return out


def _class_folders(folder: Path, root: Path) -> dict[str, list[tuple[Path, int, int]]]:
    """``{class name: images}`` of the class folders in ``folder``; a class folder without images
    or a folder without class folders is one error."""
    entries = _visible(folder)
    classes = [Path(e.path) for e in entries if e.is_dir()]
    if not classes:
        if not entries:
            raise DnnkitError(f"data.root={str(root)!r}: {folder} is empty; expected {LAYOUTS}")
        sample = ", ".join(repr(e.name) for e in entries[:2])
        raise DnnkitError(
            f"data.root={str(root)!r}: {folder} holds no class folders, only files ({sample}{', ...' if len(entries) > 2 else ''}); "
            f"expected {LAYOUTS}"
        )
    out = {}
    for c in classes:
        images = _images(str(c), [])
        if not images:
            raise DnnkitError(
                f"class folder {c} holds no images ({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder"
            )
        out[c.name] = images
    return out


def scan_folder(root: str | Path) -> Tree:
    """The images of ``root`` in either layout (module docstring), as a :class:`Tree`.

    Example::

        >>> import tempfile, torch
        >>> from torchvision.io import write_png
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     _ = write_png(torch.zeros(1, 4, 4, dtype=torch.uint8), str(root / name / "0.png"))
        >>> tree = scan_folder(root)
        >>> tree.layout, tree.class_names, tree.labels
        ('classes', ['cat', 'dog'], {'all': [0, 1]})
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DnnkitError(f"data.root={str(root)!r} {what}; give a folder laid out as {LAYOUTS}")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and "train" not in present:
        raise DnnkitError(f"data.root={str(root)!r} has {'/'.join(present)}/ but no train/ folder; expected {LAYOUTS}")
    others = [e.name for e in _visible(root) if e.is_dir() and e.name not in SPLITS] if present else []
    if others:
        raise DnnkitError(f"data.root={str(root)!r} mixes the layouts: train/ beside other folders {others[:3]}; expected {LAYOUTS}")
    if not present:
        found = {"all": _class_folders(root, root)}
    else:
        found = {s: _class_folders(root / s, root) for s in present}
        for s in present[1:]:
            extra = sorted(set(found[s]) - set(found["train"]))
            if extra:
                raise DnnkitError(
                    f"data.root={str(root)!r}: {s}/ has class folder(s) {extra} that train/ lacks; "
                    f"train/'s classes are {sorted(found['train'])}"
                )
    names = sorted(found["train" if present else "all"])
    if len(names) < 2:
        raise DnnkitError(f"data.root={str(root)!r} holds one class folder ({names[0]!r}); a classifier needs at least two")
    index = {n: i for i, n in enumerate(names)}
    tree = Tree(root, "splits" if present else "classes", names)
    for split, classes in found.items():
        tree.files[split] = [f for c in sorted(classes) for f, _, _ in classes[c]]
        tree.labels[split] = [index[c] for c in sorted(classes) for _ in classes[c]]
        tree.stamps += [(size, mtime) for c in sorted(classes) for _, size, mtime in classes[c]]
    return tree


# ----------------------------------------------------------------------------- headers


def _png_header(head: bytes, path: Path) -> tuple[int, int, int]:
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise BadImage(f"cannot read image {path}: its PNG header is cut short or has no IHDR chunk")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in PNG_CHANNELS or not width or not height:
        raise BadImage(f"cannot read image {path}: its PNG header is invalid ({width}x{height}, colour type {colour})")
    return PNG_CHANNELS[colour], height, width


def _jpeg_header(f, path: Path) -> tuple[int, int, int]:
    f.seek(2)
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise BadImage(f"cannot read image {path}: no JPEG frame header (SOF) before the data ends")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue  # markers without a length
        length = f.read(2)
        if len(length) < 2:
            raise BadImage(f"cannot read image {path}: its JPEG data is cut short")
        (n,) = struct.unpack(">H", length)
        if marker[1] in JPEG_SOF:
            sof = f.read(6)
            if len(sof) < 6:
                raise BadImage(f"cannot read image {path}: its JPEG frame header is cut short")
            _, height, width, components = struct.unpack(">BHHB", sof)
            if not height or not width or components not in (1, 3, 4):
                raise BadImage(f"cannot read image {path}: its JPEG frame header is invalid ({width}x{height}, {components} components)")
            return (1 if components == 1 else 3), height, width
        f.seek(n - 2, 1)


def probe(path: Path) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the image at ``path`` from its header alone (channels
    as decoded: alpha dropped, palette and CMYK as RGB); :class:`BadImage` if it is no PNG/JPEG."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
            if head.startswith(PNG_SIGNATURE):
                return _png_header(head, path)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_header(f, path)
    except OSError as err:
        raise BadImage(f"cannot read image {path}: {err.strerror or err}") from None
    raise BadImage(f"cannot read image {path}: it is neither a PNG nor a JPEG file ({len(head)} bytes read)")


def _passes(width: int, height: int, interlaced: bool) -> list[tuple[int, int]]:
    """(pixels per row, rows) of each pass of a PNG image (one pass unless Adam7)."""
    if not interlaced:
        return [(width, height)]
    out = []
    for x0, y0, dx, dy in ADAM7:
        w, h = max(0, -(-(width - x0) // dx)), max(0, -(-(height - y0) // dy))
        if w and h:
            out.append((w, h))
    return out


def png_problem(data: bytes) -> str | None:
    """What makes the PNG ``data`` unsafe to hand to libpng (a CRC, a zlib stream or a row filter
    byte gone wrong), or None. See the module docstring for why."""
    pos, idat, header = 8, zlib.decompressobj(), None
    raw = bytearray()
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + n
        if end + 4 > len(data):
            return f"chunk {kind.decode('latin-1')!r} is cut short"
        if zlib.crc32(data[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return f"chunk {kind.decode('latin-1')!r} fails its CRC check"
        if kind == b"IHDR":
            header = struct.unpack_from(">IIBBBBB", data, pos + 8)
        elif kind == b"IDAT":
            try:
                raw += idat.decompress(data[pos + 8 : end])
            except zlib.error as err:
                return f"its pixel data is corrupt ({err})"
        elif kind == b"IEND":
            break
        pos = end + 4
    if header is None or not idat.eof:
        return "it has no header or its pixel data is cut short"
    width, height, depth, colour, _, _, interlace = header
    bits = PNG_SAMPLES.get(colour, 1) * depth
    offset = 0
    for w, h in _passes(width, height, interlace == 1):
        stride = 1 + (w * bits + 7) // 8
        filters = raw[offset : offset + stride * h : stride]
        if len(raw) < offset + stride * h or (filters and max(filters) > 4):
            return "its rows are corrupt (bad length or filter byte)"
        offset += stride * h
    return None


# ----------------------------------------------------------------------------- decoding


def size_option(value) -> tuple[int, int] | None:
    """``data.image_size`` as ``(height, width)``: null, one integer (square) or ``[H, W]``."""
    if value is None:
        return None
    pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)):
        raise DnnkitError(f"data.image_size must be null, a positive integer or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])


def decode(path: Path, channels: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The image at ``path`` as uint8 ``(channels, H, W)`` (``channels`` 1: grayscale, 3: RGB),
    resized (antialiased) to ``size`` if given; :class:`BadImage` naming the file if it cannot be."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise BadImage(f"cannot read image {path}: {err.strerror or err}") from None
    problem = png_problem(data) if data.startswith(PNG_SIGNATURE) else None
    if problem is None and not data.startswith((PNG_SIGNATURE, b"\xff\xd8")):
        problem = "it is neither a PNG nor a JPEG file"
    if problem is None:
        try:
            mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
        except RuntimeError as err:
            problem = str(err).strip().splitlines()[-1]
    if problem is not None:
        raise BadImage(f"cannot decode image {path}: {problem}")
    if image.dtype != torch.uint8:  # 16-bit PNGs
        image = F.to_dtype(image, torch.uint8, scale=True)
    if size is not None and tuple(image.shape[1:]) != size:
        image = F.resize(image, list(size), antialias=True)
    return image
