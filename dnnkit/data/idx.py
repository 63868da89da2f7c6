"""Read IDX files (MNIST's format), gzipped or not, with strict checks.

A file whose magic number is wrong or whose payload is shorter (or longer) than its header
promises is an error naming the file: never a silently short dataset.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from dnnkit.errors import DnnkitError

# third byte of the magic number -> element type
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, expect_dims: int | None = None) -> torch.Tensor:
    """Return the IDX file at ``path`` as a tensor (uint8 for MNIST's images and labels).

    Example::

        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> write_idx(p, torch.tensor([5, 0, 4], dtype=torch.uint8))
        >>> read_idx(p).tolist()
        [5, 0, 4]
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip raises EOFError/BadGzipFile on a cut file
        raise DnnkitError(f"cannot read IDX file {path}: {err} (truncated or not gzip?)") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DnnkitError(
            f"{path} is not an IDX file: magic number {data[:4].hex() or '(empty file)'} "
            "(expected 0000 08 0N, e.g. 00000803 for images, 00000801 for labels)"
        )
    ndim = data[3]
    if expect_dims is not None and ndim != expect_dims:
        raise DnnkitError(f"{path} has {ndim} dimensions, expected {expect_dims} (images 3, labels 1)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DnnkitError(f"{path} is truncated inside its header ({len(data)} bytes)")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DnnkitError(
            f"{path} is {'truncated' if len(data) < expected else 'too long'}: header says shape {shape} "
            f"({expected} bytes), file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzipped when ``path`` ends in .gz); used by tests."""
    path = Path(path)
    array = tensor.to(torch.uint8).numpy()
    payload = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
