"""Training-split augmentation applied to whole batches in the fast loader, seeded per batch.

``data.augment`` is a list; each entry is one of

* a short name, optionally with its main parameter: ``crop`` / ``crop:4`` (random crop after
  zero-padding by 4 pixels, the CIFAR recipe), ``flip`` / ``flip:0.5`` (horizontal flip with
  probability 0.5), ``affine`` / ``affine:10`` (rotation within +-10 degrees, translation within
  10 % of the size, scale in [0.9, 1.1]);
* a dict ``{name: crop, padding: 2}`` with all of its parameters (:data:`SHORT` lists them);
* a full ``torchvision.transforms.v2`` spec, ``{_target_: torchvision.transforms.v2.RandomAffine,
  degrees: 10}``: it is applied **per image** (a v2 transform called on a (B, C, H, W) batch
  draws one random parameter set for the whole batch), under a CPU RNG seeded for the batch.

The three short ones are vectorised: one draw of per-sample parameters from the batch's
generator, then one tensor operation for the batch: crop as padding plus per-sample offsets
(a gather), flip as a per-sample mask, affine as per-sample inverse matrices through
``F.affine_grid``-style grids and one ``grid_sample``. Each gives what the v2 functional gives
for the same parameters (tests/data/test_augment.py: crop pixel for pixel against
``v2.functional.crop`` of the padded image, flip against ``horizontal_flip``, affine against
``v2.functional.affine`` to 1e-5). Measured with ``python -m bench.augment --threads 1`` on
the project's shared 2-core machine (load average ~9), batches of 128 float images, ms per
batch, median of 20:

=========  ====================  ====================
transform  1x28x28: v2 / vector  3x32x32: v2 / vector
=========  ====================  ====================
crop:4     46.1 / 0.51 (90x)     49.7 / 5.5 (9x)
flip       16.6 / 0.27 (61x)     15.8 / 1.2 (13x)
affine:10  167 / 5.9 (28x)       168 / 11.7 (14x)
=========  ====================  ====================

One loader epoch over 12,800 28x28 images (100 batches): 0.04 s without augmentation, 0.32 s
with ``[crop, flip]`` vectorised, 5.98 s with the same two as v2 specs. With torch's 2 threads on
that overloaded machine every multi-threaded op waits ~40 ms for its threads, the loader's own
gather included (no augmentation: 6.0 s an epoch), and the gap shrinks to 13.2 s vs 14.6 s.

Randomness comes only from the ``torch.Generator`` the loader seeds with
``(seed, epoch, batch index)``, so a run resumed mid-epoch sees the same augmented batches.
Augmentation is for images (C, H, W); on flat feature vectors it is refused.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from dnnkit.errors import DnnkitError, choose, number


class RandomCropPad:
    """Zero-pad by ``padding`` pixels, then crop back to the input size at a random offset per sample."""

    def __init__(self, padding: int = 4, fill: float = 0.0) -> None:
        self.padding = number("augment crop padding", padding, 1, integer=True)
        self.fill = number("augment crop fill", fill)

    def params(self, n: int, g: torch.Generator) -> torch.Tensor:
        """(n, 2) top-left offsets (row, column) into the padded image, each in [0, 2 * padding]."""
        return torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g)

    def apply(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p), value=self.fill)
        # one gather over the flattened padded images: ~6x faster than 4-D advanced indexing
        rows = (offsets[:, 0:1] + torch.arange(h)).view(b, h, 1)
        cols = (offsets[:, 1:2] + torch.arange(w)).view(b, 1, w)
        index = (rows * (w + 2 * p) + cols).view(b, 1, h * w).expand(b, c, h * w)
        return padded.flatten(2).gather(2, index).view(b, c, h, w)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.params(len(x), g))


class RandomFlip:
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = number("augment flip p", p, 0, 1)

    def params(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=g) < self.p

    def apply(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.params(len(x), g))


class RandomAffineBatch:
    """Per sample: rotate by U(-degrees, degrees), translate by a whole number of pixels within
    ``translate`` of the size (as v2 rounds it), scale by U(scale); zeros outside the image."""

    def __init__(self, degrees: float = 10.0, translate: float = 0.1, scale: Sequence[float] = (0.9, 1.1),
                 interpolation: str = "bilinear") -> None:
        self.degrees = number("augment affine degrees", degrees, 0, 180)
        self.translate = number("augment affine translate", translate, 0, 1)
        ok = isinstance(scale, Sequence) and len(scale) == 2 and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale)
        if not ok or not 0 < scale[0] <= scale[1]:
            raise DnnkitError(f"augment affine scale must be [low, high] with 0 < low <= high, got {scale!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.interpolation = choose("augment affine interpolation", interpolation, ["bilinear", "nearest"])

    def params(self, n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(angles in degrees, (n, 2) translations in pixels, scales)."""
        u = torch.rand(n, 4, generator=g, dtype=torch.float64)
        angle = (u[:, 0] * 2 - 1) * self.degrees
        shift = torch.round((u[:, 1:3] * 2 - 1) * torch.tensor([self.translate * w, self.translate * h], dtype=torch.float64))
        scale = self.scale[0] + u[:, 3] * (self.scale[1] - self.scale[0])
        return angle, shift, scale

    def apply(self, x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """torchvision's inverse affine matrix (no shear, centre of the image) for each sample."""
        b, _, h, w = x.shape
        rot = torch.deg2rad(angle.double())
        cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
        tx, ty = shift[:, 0].double(), shift[:, 1].double()
        # rows (m0 m1 m2; m3 m4 m5) as torchvision's _get_inverse_affine_matrix with center (0, 0)
        m = torch.stack([cos, sin, -cos * tx - sin * ty, -sin, cos, sin * tx - cos * ty], 1).view(b, 2, 3).to(x.dtype)
        xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, dtype=x.dtype)
        ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, dtype=x.dtype)
        base = torch.stack([xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.ones(h, w, dtype=x.dtype)], -1).view(1, h * w, 3)
        theta = m.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=x.dtype)
        grid = base.expand(b, -1, -1).bmm(theta).view(b, h, w, 2)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.apply(x, *self.params(len(x), x.shape[2], x.shape[3], g))


