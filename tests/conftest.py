"""Shared fixtures: small synthetic IDX datasets, so unit tests never need the real sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dnnkit.data.datamodule import load_arrays
from dnnkit.data.discovery import FILES
from dnnkit.data.idx import write_idx
from dnnkit.stages import config_dir

REAL_DATA = os.environ.get("DNNKIT_DATA_DIR")
# --doctest-modules (pyproject.toml) would import each conftest.py once more, as a module named
# "conftest" that the other one already is, and fail; they hold no docstring examples
collect_ignore = ["conftest.py", "bench/conftest.py"]


def make_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 28x28 uint8 images: class c lights up row band c, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, 28, 28), generator=g)
    for c in range(10):
        images[labels == c, 2 + 2 * c : 4 + 2 * c, 4:24] = 230
    return images.to(torch.uint8), labels.to(torch.uint8)


def write_fake_dataset(folder: Path, n_train: int = 1200, n_test: int = 300, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = make_images(n, seed)
        write_idx(folder / (FILES[f"{split}_images"] + suffix), images)
        write_idx(folder / (FILES[f"{split}_labels"] + suffix), labels)
    return folder


@pytest.fixture
def fake_data(tmp_path, monkeypatch) -> Path:
    """A DNNKIT_DATA_DIR with mnist/ and fashion-mnist/ subfolders of synthetic data."""
    root = tmp_path / "data"
    write_fake_dataset(root / "mnist")
    write_fake_dataset(root / "fashion-mnist")
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(root))
    monkeypatch.setenv("DNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    load_arrays.cache_clear()
    yield root
    load_arrays.cache_clear()


@pytest.fixture
def real_data_dir(monkeypatch) -> Path:
    """The real MNIST/Fashion-MNIST, or skip with the reason."""
    if not REAL_DATA or not Path(REAL_DATA).is_dir():
        pytest.skip("real data not found: set DNNKIT_DATA_DIR to a folder with mnist/ and fashion-mnist/")
    load_arrays.cache_clear()
    return Path(REAL_DATA)


# Overrides that make any recipe tiny: few batches, 1 epoch, no bar.
FAST = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "data.val_size=200",
]


# recipes for a folder of your own, composed in tests on a folder of 10 PNGs (one per digit) unless
# a test gives a larger one: the path as a command line gives it, relative to the repository
FOLDER_RECIPES = {"transfer_folder"}


def recipe_overrides(recipe: str, root: str | Path = "tests/fixtures/digits") -> list[str]:
    """``["+recipe=NAME"]``, with ``data.root=...`` for a recipe of :data:`FOLDER_RECIPES`."""
    return [f"+recipe={recipe}", *([f"data.root={root}"] if recipe in FOLDER_RECIPES else [])]


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides or [])


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Benchmarks set torch's thread count; a test after them must not inherit it (bit-exact
    comparisons between an in-process run and a subprocess depend on it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_loggers():
    """Benchmarks quiet the ``dnnkit`` and Lightning loggers (bench.common.quiet); a test after
    them must still see dnnkit's lines on stdout."""
    import logging

    names = ("dnnkit", "lightning", "lightning.pytorch", "lightning.fabric")
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers
