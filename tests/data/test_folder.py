"""``data=folder`` (dnnkit/data/folder.py, image_files.py, image_cache.py) on small PNG/JPEG
folders written here: layouts, splits and classes, channels and sizes, every bad input, and the
decode cache (hit, miss, stale, damaged, read-only data folder)."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png, write_png

from dnnkit.data import image_cache
from dnnkit.data.folder import ImageFolderDataModule
from dnnkit.data.image_files import BadImage, decode, png_problem, probe, scan_folder
from dnnkit.errors import DnnkitError

CLASSES = ("cat", "dog", "emu")


def image(c: int, i: int, channels: int = 1, size: tuple[int, int] = (8, 8)) -> torch.Tensor:
    """A noisy image whose first pixel says its class and number: 16 * class + i % 16."""
    g = torch.Generator().manual_seed(1000 * c + i)
    x = torch.randint(0, 256, (channels, *size), dtype=torch.uint8, generator=g)
    x[:, 0, 0] = 16 * c + i % 16
    return x


def write_folder(root: Path, n: int = 10, classes=CLASSES, channels: int = 1, size=(8, 8), start: int = 0) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            write_png(image(c, i, channels, size), str(root / name / f"{i:03d}.png"))
    return root


def folder_dm(root: Path, **kw) -> ImageFolderDataModule:
    options = {"batch_size": 4, "val_size": 5, "test_size": 5, "num_workers": 0, **kw}
    return ImageFolderDataModule(str(root), **options)


def marks(x: torch.Tensor) -> torch.Tensor:
    """The first pixel of each float image in [0, 1] back as its 0..255 value."""
    return (x[:, 0, 0, 0] * 255).round().long()


# ----------------------------------------------------------------------------- layouts, splits, classes


def test_class_folders_are_sorted_and_hidden_or_other_files_are_skipped(tmp_path):
    root = write_folder(tmp_path / "d", n=3, classes=("b", "a"))
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_text("x")
    (root / "b" / "sub").mkdir()
    write_png(image(0, 7), str(root / "b" / "sub" / "deep.png"))  # images in a class folder's subfolders count
    tree = scan_folder(root)
    assert tree.class_names == ["a", "b"] and tree.layout == "classes"
    assert [f.name for f in tree.files["all"]] == ["000.png", "001.png", "002.png", "000.png", "001.png", "002.png", "deep.png"]
    assert tree.labels["all"] == [0, 0, 0, 1, 1, 1, 1]


def test_one_pool_is_split_seeded_and_every_label_matches_its_image(tmp_path):
    root = write_folder(tmp_path / "d", n=10)
    dm = folder_dm(root)
    dm.setup()
    sizes = {s: len(dm.split(s)[1]) for s in ("train", "val", "test")}
    assert sizes == {"train": 20, "val": 5, "test": 5} and dm.train_size() == 20
    seen = []
    for split in ("train", "val", "test"):
        for x, y in (dm.train_dataloader() if split == "train" else dm.val_dataloader() if split == "val" else dm.test_dataloader()):
            assert torch.equal(marks(x) // 16, y)  # the image of class c has first pixel 16c + i
            seen += (marks(x)).tolist()
    assert len(set(seen)) == 30  # every image once, in exactly one split
    other = folder_dm(root, seed=1)
    other.setup()
    assert torch.equal(marks(other.split("test")[0].float() / 255), marks(dm.split("test")[0].float() / 255))  # test: seed-independent
    assert not torch.equal(other.split("val")[1], dm.split("val")[1]) or not torch.equal(other.split("train")[1], dm.split("train")[1])


def test_train_val_test_folders_are_the_splits(tmp_path):
    root = tmp_path / "d"
    write_folder(root / "train", n=8)
    write_folder(root / "val", n=3, start=8)
    write_folder(root / "test", n=2, start=11)
    dm = folder_dm(root, val_size=0.5)  # unused: val/ is the validation split
    dm.setup()
    assert {s: len(dm.split(s)[1]) for s in ("train", "val", "test")} == {"train": 24, "val": 9, "test": 6}
    assert sorted(set((marks(dm.split("val")[0].float() / 255) % 16).tolist())) == [8, 9, 10]
    assert sorted(set((marks(dm.split("test")[0].float() / 255) % 16).tolist())) == [11, 12]


def test_a_layout_without_test_holds_out_test_size(tmp_path):
    root = tmp_path / "d"
    write_folder(root / "train", n=8)
    write_folder(root / "val", n=2, start=8)
    dm = folder_dm(root, test_size=6)
    dm.setup()
    assert {s: len(dm.split(s)[1]) for s in ("train", "val", "test")} == {"train": 18, "val": 6, "test": 6}


def test_classes_pick_folders_by_index_and_remap(tmp_path, caplog):
    dm = folder_dm(write_folder(tmp_path / "d", n=10), classes=[2, 0], val_size=2, test_size=2)
    assert dm.class_names == ["emu", "cat"] and dm.num_classes == 2
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        dm.setup()
    assert "2 (emu) -> 0, 0 (cat) -> 1" in caplog.text
    x, y = dm.split("train")
    assert torch.equal(torch.where(marks(x.float() / 255) // 16 == 2, 0, 1), y)


# ----------------------------------------------------------------------------- channels, sizes, formats


def test_mixed_grayscale_and_colour_become_rgb(tmp_path, caplog):
    root = write_folder(tmp_path / "d", n=4, classes=("a", "b"))
    write_png(image(0, 9, channels=3), str(root / "a" / "colour.png"))
    dm = folder_dm(root, val_size=1, test_size=1)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        assert dm.input_shape() == (3, 8, 8)
    assert "grayscale and colour images mixed: all are converted to RGB" in caplog.text
    dm.setup()
    assert dm.split("train")[0].shape[1:] == (3, 8, 8)
    assert folder_dm(root, channels=1).input_shape() == (1, 8, 8)


def test_jpeg_and_png_decode_to_the_asked_channels(tmp_path):
    rgb = image(0, 1, channels=3, size=(9, 7))
    smooth = (torch.arange(9).view(9, 1) * 20 + torch.arange(7) * 5 + torch.tensor([0, 30, 60]).view(3, 1, 1)).to(torch.uint8)
    (tmp_path / "b.jpg").write_bytes(bytes(encode_jpeg(smooth, quality=95).numpy()))
    (tmp_path / "a.jpg").write_bytes(bytes(encode_jpeg(rgb, quality=95).numpy()))
    (tmp_path / "a.png").write_bytes(bytes(encode_png(rgb).numpy()))
    assert probe(tmp_path / "a.jpg") == probe(tmp_path / "a.png") == (3, 9, 7)
    assert torch.equal(decode(tmp_path / "a.png", 3), rgb)
    assert decode(tmp_path / "a.jpg", 1).shape == (1, 9, 7)
    assert (decode(tmp_path / "b.jpg", 3).float() - smooth.float()).abs().mean() < 3  # lossy, but the same picture


def test_mixed_sizes_name_two_files_unless_image_size_resizes_them(tmp_path):
    root = write_folder(tmp_path / "d", n=3, classes=("a", "b"))
    write_png(image(1, 5, size=(12, 10)), str(root / "b" / "big.png"))
    with pytest.raises(DnnkitError, match=r"different sizes \(a/000.png is 8x8, b/big.png is 10x12; width x height\): set data.image_size"):
        folder_dm(root).input_shape()
    dm = folder_dm(root, image_size=[6, 5], val_size=1, test_size=1)
    assert dm.input_shape() == (1, 6, 5)
    dm.setup()
    assert dm.split("train")[0].shape[1:] == (1, 6, 5)


# ----------------------------------------------------------------------------- bad input


def _corrupt_but_crc_valid(path: Path) -> None:
    """Flip a byte of the compressed pixels and fix the chunk's CRC: libpng would fail mid-rows
    (which crashes torchvision 0.29's decode_png); dnnkit's own check must catch it first."""
    data = bytearray(path.read_bytes())
    pos = 8
    while data[pos + 4 : pos + 8] != b"IDAT":
        pos += 12 + struct.unpack_from(">I", data, pos)[0]
    (n,) = struct.unpack_from(">I", data, pos)
    data[pos + 8 + n // 2] ^= 0xFF
    struct.pack_into(">I", data, pos + 8 + n, zlib.crc32(bytes(data[pos + 4 : pos + 8 + n])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case, match", [
    ("missing", r"data.root='.*nowhere' does not exist"),
    ("empty", r"data.root='.*d': .*d is empty; expected root/<class>/\*.png\|jpg or root/train\|val\|test"),
    ("only_files", r"holds no class folders, only files \('x.png'\)"),
    ("empty_class", r"class folder .*d/dog holds no images \(.png, .jpg, .jpeg\)"),
    ("one_class", r"holds one class folder \('cat'\); a classifier needs at least two"),
    ("val_without_train", r"has val/ but no train/ folder"),
    ("val_class_not_in_train", r"val/ has class folder\(s\) \['owl'\] that train/ lacks"),
    ("mixed_layouts", r"mixes the layouts: train/ beside other folders \['dog'\]"),
    ("no_root", r"data=folder needs data.root=PATH"),
    ("channels", r"data.channels must be null \(what the images are\), 1 \(grayscale\) or 3 \(RGB\), got 2"),
    ("image_size", r"data.image_size must be null, a positive integer or \[height, width\], got \[0, 4\]"),
])
def test_bad_folders_and_options_are_one_error(tmp_path, case, match):
    root = tmp_path / "d"
    root.mkdir()
    kw = {}
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "only_files":
        write_png(image(0, 0), str(root / "x.png"))
    elif case == "empty_class":
        write_folder(root, n=2)
        for f in (root / "dog").iterdir():
            f.unlink()
        (root / "dog" / "readme.txt").write_text("no images here")
    elif case == "one_class":
        write_folder(root, n=2, classes=("cat",))
    elif case == "val_without_train":
        write_folder(root / "val", n=2)
    elif case == "val_class_not_in_train":
        write_folder(root / "train", n=2)
        write_folder(root / "val", n=2, classes=("cat", "owl"))
    elif case == "mixed_layouts":
        write_folder(root / "train", n=2)
        write_folder(root, n=2, classes=("dog",))
    elif case == "no_root":
        root = None
    elif case in ("channels", "image_size"):
        write_folder(root, n=2)
        kw = {"channels": 2} if case == "channels" else {"image_size": [0, 4]}
    with pytest.raises(DnnkitError, match=match) as err:
        dm = ImageFolderDataModule(None if root is None else str(root), **kw)
        dm.input_shape()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "not_an_image", "crc_valid_zlib", "bit_flip"])
def test_a_corrupt_image_is_named_or_skipped_and_counted(tmp_path, caplog, damage):
    root = write_folder(tmp_path / "d", n=6)
    bad = root / "dog" / "003.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:30])
    elif damage == "not_an_image":
        bad.write_text("<html>404</html>")
    elif damage == "crc_valid_zlib":
        _corrupt_but_crc_valid(bad)
    else:
        data = bytearray(bad.read_bytes())
        data[60] ^= 0x01
        bad.write_bytes(bytes(data))
    with pytest.raises(BadImage, match=rf"cannot (read|decode) image {bad}: .*set data.skip_bad=true"):
        folder_dm(root).setup()
    assert not (root / ".dnnkit-cache").exists() or not list((root / ".dnnkit-cache").iterdir())  # nothing cached
    dm = folder_dm(root, skip_bad=True)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        dm.setup()
    assert "1 unreadable image(s) skipped (data.skip_bad=true)" in caplog.text
    assert sum(len(dm.split(s)[1]) for s in ("train", "val", "test")) == 17
    assert not (marks(dm.split("train")[0].float() / 255) == 16 + 3).any()  # dog 003 is out


def test_png_check_catches_what_would_crash_libpng():
    good = bytes(encode_png(image(0, 1)).numpy())
    assert png_problem(good) is None
    rows = zlib.decompress(good[41 : 41 + struct.unpack_from(">I", good, 33)[0]])
    bad_filter = bytearray(rows)
    bad_filter[9] = 7  # the filter byte of row 1 (rows are 1 + 8 bytes)
    body = zlib.compress(bytes(bad_filter))
    chunk = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    crafted = good[:33] + chunk + good[33 + 12 + struct.unpack_from(">I", good, 33)[0]:]
    assert png_problem(crafted) == "its rows are corrupt (bad length or filter byte)"


# ----------------------------------------------------------------------------- the decode cache


def _cache_of(root: Path) -> Path:
    files = list((root / ".dnnkit-cache").glob("images-*.pt"))
    assert len(files) == 1, files
    return files[0]


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the cache should have served")
    monkeypatch.setattr(image_cache, "decode_files", refuse)


def test_cache_miss_writes_and_a_hit_decodes_nothing(tmp_path, monkeypatch, caplog):
    root = write_folder(tmp_path / "d", n=6)
    first = folder_dm(root)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        first.setup()
    cache = _cache_of(root)
    assert f"image cache written: {cache}" in caplog.text
    _no_decoding(monkeypatch)
    monkeypatch.setattr("dnnkit.data.folder.probe_all", lambda *a: pytest.fail("headers read despite the cache"))
    caplog.clear()
    second = folder_dm(root)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        assert second.input_shape() == (1, 8, 8)  # from the cache's header
        second.setup()
    assert f"loaded from {cache}" in caplog.text
    for split in ("train", "val", "test"):
        assert torch.equal(first.split(split)[0], second.split(split)[0])


@pytest.mark.parametrize("change", ["touched", "added", "removed"])
def test_a_stale_cache_is_rebuilt(tmp_path, caplog, change):
    root = write_folder(tmp_path / "d", n=6)
    folder_dm(root).setup()
    old = _cache_of(root).read_bytes()
    if change == "touched":
        f = root / "cat" / "000.png"
        write_png(image(0, 40), str(f))  # same name and size, new pixels and mtime
    elif change == "added":
        write_png(image(1, 40), str(root / "dog" / "new.png"))
    elif change == "removed":
        (root / "emu" / "005.png").unlink()
    dm = folder_dm(root)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        dm.setup()
    assert "stale: the folder's files or the decode options changed" in caplog.text
    assert _cache_of(root).read_bytes() != old
    total = sum(len(dm.split(s)[1]) for s in ("train", "val", "test"))
    assert total == {"added": 19, "removed": 17}.get(change, 18)
    if change == "touched":
        assert (marks(torch.cat([dm.split(s)[0] for s in ("train", "val", "test")]).float() / 255) == 40 % 16).any()


def test_other_decode_options_get_their_own_cache(tmp_path):
    root = write_folder(tmp_path / "d", n=6)
    folder_dm(root).setup()
    folder_dm(root, image_size=4).setup()
    assert len(list((root / ".dnnkit-cache").glob("images-*.pt"))) == 2


@pytest.mark.parametrize("damage", ["cut", "pixels", "garbage"])
def test_a_damaged_cache_is_ignored_and_rebuilt(tmp_path, caplog, damage):
    root = write_folder(tmp_path / "d", n=6)
    good = folder_dm(root)
    good.setup()
    cache = _cache_of(root)
    data = bytearray(cache.read_bytes())
    if damage == "cut":
        data = data[: len(data) // 2]
    elif damage == "pixels":  # the pixel payload is stored as is: find a known image's bytes and flip one
        raw = bytes(good.split("train")[0][0].flatten().numpy())
        at = data.find(raw)
        assert at > 0
        data[at + 5] ^= 0xFF
    else:
        data = bytearray(b"not a torch file at all")
    cache.write_bytes(bytes(data))
    again = folder_dm(root)
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        again.setup()
    assert ("fail the CRC check" if damage == "pixels" else "is unreadable") in caplog.text
    assert torch.equal(again.split("train")[0], good.split("train")[0])
    assert folder_dm(root).input_shape() == (1, 8, 8)
    assert read_back_ok(cache)


def read_back_ok(cache: Path) -> bool:
    blob = torch.load(cache, weights_only=True)
    return image_cache.checksum(blob["images"]) == blob["crc"]


def test_a_read_only_data_folder_caches_in_the_user_cache_dir(tmp_path, monkeypatch, caplog):
    root = write_folder(tmp_path / "d", n=6)
    (root / ".dnnkit-cache").write_text("a file where the cache folder would go: it cannot be created")
    monkeypatch.setenv("DNNKIT_CACHE_DIR", str(tmp_path / "user-cache"))
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        folder_dm(root).setup()
    cached = list((tmp_path / "user-cache" / "images").glob("images-*.pt"))
    assert len(cached) == 1 and f"image cache written: {cached[0]}" in caplog.text
    _no_decoding(monkeypatch)
    folder_dm(root).setup()  # found there next time


def test_cache_false_writes_nothing(tmp_path):
    root = write_folder(tmp_path / "d", n=4)
    folder_dm(root, cache=False, val_size=2, test_size=2).setup()
    assert not (root / ".dnnkit-cache").exists()
