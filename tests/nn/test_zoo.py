"""Model zoo: torchvision backbones with weights files the tests write themselves (no network)."""

import lightning as L
import pytest
import torch
import torchvision

from dnnkit import Classifier
from dnnkit.callbacks import LayerFreezing
from dnnkit.errors import DnnkitError
from dnnkit.nn import freeze
from dnnkit.nn.zoo import ZooNet


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(0)
    source = torchvision.models.resnet18()  # 1,000-class head, as a downloaded file would have
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(source.state_dict(), path)
    return path, source


def test_weights_file_loads_and_head_is_replaced(resnet_file):
    path, source = resnet_file
    net = ZooNet("resnet18", n_outputs=10, weights=str(path))
    for key, tensor in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(net.backbone.state_dict()[key], tensor), key
    assert net.backbone.fc.out_features == 10 and net.adapter.normalize
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_freeze_by_torchvision_names(resnet_file):
    net = ZooNet("resnet18", n_outputs=10, weights=str(resnet_file[0]))
    frozen = freeze(net, "backbone.(conv1|bn1|layer[12])")
    assert list(frozen) == ["backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2"]
    assert not net.backbone.layer2[1].conv2.weight.requires_grad and net.backbone.layer3[0].conv1.weight.requires_grad


def test_mobilenet_on_28x28():
    net = ZooNet("mobilenet_v3_small", n_outputs=2)
    assert net.head == "classifier.3" and net(torch.rand(2, 1, 28, 28)).shape == (2, 2)


def test_googlenet_gives_logits_in_training_too():
    net = ZooNet("googlenet", n_outputs=3, input_size=64).train()
    out = net(torch.rand(2, 1, 28, 28))  # was a GoogLeNetOutputs namedtuple with 1000-way aux heads
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3) and net.backbone.aux1 is None


def test_bad_names_and_files(tmp_path):
    with pytest.raises(DnnkitError, match="unknown torchvision model 'resnet19'; valid: .*resnet18"):
        ZooNet("resnet19")
    with pytest.raises(DnnkitError, match="unknown resnet18 weights 'IMAGENET9K'; valid: IMAGENET1K_V1"):
        ZooNet("resnet18", weights="IMAGENET9K")
    with pytest.raises(DnnkitError, match="does not exist"):
        ZooNet("resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(DnnkitError, match="does not fit this backbone: missing \\[\\], unexpected \\['layer1.2"):
        ZooNet("resnet18", weights=str(tmp_path / "r34.pth"))


@pytest.mark.data
@pytest.mark.slow
def test_zoo_trains_one_epoch_on_fashion_mnist(real_data_dir, resnet_file, tmp_path):
    from dnnkit.data import MNISTDataModule

    L.seed_everything(0)
    dm = MNISTDataModule("fashion_mnist", n_per_class=30, val_size=500, batch_size=50, eval_batch_size=250)
    net = Classifier(ZooNet("resnet18", n_outputs=10, weights=str(resnet_file[0])))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1, callbacks=[LayerFreezing(frozen="backbone.(conv1|bn1|layer[12])", verbose=False)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        limit_val_batches=1,
    )
    trainer.fit(net, dm)
    after = net.state_dict()
    frozen = [k for k in before if k.startswith(("model.backbone.layer1", "model.backbone.layer2", "model.backbone.bn1"))]
    assert any("running_mean" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["model.backbone.fc.weight"], after["model.backbone.fc.weight"])
    assert not torch.equal(before["model.backbone.layer4.1.bn2.running_mean"], after["model.backbone.layer4.1.bn2.running_mean"])
    assert trainer.callback_metrics["val/acc"] > 0.2  # 10 classes, 300 images, one epoch


STANDALONE = """
import sys, torch
from dnnkit.nn import load_inference_model
model = load_inference_model(sys.argv[1])
torch.save(model(torch.load(sys.argv[2])).detach(), sys.argv[3])
print(type(model).__name__, model.inference_meta["data"]["name"])
"""


@pytest.mark.slow
def test_exported_zoo_model_is_standalone_after_its_weights_file_is_gone(fake_data, resnet_file, tmp_path):
    """Trained from a local weights file, the stage's model.pt holds every weight: it loads in a fresh
    process with that file deleted, folded (every BatchNorm of the ResNet), and predicts as the checkpoint does."""
    import subprocess
    import sys

    from dnnkit.nn import load_inference_model
    from dnnkit.nn.surgery import read_state_dict
    from dnnkit.runner import run_recipe
    from tests.conftest import FAST, compose_config
    from tests.probes import cli_env

    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(resnet_file[0].read_bytes())
    cfg = compose_config(["model=zoo", f"model.weights={weights}", *FAST, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                          "data.batch_size=16", "data.eval_batch_size=32", "test=false"])
    result = run_recipe(cfg, tmp_path / "run")[0]
    stage = tmp_path / "run" / "train"
    saved = torch.load(stage / "model.pt", weights_only=True)
    assert saved["config"]["weights"] is None and saved["config"]["normalize"] is True  # no path, the file's normalisation kept
    assert not any("bn" in k for k in saved["state_dict"]) and "backbone.conv1.bias" in saved["state_dict"]
    trained = ZooNet("resnet18", n_outputs=10, normalize=True)
    trained.load_state_dict({k.removeprefix("model."): v for k, v in read_state_dict(result.best_checkpoint).items()})
    weights.unlink()
    x = torch.rand(6, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", STANDALONE, str(stage / "model.pt"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ZooNet", "mnist"]
    with torch.no_grad():
        expected = trained.eval()(x)
        assert (torch.load(tmp_path / "y.pt") - expected).abs().max() <= 1e-5
        assert (load_inference_model(stage / "model.pt")(x) - expected).abs().max() <= 1e-5
        assert (torch.export.load(str(stage / "model.pt2")).module()(x) - expected).abs().max() <= 1e-5  # still exports
