"""``data=torchvision``: sets found offline in torchvision's layout (fake IDX files under
``<root>/KMNIST/raw/``), options such as EMNIST's split, and the not-found messages."""

import pytest
import torch

from dnnkit.data import TorchvisionDataModule
from dnnkit.data.discovery import DatasetNotFound
from dnnkit.data.idx import write_idx
from dnnkit.data.torchvision_sets import SETS, load_set
from dnnkit.errors import DnnkitError
from tests.conftest import make_images, write_fake_dataset


@pytest.fixture
def no_places(tmp_path, monkeypatch):
    """No $DNNKIT_DATA_DIR, an empty cache: nothing to find but what a test gives."""
    monkeypatch.delenv("DNNKIT_DATA_DIR", raising=False)
    monkeypatch.setenv("DNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    load_set.cache_clear()
    yield
    load_set.cache_clear()


def test_kmnist_offline_from_torchvisions_layout(tmp_path, no_places):
    root = tmp_path / "tv"
    write_fake_dataset(root / "KMNIST" / "raw", n_train=200, n_test=50, gz=False)
    dm = TorchvisionDataModule("KMNIST", root=str(root), download=False, val_size=10, classes=[2, 7])
    assert dm.input_shape() == (1, 28, 28) and dm.class_names == ["su", "ya"] and dm.num_classes == 2
    images, labels = dm.split("train")
    train_labels, test_labels = make_images(200, 0)[1], make_images(50, 1)[1]  # what the raw files hold
    assert images.dtype == torch.uint8 and len(labels) + 10 == int(((train_labels == 2) | (train_labels == 7)).sum())
    assert len(dm.split("test")[1]) == int(((test_labels == 2) | (test_labels == 7)).sum())
    # the band of class 7 lights rows 16-17 of the synthetic images: remapped to label 1
    assert torch.equal(images[:, 16:18, 4:24].float().mean((1, 2)) > 200, labels == 1)


def test_found_in_dnnkit_data_dir(tmp_path, no_places, monkeypatch):
    write_fake_dataset(tmp_path / "data" / "KMNIST" / "raw", n_train=100, n_test=20, gz=False)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(tmp_path / "data"))
    dm = TorchvisionDataModule("KMNIST", download=False, val_size=10)
    assert dm.train_size() == 90 and len(dm.split("test")[1]) == 20


def test_emnist_split_comes_through_options(tmp_path, no_places):
    raw = tmp_path / "tv" / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for part, n in (("train", 60), ("test", 20)):
        images, labels = make_images(n, 0)
        write_idx(raw / f"emnist-digits-{part}-images-idx3-ubyte", images)
        write_idx(raw / f"emnist-digits-{part}-labels-idx1-ubyte", labels)
    dm = TorchvisionDataModule("EMNIST", root=str(tmp_path / "tv"), options={"split": "digits"}, download=False, val_size=10)
    assert dm.train_size() == 50 and dm.num_classes == 10
    with pytest.raises(DnnkitError, match=r"^torchvision.datasets.EMNIST: .*split.*; give its other arguments in data.options"):
        TorchvisionDataModule("EMNIST", root=str(tmp_path / "tv"), download=False).train_size()


def test_a_name_torchvision_does_not_have_lists_the_valid_ones():
    with pytest.raises(DnnkitError, match=r"^unknown torchvision image-classification set 'CIFAR11'; valid: .*CIFAR10, CIFAR100.*SVHN"):
        TorchvisionDataModule("CIFAR11")
    with pytest.raises(DnnkitError, match=r"^data.options.train is set by dnnkit \(it picks the splits\); remove it$"):
        TorchvisionDataModule("KMNIST", options={"train": False})
    assert "CocoDetection" not in SETS  # not image classification


def test_a_root_holding_nothing_is_an_error_and_never_falls_back(tmp_path, no_places, monkeypatch):
    write_fake_dataset(tmp_path / "data" / "KMNIST" / "raw", n_train=100, n_test=20, gz=False)
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(tmp_path / "data"))  # holds KMNIST: must not be used
    (tmp_path / "empty").mkdir()
    dm = TorchvisionDataModule("KMNIST", root=str(tmp_path / "empty"), download=True)
    with pytest.raises(DatasetNotFound, match=r"^data.root='.*empty' holds no torchvision KMNIST \(torchvision: Dataset not found.*\); "
                                              r"with data.root set nothing else is searched"):
        dm.input_shape()
    with pytest.raises(DnnkitError, match=r"^data.root='.*nowhere' does not exist"):
        TorchvisionDataModule("KMNIST", root=str(tmp_path / "nowhere")).train_size()


def test_not_found_anywhere_says_where_it_looked(tmp_path, no_places):
    dm = TorchvisionDataModule("KMNIST", download=False)
    with pytest.raises(DatasetNotFound) as err:
        dm.train_size()
    text = str(err.value)
    assert text.startswith("dataset 'KMNIST' not found. Looked in:\n  - $DNNKIT_DATA_DIR: not set\n  - $DNNKIT_CACHE_DIR: ")
    assert "download: switched off (data.download=false)" in text and "pass data.root=/path/to/folder" in text
