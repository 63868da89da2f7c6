"""Batch augmentation: the vectorised ops against torchvision v2, the seeding that keeps resume
exact, training split only, never on cached frozen features, and the bad-input messages."""

import logging

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dnnkit.data import ArraysDataModule, CachedDataModule, MNISTDataModule, TensorLoader, build_augment
from dnnkit.data.augment import PerImage, RandomAffineBatch, RandomCropPad, RandomFlip, batch_generator
from dnnkit.errors import DnnkitError


def test_crop_gives_the_pixels_of_v2_crop_of_the_padded_image():
    x, crop = torch.rand(16, 3, 12, 10), RandomCropPad(3)
    offsets = crop.params(16, torch.Generator().manual_seed(0))
    expected = torch.stack([TF.crop(TF.pad(x[i], [3]), int(offsets[i, 0]), int(offsets[i, 1]), 12, 10) for i in range(16)])
    assert torch.equal(crop.apply(x, offsets), expected)
    assert offsets.min() >= 0 and offsets.max() <= 6 and len({tuple(o) for o in offsets.tolist()}) > 1  # per sample


def test_flip_is_v2_horizontal_flip_per_sample():
    x, flip = torch.rand(32, 1, 5, 7), RandomFlip(0.5)
    mask = flip.params(32, torch.Generator().manual_seed(1))
    expected = torch.stack([TF.horizontal_flip(x[i]) if mask[i] else x[i] for i in range(32)])
    assert torch.equal(flip.apply(x, mask), expected) and 0 < int(mask.sum()) < 32


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_affine_is_v2_affine_with_the_same_parameters(interpolation):
    x, affine = torch.rand(12, 3, 12, 10), RandomAffineBatch(30, 0.2, (0.8, 1.2), interpolation)
    angle, shift, scale = affine.params(12, 12, 10, torch.Generator().manual_seed(2))
    expected = torch.stack([
        TF.affine(x[i], angle=float(angle[i]), translate=[int(shift[i, 0]), int(shift[i, 1])], scale=float(scale[i]),
                  shear=[0.0, 0.0], interpolation=v2.InterpolationMode(interpolation))
        for i in range(12)
    ])
    assert torch.allclose(affine.apply(x, angle, shift, scale), expected, atol=1e-5)
    assert angle.abs().max() <= 30 and len(set(angle.tolist())) == 12


def test_short_names_dicts_and_v2_specs():
    aug = build_augment(["crop:2", {"name": "flip", "p": 1.0}, "affine"])
    assert [type(s) for s in aug.steps] == [RandomCropPad, RandomFlip, RandomAffineBatch]
    assert aug.steps[0].padding == 2 and aug.steps[1].p == 1.0
    spec = build_augment([{"_target_": "torchvision.transforms.v2.RandomHorizontalFlip", "p": 1.0}])
    assert isinstance(spec.steps[0], PerImage)
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(spec(x, torch.Generator().manual_seed(0)), x.flip(-1))
    assert build_augment(None) is None and build_augment([]) is None


def test_a_v2_spec_draws_per_image_and_leaves_the_global_rng_alone():
    spec = build_augment([{"_target_": "torchvision.transforms.v2.RandomCrop", "size": 8, "padding": 4}])
    x = torch.rand(16, 1, 8, 8)
    state = torch.get_rng_state()
    a = spec(x, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, spec(x, torch.Generator().manual_seed(5)))
    assert len({tuple(img.flatten().tolist()) for img in a}) == 16  # not one crop for the whole batch


@pytest.mark.parametrize(
    "specs, message",
    [
        (["rotate"], r"^unknown augmentation 'rotate'; valid: affine, crop, flip$"),
        ([{"name": "crop", "pad": 2}], r"^data.augment crop: unknown parameter 'pad'; valid: padding, fill$"),
        (["crop:0"], r"^augment crop padding must be a positive integer, got 0$"),
        (["flip:2"], r"^augment flip p must be a number in \[0, 1\], got 2$"),
        ([{"_target_": "torchvision.transforms.v2.NoSuchThing"}], r"^data.augment entry .*NoSuchThing.* cannot be built"),
        ("crop,flip", r"^unknown augmentation 'crop,flip'"),
        (3, r"^data.augment must be a list such as \[crop, flip\], got 3$"),
    ],
)
def test_bad_augmentations_are_one_line(specs, message):
    with pytest.raises(DnnkitError, match=message):
        build_augment(specs)


def loader(augment, seed=0, **kw):
    x = torch.randint(0, 256, (40, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return TensorLoader(x, torch.arange(40), 8, shuffle=True, seed=seed, augment=build_augment(augment), **kw)


def test_batches_depend_on_seed_epoch_and_batch_only_so_resume_is_exact():
    full = [x for x, _ in loader(["crop", "flip"])]
    again = [x for x, _ in loader(["crop", "flip"])]
    assert all(torch.equal(a, b) for a, b in zip(full, again))
    resumed = loader(["crop", "flip"])
    resumed.load_state_dict({"epoch": 0, "served": 2})
    assert all(torch.equal(a, b) for a, b in zip(full[2:], [x for x, _ in resumed]))
    plain = [x for x, _ in loader(None)]
    assert not all(torch.equal(a, b) for a, b in zip(full, plain))
    other_seed = [x for x, _ in loader(["crop", "flip"], seed=1)]
    assert not torch.equal(torch.cat(full).sort(0).values, torch.cat(other_seed).sort(0).values)
    seeds = {batch_generator(s, e, b).initial_seed() for s in range(3) for e in range(3) for b in range(3)}
    assert len(seeds) == 27


def test_augmentation_happens_in_pixel_space_before_standardising():
    x = torch.full((4, 6, 6), 255, dtype=torch.uint8)
    out = next(iter(TensorLoader(x, torch.arange(4), 4, shuffle=True, mean=0.5, std=0.25, augment=build_augment(["crop:3"]))))[0]
    # a padded (black) pixel is 0 in [0, 1]: (0 - 0.5) / 0.25 = -2; a white one (1 - 0.5) / 0.25 = 2
    assert set(out.unique().tolist()) <= {-2.0, 2.0} and (out == 2.0).any()


def test_only_the_training_split_is_augmented(fake_data):
    dm = MNISTDataModule("mnist", val_size=100, augment=["crop", "flip"])
    assert dm.train_dataloader().augment is dm.augment
    assert dm.val_dataloader().augment is None and dm.test_dataloader().augment is None
    images, _ = dm.split("val")
    x, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(x, images[: len(x)].unsqueeze(1).float().mul_(1 / 255))  # as they are, only scaled


def test_augmentation_on_flat_features_is_refused(tmp_path):
    import numpy as np

    path = tmp_path / "tab.npz"
    np.savez(path, x_train=np.random.rand(50, 4), y_train=np.arange(50) % 2)
    dm = ArraysDataModule(str(path), augment=["crop"])
    with pytest.raises(DnnkitError, match=r"^data.augment=\['crop'\] needs images \(C, H, W\), but the data's samples are flat "
                                          r"feature vectors \(4,\); set data.augment=null$"):
        dm.train_size()  # as the preflight asks, before anything is read


def test_cached_frozen_features_refuse_an_augmented_training_split(fake_data):
    dm = MNISTDataModule("mnist", val_size=100, augment=["flip"])
    cached = CachedDataModule(dm, lambda x: x.flatten(1))
    cached.trainer = None
    assert len(cached.val_dataloader().images) == 100  # val/test are never augmented: they may be cached
    with pytest.raises(DnnkitError, match=r"^cannot cache the frozen layers' outputs of the train split: it is augmented"):
        cached.train_dataloader()


def test_layer_freezing_does_not_cache_an_augmented_split_and_says_why(fake_data, caplog):
    from dnnkit.callbacks import LayerFreezing
    from dnnkit.nn import MLP

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = MLP(784, [16, 8], 10)

    dm = MNISTDataModule("mnist", val_size=100, augment=["flip"])
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        assert LayerFreezing(frozen="model.hidden1").cached_datamodule(Module(), dm) is dm
    assert "not caching the frozen layers: data.augment changes the training images every batch" in caplog.text
    plain = MNISTDataModule("mnist", val_size=100)
    assert isinstance(LayerFreezing(frozen="model.hidden1").cached_datamodule(Module(), plain), CachedDataModule)


def test_a_v2_spec_in_a_data_config_reaches_the_loader_instantiated_by_hydra():
    from dnnkit.build import instantiate

    flip = {"_target_": "torchvision.transforms.v2.RandomHorizontalFlip", "p": 1.0}
    spec = {"_target_": "dnnkit.data.MNISTDataModule", "augment": ["crop", flip]}
    dm = instantiate(spec, _convert_="all")  # Hydra builds the nested transform first
    assert isinstance(dm.augment.steps[0], RandomCropPad) and isinstance(dm.augment.steps[1], PerImage)
    x = torch.rand(2, 1, 4, 4)
    assert torch.equal(dm.augment.steps[1](x, torch.Generator().manual_seed(0)), x.flip(-1))
