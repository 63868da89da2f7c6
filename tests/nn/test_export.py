"""Inference models: save folded, load with weights_only=True (or torch.export), same predictions;
and every classifier recipe stage exports one that reproduces its test accuracy in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP, load_inference_model, save_inference_model
from dnnkit.nn.export import build_model
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config
from tests.nn.test_fold import randomize_bn_

CONFIG = {"_target_": "dnnkit.nn.MLP", "hidden": [40, 30], "batch_norm": True, "output_batch_norm": True}


def test_saved_model_loads_with_weights_only_and_predicts_the_same(tmp_path):
    net = randomize_bn_(build_model(CONFIG)).eval()
    written = save_inference_model(net, tmp_path, CONFIG, torch.zeros(5, 1, 28, 28), meta={"classes": [0, 1]})
    assert sorted(written) == ["model.pt", "model.pt2"]
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["config"] == CONFIG and "hidden1.linear.bias" in raw["state_dict"]
    assert not any(".bn." in k for k in raw["state_dict"])
    fast = load_inference_model(tmp_path / "model.pt")
    assert fast.inference_meta == {"classes": [0, 1]} and not fast.training
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    for batch in (1, 7):
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            expected = net(x)
            assert (fast(x) - expected).abs().max() <= 1e-5
            assert (program(x) - expected).abs().max() <= 1e-5
    assert isinstance(net.hidden1.bn, torch.nn.BatchNorm1d)  # the saved model is untouched


def test_bad_files_and_configs_are_one_message(tmp_path):
    with pytest.raises(DnnkitError, match="does not exist"):
        load_inference_model(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(DnnkitError, match="is not a dnnkit inference model"):
        load_inference_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(DnnkitError, match="with weights_only=True"):
        load_inference_model(tmp_path / "junk.pt")
    with pytest.raises(DnnkitError, match="must name an nn.Module class, got 'os.system'"):
        build_model({"_target_": "os.system", "command": "echo hi"})
    with pytest.raises(DnnkitError, match="must be JSON-able"):
        save_inference_model(MLP(), tmp_path, {"_target_": "dnnkit.nn.MLP", "hidden": (torch.zeros(1),)})


PREDICT = textwrap.dedent(
    """
    import json, sys, torch
    from dnnkit.data import MNISTDataModule
    from dnnkit.nn import load_inference_model
    stage = sys.argv[1]
    raw = torch.load(f"{stage}/model.pt", weights_only=True)  # plain tensors and JSON-able values
    model = load_inference_model(f"{stage}/model.pt")
    program = torch.export.load(f"{stage}/model.pt2").module()
    data = {k: v for k, v in raw["meta"]["data"].items() if k != "_target_"}
    images, labels = MNISTDataModule(**data).split("test")
    x = images.unsqueeze(1).float() / 255
    with torch.inference_mode():
        acc = [(m(x).argmax(1) == labels).float().mean().item() for m in (model, program)]
    print(json.dumps({"acc": acc, "n": len(labels)}))
    """
)


@pytest.mark.slow
def test_recipe_exports_a_model_that_reproduces_test_accuracy_in_a_fresh_process(fake_data, tmp_path):
    results = run_recipe(compose_config(["+recipe=mnist_bn", *FAST]), tmp_path / "run")
    stage = tmp_path / "run" / "mnist_bn"
    assert (stage / "model.pt").is_file() and (stage / "model.pt2").is_file()
    recorded = json.loads((stage / "result.json").read_text())["metrics"]["test/acc"]
    assert recorded == results[0].metrics["test/acc"]
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, str(stage)], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 300  # the whole fake test set: FAST's 2 test batches of 1,000 cover it
    assert out["acc"] == [pytest.approx(recorded, abs=1e-6)] * 2


def test_export_false_writes_no_model(fake_data, tmp_path):
    run_recipe(compose_config([*FAST, "export=false"]), tmp_path / "run")
    assert not (tmp_path / "run" / "train" / "model.pt").exists()
