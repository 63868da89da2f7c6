import gzip

import pytest
import torch

from dnnkit.data.idx import read_idx, write_idx
from dnnkit.errors import DnnkitError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip_gzipped_or_not(tmp_path, name):
    x = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    write_idx(tmp_path / name, x)
    assert torch.equal(read_idx(tmp_path / name, expect_dims=3), x)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, torch.zeros(5, 28, 28, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DnnkitError, match=f"{path}.*truncated.*shape \\[5, 28, 28\\]"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DnnkitError, match="train-images-idx3-ubyte.gz"):
        read_idx(path)


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DnnkitError, match="not an IDX file: magic number 1f8b0800"):
        read_idx(path)


def test_wrong_number_of_dimensions(tmp_path):
    write_idx(tmp_path / "labels", torch.zeros(7, dtype=torch.uint8))
    with pytest.raises(DnnkitError, match="1 dimensions, expected 3"):
        read_idx(tmp_path / "labels", expect_dims=3)
