import os
import subprocess
import sys
import time

import pytest

from dnnkit.data.discovery import DatasetNotFound, find_dataset
from dnnkit.errors import DnnkitError
from tests.conftest import write_fake_dataset


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    monkeypatch.delenv("DNNKIT_DATA_DIR", raising=False)
    monkeypatch.setenv("DNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw"])
def test_data_dir_layouts(no_data, monkeypatch, layout):
    write_fake_dataset(no_data / "d" / layout, n_train=20, n_test=10, gz=layout != "mnist")
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "d"))
    files = find_dataset("mnist", download=False)
    assert files["train_images"].parent == no_data / "d" / layout


def test_root_argument_comes_first(no_data, monkeypatch):
    write_fake_dataset(no_data / "root", n_train=20, n_test=10)
    write_fake_dataset(no_data / "env", n_train=20, n_test=10)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "env"))
    assert find_dataset("mnist", root=no_data / "root", download=False)["test_labels"].parent == no_data / "root"


def test_named_subfolder_wins_over_a_flat_folder_of_the_other_set(no_data, monkeypatch):
    # MNIST flat in the folder, Fashion-MNIST in its subfolder: same file names, different sets
    write_fake_dataset(no_data / "d", n_train=20, n_test=10)
    write_fake_dataset(no_data / "d" / "fashion-mnist", n_train=20, n_test=10)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "d"))
    assert find_dataset("fashion_mnist", download=False)["train_images"].parent == no_data / "d" / "fashion-mnist"
    assert find_dataset("mnist", download=False)["train_images"].parent == no_data / "d"


def test_fashion_subfolder_names(no_data, monkeypatch):
    write_fake_dataset(no_data / "d" / "FashionMNIST" / "raw", n_train=20, n_test=10)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "d"))
    assert find_dataset("fashion_mnist", download=False)["train_labels"].parent.name == "raw"


def test_not_found_lists_every_place_and_the_fixes(no_data, monkeypatch):
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "empty"))
    with pytest.raises(DatasetNotFound) as err:
        find_dataset("fashion_mnist", download=False)
    message = str(err.value)
    for expected in ["empty", "$DNNKIT_DATA_DIR", "fashion-mnist", "FashionMNIST/raw",
                     "/usr/share/datasets/fashion-mnist", "apt-get install dataset-fashion-mnist", "To fix", "data.root="]:
        assert expected in message


def test_a_given_root_is_the_only_place_looked_at(no_data, monkeypatch):
    """Issue 14: a root without the files silently trained on $DNNKIT_DATA_DIR's data instead."""
    write_fake_dataset(no_data / "env" / "mnist", n_train=20, n_test=10)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "env"))
    (no_data / "root").mkdir()
    with pytest.raises(DatasetNotFound, match=r"^data.root='.*root' holds no mnist IDX files "
                                              r"\(missing train-images-idx3-ubyte\[.gz\], .*\); "
                       r"with data.root set nothing else is searched: .*or set data.root=null to search \$DNNKIT_DATA_DIR$"):
        find_dataset("mnist", root=no_data / "root")
    assert not (no_data / "cache").exists()  # and nothing was downloaded


def test_a_root_may_hold_the_named_subfolder(no_data):
    write_fake_dataset(no_data / "root" / "fashion-mnist", n_train=20, n_test=10)
    write_fake_dataset(no_data / "root", n_train=20, n_test=10)  # MNIST, flat
    assert find_dataset("fashion_mnist", root=no_data / "root")["train_images"].parent == no_data / "root" / "fashion-mnist"
    assert find_dataset("mnist", root=no_data / "root")["train_images"].parent == no_data / "root"


def test_a_directory_where_a_file_should_be_is_named(no_data, monkeypatch):
    write_fake_dataset(no_data / "d" / "mnist", n_train=20, n_test=10)
    (no_data / "d" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    (no_data / "d" / "mnist" / "t10k-labels-idx1-ubyte.gz").mkdir()
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(no_data / "d"))
    with pytest.raises(DnnkitError, match=r"^.*d/mnist/t10k-labels-idx1-ubyte.gz is a directory, not an IDX file; "
                                          r"remove it or put the file t10k-labels-idx1-ubyte.gz in its place$"):
        find_dataset("mnist", download=False)


def test_a_path_that_cannot_be_looked_at_is_one_message(no_data):
    with pytest.raises(DnnkitError, match=r"^data.root='y{100}\.\.\.' cannot be read: File name too long$"):
        find_dataset("mnist", root="y" * 300)


def test_not_found_lists_the_places_in_search_order(no_data, monkeypatch):
    def failing_download(info, target, timeout):
        return "RuntimeError: Error downloading train-images-idx3-ubyte.gz: Tried https://example/, got: <urlopen error>"

    monkeypatch.setattr("dnnkit.data.discovery._download", failing_download)
    with pytest.raises(DatasetNotFound) as err:
        find_dataset("fashion_mnist")
    places = str(err.value).split("Looked in:")[1].split("To fix")[0]
    order = [places.index(s) for s in ("$DNNKIT_DATA_DIR: not set", "Debian package", "torchvision download")]
    assert order == sorted(order)
    assert "<urlopen error>" in places  # the cause, not only torchvision's first line


def test_download_failure_keeps_every_line_of_the_reason(monkeypatch, tmp_path):
    import torchvision.datasets

    from dnnkit.data.discovery import DATASETS, _download

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading x.gz:\nTried https://a/, got:\n<urlopen error [Errno -2]>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    assert _download(DATASETS["mnist"], tmp_path, 1.0) == (
        "RuntimeError: Error downloading x.gz: Tried https://a/, got: <urlopen error [Errno -2]>"
    )


@pytest.mark.slow  # spawns python -m dnnkit.train
def test_cli_without_data_or_network_fails_fast_and_clearly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DNNKIT_DATA_DIR"}
    env.update(HOME=str(tmp_path), DNNKIT_CACHE_DIR=str(tmp_path / "cache"))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dnnkit.train", "data=fashion_mnist", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert "dataset 'fashion_mnist' not found" in proc.stderr
    assert "torchvision download" in proc.stderr and "DNNKIT_DATA_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