class PerImage:
    """A torchvision transform applied to each image of the batch in turn, with the CPU RNG
    (which v2 transforms draw from) seeded from the batch's generator and restored after."""

    def __init__(self, transform: Callable, spec) -> None:
        self.transform, self.spec = transform, spec

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in x])


SHORT: dict[str, tuple[type, str]] = {  # name -> (class, the parameter a `name:value` sets)
    "crop": (RandomCropPad, "padding"),
    "flip": (RandomFlip, "p"),
    "affine": (RandomAffineBatch, "degrees"),
}


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _short(entry, kwargs: dict):
    name = kwargs.pop("name", entry)
    if not isinstance(name, str):
        raise DnnkitError(f"data.augment entry {entry!r} names no augmentation; valid: {', '.join(sorted(SHORT))} "
                          "or a {_target_: torchvision.transforms.v2...} spec")
    cls = SHORT[choose("augmentation", name, SHORT)][0]
    valid = list(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise DnnkitError(f"data.augment {name}: unknown parameter {unknown[0]!r}; valid: {', '.join(valid)}")
    return cls(**kwargs)


def _one(entry):
    if isinstance(entry, str):
        name, _, value = entry.partition(":")
        kwargs = {SHORT[name][1]: _number(value)} if value and name in SHORT else {}
        return _short(name, kwargs)
    if isinstance(entry, Mapping) and "_target_" in entry:
        from hydra.utils import instantiate

        from dnnkit.errors import find_dnnkit_error

        try:
            transform = instantiate(dict(entry), _convert_="all")
        except Exception as err:  # noqa: BLE001 - Hydra wraps import and argument errors; one line names the spec
            ours = find_dnnkit_error(err)
            first = (str(err.__cause__ or err).splitlines() or [type(err).__name__])[0]
            raise ours or DnnkitError(f"data.augment entry {dict(entry)!r} cannot be built: {first}") from None
        if not callable(transform):
            raise DnnkitError(f"data.augment entry {entry['_target_']!r} is not a transform (not callable)")
        return PerImage(transform, entry)
    if isinstance(entry, Mapping):
        return _short(entry, {k: v for k, v in entry.items()})
    if callable(entry):  # a spec Hydra has instantiated already (data configs are instantiated recursively)
        return PerImage(entry, entry)
    raise DnnkitError(f"data.augment entry {entry!r} is not a name ({', '.join(sorted(SHORT))}), a dict or a _target_ spec")


class BatchAugment:
    """The augmentations of ``data.augment``, applied in order to float batches (B, C, H, W) in
    [0, 1] (before normalisation) with one generator per batch."""

    def __init__(self, steps: list, specs: list) -> None:
        self.steps, self.specs = steps, specs

    def check(self, shape: tuple[int, ...]) -> None:
        """Augmentation needs images; ``shape`` is one sample's, (C, H, W) or (F,)."""
        if len(shape) != 3:
            raise DnnkitError(
                f"data.augment={self.specs!r} needs images (C, H, W), but the data's samples are flat feature vectors "
                f"{tuple(shape)}; set data.augment=null"
            )

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, g)
        return x

    def __repr__(self) -> str:
        return f"BatchAugment({self.specs!r})"


def build_augment(specs) -> BatchAugment | None:
    """``data.augment`` as a :class:`BatchAugment` (``None`` for null or ``[]``).

    Example::

        >>> aug = build_augment(["crop:2", {"name": "flip", "p": 1.0}])
        >>> x = torch.rand(4, 1, 8, 8)
        >>> aug(x, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 8, 8])
        >>> build_augment(["rotate"])
        Traceback (most recent call last):
        ...
        dnnkit.errors.DnnkitError: unknown augmentation 'rotate'; valid: affine, crop, flip
    """
    if specs is None:
        return None
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    if not isinstance(specs, Sequence):
        raise DnnkitError(f"data.augment must be a list such as [crop, flip], got {specs!r}")
    specs = list(specs)
    return BatchAugment([_one(s) for s in specs], specs) if specs else None


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of batch ``batch`` of ``epoch``: a function of the three numbers only."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{batch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


__all__ = ["SHORT", "BatchAugment", "PerImage", "RandomAffineBatch", "RandomCropPad", "RandomFlip", "batch_generator", "build_augment"]
