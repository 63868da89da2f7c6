"""``data=arrays``: an .npz of images or feature vectors, its splits, and one line per bad file."""

import numpy as np
import pytest
import torch

from dnnkit.data import ArraysDataModule
from dnnkit.errors import DnnkitError


def save(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def blobs(n=120, f=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return (rng.normal(size=(n, f)) + 3 * y[:, None]).astype(np.float64), y


def test_features_are_float32_vectors_standardised_per_feature(tmp_path):
    x, y = blobs()
    x[:, 2] = 7.0  # a constant feature: shifted to 0, not divided by 0
    dm = ArraysDataModule(save(tmp_path, x_train=x * 100 + 5, y_train=y), val_size=0.25, normalize=True, batch_size=1000)
    assert dm.input_shape() == (6,) and dm.num_classes == 3 and dm.class_names == ["0", "1", "2"]
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.dtype == torch.float32 and xb.shape == (len(yb), 6)
    assert torch.allclose(xb.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(xb.std(0, unbiased=False)[[0, 1, 3, 4, 5]], torch.ones(5), atol=1e-4)
    assert bool((xb[:, 2] == 0).all())


def test_without_test_arrays_a_seeded_test_split_is_held_out_the_same_for_every_seed(tmp_path):
    x, y = blobs(200)
    path = save(tmp_path, x_train=x, y_train=y)
    a, b = (ArraysDataModule(path, seed=s, test_size=0.25) for s in (0, 1))
    assert len(a.split("test")[1]) == 50 and torch.equal(a.split("test")[0], b.split("test")[0])
    assert not torch.equal(a.split("val")[0], b.split("val")[0])
    train, val, test = (set(map(tuple, a.split(s)[0].tolist())) for s in ("train", "val", "test"))
    assert not train & test and not val & test and len(train) + len(val) + len(test) == 200
    with pytest.raises(DnnkitError, match="has no test split; give one, or set data.test_size"):
        ArraysDataModule(path, test_size=None).setup()


def test_explicit_val_and_test_arrays_are_used_as_they_are(tmp_path):
    x, y = blobs(90)
    path = save(tmp_path, x_train=x[:60], y_train=y[:60], x_val=x[60:75], y_val=y[60:75], x_test=x[75:], y_test=y[75:])
    dm = ArraysDataModule(path, val_size=0.5)
    assert torch.equal(dm.split("val")[0], torch.from_numpy(x[60:75]).float())
    assert torch.equal(dm.split("test")[1], torch.from_numpy(y[75:]))
    assert len(dm.split("train")[1]) == 60 and dm.train_size() == 60


def test_images_channels_last_uint8_and_float_and_class_names(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (40, 9, 7, 3), dtype=np.uint8)
    y = np.arange(40) % 4
    dm = ArraysDataModule(save(tmp_path, x_train=hwc, y_train=y, class_names=np.array(["a", "b", "c", "d"])),
                          classes=[3, 1], val_size=0, test_size=4)
    assert dm.input_shape() == (3, 9, 7) and dm.class_names == ["d", "b"] and dm.num_classes == 2
    images, labels = dm.split("train")
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 9, 7)
    original = torch.from_numpy(hwc).permute(0, 3, 1, 2)
    for img, lab in zip(images, labels):  # each image is one of the original class-3 (label 0) or class-1 (label 1) images
        matches = (original == img).flatten(1).all(1).nonzero().flatten()
        assert len(matches) == 1 and int(y[int(matches[0])]) == (3 if int(lab) == 0 else 1)
    hw = rng.random((30, 5, 5))
    floats = ArraysDataModule(save(tmp_path, "f.npz", x_train=hw, y_train=np.arange(30) % 2), val_size=5, test_size=5)
    assert floats.input_shape() == (1, 5, 5)
    x, _ = next(iter(floats.train_dataloader()))
    assert x.shape[1:] == (1, 5, 5) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_mlp_n_inputs_and_n_outputs_flow_from_the_data(tmp_path):
    from tests.conftest import compose_config

    x, y = blobs(60, f=11, k=3)
    cfg = compose_config(["data=arrays", f"data.path={save(tmp_path, x_train=x, y_train=y)}"])
    assert cfg.model.n_inputs == 11 and cfg.model.n_outputs == 3
    assert compose_config([]).model.n_inputs == 784  # MNIST: without reading any file


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 2)), "y_train": np.zeros(4)}, r"has no x_train \(it holds x, y_train\); valid keys: x_train, y_train"),
        ({"x_train": np.zeros((5, 2)), "y_train": np.zeros(4)}, r"x_train holds 5 samples but y_train 4 labels; they must be as many$"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 2))}, r"has x_test but no y_test; give both"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, 0.5, 1])}, r"y_train holds 0.5 at index 2; labels must be integers"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, -1, 1])}, r"y_train holds -1 at index 2; labels must be integers"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([1, 2, 1, 2])}, r"y_train has no label 0: labels must be 0..K-1"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1, 2, 1]), "class_names": np.array(["a", "b"])},
         r"class_names names 2 classes but the labels reach 2; labels must be 0..1$"),
        ({"x_train": np.full((4, 3, 3), 2.0), "y_train": np.array([0, 1, 0, 1])},
         r"x_train holds float pixels in \[2, 2\]; float images must be in \[0, 1\]"),
        ({"x_train": np.zeros((4, 3, 3, 9, 9)), "y_train": np.zeros(4)}, r"x arrays must be images \(N, H, W\) or \(N, H, W, C\)"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros((4, 1))}, r"y_train must be one label per sample, shape \(N,\); got \(4, 1\)"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 3)), "y_test": np.zeros(2)},
         r"the x arrays' samples differ in shape \(x_train \(4, 2\), x_test \(2, 3\)\)"),
    ],
)
def test_bad_files_are_one_line_naming_the_value(tmp_path, arrays, message):
    with pytest.raises(DnnkitError, match=message) as err:
        dm = ArraysDataModule(save(tmp_path, **arrays), val_size=1, test_size=1)
        dm.num_classes, dm.setup()  # noqa: B018 - what the preflight and the fit ask
    assert "\n" not in str(err.value)


def test_a_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(DnnkitError, match=r"^data.path='.*nope.npz' does not exist; give an .npz file"):
        ArraysDataModule(str(tmp_path / "nope.npz"))
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DnnkitError, match=r"^data.path='.*bad.npz' is not a readable .npz file"):
        ArraysDataModule(str(tmp_path / "bad.npz"))
