"""Batch augmentation: torchvision v2 called per image vs dnnkit's vectorised crop, flip, affine.

A v2 transform called on a (B, C, H, W) batch draws one parameter set for the whole batch, so
per-image augmentation with v2 means one call per image. :mod:`dnnkit.data.augment` draws the
per-image parameters at once and applies them in one tensor operation. This bench times both on
the same float batches (milliseconds per batch, median over ``--repeats``) and checks on every
round that they agree (the vectorised op is given the parameters v2 would draw)::

    python -m bench.augment                      # ~1 minute on 2 cores
    python -m bench.augment --batch 256 --threads 1

It prints a table, then one loader epoch with no augmentation, the vectorised ``[crop, flip]``
and the same as v2 specs; nothing is written. The numbers in dnnkit/data/augment.py come from it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from dnnkit.data.augment import RandomAffineBatch, RandomCropPad, RandomFlip


def per_image(transform, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([transform(image) for image in x])


def cases(h: int, w: int):
    """(name, v2 transform, vectorised op, check(x, generator) -> max abs difference)."""
    crop, flip, affine = RandomCropPad(4), RandomFlip(0.5), RandomAffineBatch(10, 0.1, (0.9, 1.1))

    def check_crop(x, g):
        off = crop.params(len(x), g)
        ref = torch.stack([TF.crop(TF.pad(x[i], [4]), int(off[i, 0]), int(off[i, 1]), h, w) for i in range(len(x))])
        return float((crop.apply(x, off) - ref).abs().max())

    def check_flip(x, g):
        mask = flip.params(len(x), g)
        ref = torch.stack([TF.horizontal_flip(x[i]) if mask[i] else x[i] for i in range(len(x))])
        return float((flip.apply(x, mask) - ref).abs().max())

    def check_affine(x, g):
        angle, shift, scale = affine.params(len(x), h, w, g)
        ref = torch.stack([TF.affine(x[i], angle=float(angle[i]), translate=[int(shift[i, 0]), int(shift[i, 1])], scale=float(scale[i]),
                                     shear=[0.0, 0.0], interpolation=v2.InterpolationMode.BILINEAR) for i in range(len(x))])
        return float((affine.apply(x, angle, shift, scale) - ref).abs().max())

    return [
        ("crop:4", v2.RandomCrop((h, w), padding=4), crop, check_crop),
        ("flip", v2.RandomHorizontalFlip(0.5), flip, check_flip),
        ("affine:10", v2.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1), interpolation=v2.InterpolationMode.BILINEAR),
         affine, check_affine),
    ]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def loader_epochs(batch: int, n: int = 12_800) -> list[tuple[str, float]]:
    """Seconds for one epoch of :class:`TensorLoader` over ``n`` uint8 28x28 images: no
    augmentation, ``[crop, flip]`` vectorised, the same two as v2 specs (called per image)."""
    from dnnkit.data import TensorLoader, build_augment

    x, y = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8), torch.arange(n) % 10
    v2_specs = [{"_target_": "torchvision.transforms.v2.RandomCrop", "size": 28, "padding": 4},
                {"_target_": "torchvision.transforms.v2.RandomHorizontalFlip"}]
    out = []
    for name, spec in (("none", None), ("[crop, flip] vectorised", ["crop", "flip"]), ("[crop, flip] v2 per image", v2_specs)):
        loader = TensorLoader(x, y, batch, shuffle=True, augment=build_augment(spec))
        start = time.perf_counter()
        for _ in loader:
            pass
        out.append((name, time.perf_counter() - start))
    return out


def main(argv: list[str] | None = None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape in ((1, 28, 28), (3, 32, 32)):
        x = torch.rand(args.batch, *shape)
        for name, transform, op, check in cases(*shape[1:]):
            g = torch.Generator().manual_seed(0)
            diff = check(x, g)
            slow = timed(lambda t=transform, x=x: per_image(t, x), args.repeats)
            fast = timed(lambda op=op, x=x, g=g: op(x, g), args.repeats)
            rows.append(("x".join(map(str, shape)), name, slow, fast, slow / fast, diff))
    print(f"batch {args.batch}, {torch.get_num_threads()} threads, ms per batch (median of {args.repeats})")
    print(f"{'images':8} {'transform':10} {'v2/image':>9} {'vectorised':>10} {'speed-up':>8} {'max |diff| vs v2':>17}")
    for images, name, slow, fast, ratio, diff in rows:
        print(f"{images:8} {name:10} {slow:9.2f} {fast:10.2f} {ratio:7.1f}x {diff:17.2g}")
    print(f"\none loader epoch, 12,800 uint8 1x28x28 images in batches of {args.batch}:")
    for name, seconds in loader_epochs(args.batch):
        print(f"  {name:26} {seconds:6.2f} s")
    return rows


if __name__ == "__main__":
    main()
