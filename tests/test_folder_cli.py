"""``python -m dnnkit.train data=folder data.root=...`` end to end on a small PNG folder: an MLP
in memory (the decode cache written), a CNN streamed from the files by a worker, and a folder
that holds nothing usable (exit status 2, one line). In process, through ``run_recipe``: the
bad folders fail before anything trains and leave nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from torchvision.io import write_png

from dnnkit.errors import DnnkitError
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config, make_images
from tests.probes import cli, cli_env

QUICK = [*FAST[:-1], "data.val_size=0.2", "data.test_size=0.2", "data.num_workers=1"]


def digits_folder(root: Path, n: int = 400) -> Path:
    """``n`` learnable 28x28 images (tests.conftest.make_images) as ``root/digit<c>/<i>.png``."""
    images, labels = make_images(n, 0)
    for i, (x, y) in enumerate(zip(images, labels)):
        folder = root / f"digit{int(y)}"
        folder.mkdir(parents=True, exist_ok=True)
        write_png(x.unsqueeze(0), str(folder / f"{i:04d}.png"))
    return root


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=300)


@pytest.mark.slow  # spawns python -m dnnkit.train twice
def test_cli_trains_on_an_image_folder_and_refuses_an_empty_one(tmp_path):
    root = digits_folder(tmp_path / "digits")
    proc = run(["data=folder", f"data.root={root}", *QUICK, f"hydra.run.dir={tmp_path / 'mlp'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "folder digits: 400 images of 1x28x28 (306.2 KB decoded) in memory" in proc.stdout
    assert f"image cache written: {root / '.dnnkit-cache'}" in proc.stdout
    assert "train: results" in proc.stdout and (tmp_path / "mlp" / "train" / "model.pt").is_file()
    (tmp_path / "empty").mkdir()
    proc = run(["data=folder", f"data.root={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data.root='{tmp_path / 'empty'}': {tmp_path / 'empty'} is empty; expected root/<class>/*.png|jpg "
        "or root/train|val|test/<class>/*.png|jpg"
    ]


def test_a_cnn_trains_streamed_from_the_files(tmp_path, capsys):
    root = digits_folder(tmp_path / "digits", n=200)
    cfg = compose_config(["data=folder", f"data.root={root}", "data.in_memory=false", "model=cnn", "model.channels=[4]",
                          "model.hidden=[16]", *QUICK, "test=false", "export=false"])
    results = run_recipe(cfg, tmp_path / "run")
    assert results[0].epochs == 1 and 0.0 <= results[0].metrics["val/acc"] <= 1.0
    out = capsys.readouterr().out
    assert "folder digits: 200 images of 1x28x28 (153.1 KB decoded) streamed by 1 worker(s), data.in_memory=false" in out
    assert not (root / ".dnnkit-cache").exists()  # streaming decodes from the files; no cache is written


@pytest.mark.parametrize("make, match", [
    (lambda root: root.mkdir(), r"is empty; expected root/<class>"),
    (lambda root: (root / "a").mkdir(parents=True), r"class folder .*/a holds no images"),
    (None, r"data=folder needs data.root=PATH"),
])
def test_bad_folders_fail_before_training(fake_data, tmp_path, make, match):
    root = tmp_path / "mine"
    if make is not None:
        make(root)
    overrides = ["data=folder", *QUICK] + ([f"data.root={root}"] if make is not None else [])
    with pytest.raises(DnnkitError, match=match):
        run_recipe(compose_config(overrides), tmp_path / "run")  # no fall-back to $DNNKIT_DATA_DIR (fake_data set it)
    assert not (tmp_path / "run" / "train").exists()


def test_model_inputs_follow_the_folder(tmp_path):
    root = tmp_path / "rgb"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            write_png(make_images(1, i)[0].expand(3, 28, 28).contiguous()[:, :20, :24], str(root / c / f"{i}.png"))
    cfg = compose_config(["data=folder", f"data.root={root}", "model=cnn"])
    assert (cfg.model.in_channels, list(cfg.model.input_size)) == (3, [20, 24])
    assert compose_config(["data=folder", f"data.root={root}", "data.image_size=16"]).model.n_inputs == 3 * 16 * 16
