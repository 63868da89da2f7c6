"""``+recipe=transfer_folder``: a CNN source on classes 0-4 of an image folder, its conv layers
reused for classes 5-9 frozen (cached), partly unfrozen, and against scratch. In process on a
synthetic digits folder (tiny); on a folder of real MNIST digits through the CLI (slow)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from dnnkit.data.idx import read_idx
from dnnkit.nn import load_inference_model
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import compose_config
from tests.probes import cli, cli_env
from tests.test_folder_cli import digits_folder

B_STAGES = ["frozen", "partly_unfrozen", "scratch"]


def one_epoch(batches: int) -> list[str]:
    """Every stage 1 epoch of ``batches`` batches, one seed."""
    limits = [f"+trainer.limit_train_batches={batches}", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]
    return ["seeds=[0]", "trainer.max_epochs=1", *[f"stages.{s}.trainer.max_epochs=1" for s in B_STAGES],
            *limits, "trainer.enable_progress_bar=false", "data.num_workers=0"]


def test_frozen_partly_unfrozen_and_scratch_on_an_image_folder(tmp_path, capsys):
    root = digits_folder(tmp_path / "digits", n=600)
    cfg = compose_config(["+recipe=transfer_folder", f"data.root={root}", "data.val_size=0.2", *one_epoch(3)])
    results = run_recipe(cfg, tmp_path / "run")
    assert [r.stage for r in results] == ["A", *B_STAGES]
    out = capsys.readouterr().out
    assert "caching the outputs of model.conv1, model.conv2" in out  # frozen: both convs are the cached bottom
    assert "caching the outputs of model.conv1: the upper layers" in out  # partly unfrozen: conv1 only
    a, frozen, partly, scratch = (read_state_dict(r.best_checkpoint) for r in results)
    convs = [k for k in a if k.startswith("model.conv")]
    assert all(torch.equal(a[k], frozen[k]) for k in convs)  # reused and frozen: weights and BN statistics
    conv1 = [k for k in convs if k.startswith("model.conv1.")]
    assert all(torch.equal(a[k], partly[k]) for k in conv1)
    assert not torch.equal(a["model.conv2.conv.weight"], partly["model.conv2.conv.weight"])  # fine-tuned
    assert not torch.equal(a["model.conv1.conv.weight"], scratch["model.conv1.conv.weight"])
    assert frozen["model.output.weight"].shape == (5, 64)  # classes 5-9 under a new top
    table = (tmp_path / "run" / "results.md").read_text()
    assert all(f"| {stage} |" in table for stage in ["A", *B_STAGES])
    model = load_inference_model(tmp_path / "run" / "frozen" / "model.pt")  # exported from images, not features
    program = torch.export.load(str(tmp_path / "run" / "frozen" / "model.pt2")).module()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert (model(x) - program(x)).abs().max() <= 1e-5


def mnist_folder(data_dir: Path, root: Path, n: int) -> Path:
    """The first ``n`` MNIST training images as ``root/<digit>/<i>.png``."""
    images = read_idx(next((data_dir / "mnist").glob("train-images-idx3-ubyte*")))[:n]
    labels = read_idx(next((data_dir / "mnist").glob("train-labels-idx1-ubyte*")))[:n]
    for i, (x, y) in enumerate(zip(images, labels)):
        folder = root / str(int(y))
        folder.mkdir(parents=True, exist_ok=True)
        write_png(x.unsqueeze(0), str(folder / f"{i:05d}.png"))
    return root


@pytest.mark.slow
@pytest.mark.data
def test_transfer_folder_on_real_mnist_digits(real_data_dir, tmp_path):
    """3,000 real digits: the CLI prints the table of the three B stages, each stage's results
    saved; reused conv features from 0-4 beat scratch on 5-9 from 20 images per digit."""
    root = mnist_folder(real_data_dir, tmp_path / "digits", 3000)
    run_dir = tmp_path / "run"
    proc = subprocess.run(cli("+recipe=transfer_folder", f"data.root={root}", "seeds=[0,1]", "trainer.max_epochs=2",
                              *[f"stages.{s}.trainer.max_epochs=15" for s in B_STAGES],
                              "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"),
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transfer_folder: results" in proc.stdout
    rows = json.loads((run_dir / "results.json").read_text())
    by_stage: dict[str, list[float]] = {}
    for row in rows["runs"] if isinstance(rows, dict) else rows:
        by_stage.setdefault(row["stage"], []).append(row["metrics"]["test/acc"])
    assert sorted(by_stage) == sorted(["A", *B_STAGES]) and all(len(by_stage[s]) == 2 for s in B_STAGES)
    mean = {s: sum(v) / len(v) for s, v in by_stage.items()}
    assert mean["frozen"] > mean["scratch"] and mean["partly_unfrozen"] > mean["scratch"], mean
