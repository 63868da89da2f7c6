"""The DataModule contract (dnnkit/data/base.py): splits from labels alone, an explicit val split,
a held-out test split, class checks, computed normalisation, per-channel loaders."""

import pytest
import torch

from dnnkit.data import TensorDataModule, TensorLoader
from dnnkit.data.base import channel_stats
from dnnkit.errors import DnnkitError


class Source(TensorDataModule):
    """A source of ``n`` RGB 4x4 images of ``k`` classes; ``val``/``test`` splits when asked."""

    name = "src"

    def __init__(self, n=100, k=4, val=0, test=20, images=True, **kw):
        super().__init__(**kw)
        g = torch.Generator().manual_seed(0)
        self.data = {"train": n, "val": val, "test": test}
        self.x = {s: torch.randint(0, 256, (m, 3, 4, 4), dtype=torch.uint8, generator=g) if images else torch.randn(m, 5, generator=g)
                  for s, m in self.data.items()}
        self.y = {s: torch.arange(m) % k for s, m in self.data.items()}
        self.k, self.loads = k, []

    def source_labels(self, split):
        return self.y[split] if self.data[split] else None

    def load_source(self, split):
        self.loads.append(split)
        return self.x[split], self.y[split]

    def source_class_names(self):
        return [f"c{i}" for i in range(self.k)]

    def input_shape(self):
        return tuple(self.x["train"].shape[1:])


def test_splits_and_sizes_come_from_the_labels_alone():
    dm = Source(val_size=0.2, n_per_class=5, classes=[3, 1])
    assert dm.train_size() == 10 and dm.loads == []
    plan = dm.plan()
    assert plan["train"][0] == "train" and plan["test"][0] == "test" and dm.loads == []
    assert set(plan["train"][2].tolist()) == {0, 1} and plan["train"][2].bincount().tolist() == [5, 5]
    assert set(Source().y["train"][plan["train"][1]].tolist()) == {1, 3}  # indices into the source split
    dm.setup()
    assert sorted(dm.loads) == ["test", "train"]
    x, y = dm.split("train")
    assert torch.equal(x, dm.x["train"][plan["train"][1]]) and torch.equal(y, plan["train"][2])


def test_an_explicit_val_split_replaces_the_random_one():
    dm = Source(val=12, val_size=50)
    assert dm.plan()["val"][0] == "val" and len(dm.split("val")[1]) == 12 and dm.train_size() == 100


def test_a_source_without_test_gets_a_held_out_part_the_same_for_every_seed():
    a, b = Source(test=0, test_size=0.25, val_size=10, seed=0), Source(test=0, test_size=0.25, val_size=10, seed=7)
    held = a.plan()["test"][1]
    assert a.plan()["test"][0] == "train" and len(held) == 25 and torch.equal(held, b.plan()["test"][1])
    used = torch.cat([a.plan()["train"][1], a.plan()["val"][1], held])
    assert sorted(used.tolist()) == list(range(100))  # disjoint, all used
    with pytest.raises(DnnkitError, match=r"^src has no test split; give one, or set data.test_size"):
        Source(test=0).plan()


def test_classes_and_sizes_are_checked_with_the_valid_values():
    with pytest.raises(DnnkitError, match=r"^data.classes=\[1, 9\] is invalid: give at least two distinct labels from 0..3 \(0=c0, 1=c1"):
        Source(classes=[1, 9]).num_classes  # noqa: B018
    with pytest.raises(DnnkitError, match=r"^data.val_size must be an integer >= 0 or a fraction in \(0, 1\), got 1.5$"):
        Source(val_size=1.5)
    bad = Source()
    bad.y["train"] = bad.y["train"] + 1  # label 4 of a 4-class source
    with pytest.raises(DnnkitError, match=r"^src train labels hold 4; labels must be 0..3$"):
        bad.plan()


def test_normalize_computes_per_channel_stats_of_the_training_split():
    dm = Source(normalize=True, val_size=10, batch_size=1000)
    x, _ = next(iter(dm.train_dataloader()))
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    mean, std = channel_stats(dm.split("train")[0])
    assert mean.shape == (3,) and torch.allclose(mean, dm.split("train")[0].double().mean((0, 2, 3)).float() / 255)
    feats = Source(images=False, normalize=True, val_size=10, batch_size=1000)
    f, _ = next(iter(feats.train_dataloader()))
    assert f.shape[1:] == (5,) and torch.allclose(f.mean(0), torch.zeros(5), atol=1e-5)


def test_the_loader_keeps_features_flat_and_float_images_unscaled():
    feats = torch.randn(6, 3)
    assert torch.equal(next(iter(TensorLoader(feats, torch.arange(6), 6)))[0], feats)
    imgs = torch.rand(6, 2, 3, 3)
    assert torch.equal(next(iter(TensorLoader(imgs, torch.arange(6), 6)))[0], imgs)
    x, _ = next(iter(TensorLoader(imgs, torch.arange(6), 6, mean=[0.5, 0.0], std=[0.5, 1.0])))
    assert torch.allclose(x[:, 0], (imgs[:, 0] - 0.5) / 0.5) and torch.allclose(x[:, 1], imgs[:, 1])
    with pytest.raises(DnnkitError, match=r"^3 normalisation values for samples of 2 channels or features$"):
        TensorLoader(imgs, torch.arange(6), 6, mean=[0.1, 0.2, 0.3], std=1.0)
