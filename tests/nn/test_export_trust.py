"""model.pt is input: only registered model classes are built (nothing imported by name), the
config cannot make the loader allocate what the file does not hold, and nothing is downloaded."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP, ZooNet, load_inference_model, save_inference_model


def crafted(path, config, state=None):
    torch.save({"format": "dnnkit.inference_model/1", "config": config, "state_dict": state or {}, "meta": {}}, path)
    return path


@pytest.mark.slow  # a fresh interpreter importing torch: ~5 s
def test_a_target_next_to_the_file_is_never_imported(tmp_path):
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('code ran')\nclass Net: pass\n")
    crafted(tmp_path / "model.pt", {"_target_": "evil.Net"})
    code = "import sys; sys.path.insert(0, '.'); from dnnkit.nn import load_inference_model; load_inference_model('model.pt')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode != 0 and "must name an nn.Module class, got 'evil.Net'" in proc.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow  # a fresh interpreter importing torch: ~5 s
def test_a_huge_config_fails_before_allocating(tmp_path):
    state = MLP(784, [8], 10).state_dict()
    crafted(tmp_path / "model.pt", {"_target_": "dnnkit.nn.MLP", "hidden": [60_000, 60_000]}, state)  # 14 GB if built
    code = textwrap.dedent("""
        import resource, sys
        from dnnkit.errors import DnnkitError
        from dnnkit.nn import load_inference_model
        try:
            load_inference_model('model.pt')
        except DnnkitError as err:
            print(err)
        print('maxrss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=os.environ.copy(), check=True)
    assert "the weights do not fit the saved config" in proc.stdout
    assert int(proc.stdout.split("maxrss_mb")[1]) < 2000  # the interpreter and torch, not 14 GB of weights


def test_zoo_model_is_standalone_and_loads_without_its_weights_file_or_a_download(tmp_path, monkeypatch):
    weights = tmp_path / "resnet18.pth"
    source = ZooNet("resnet18", n_outputs=10)
    torch.save(source.backbone.state_dict(), weights)  # a local weights file in torchvision's layout (head: 10 classes)
    net = ZooNet("resnet18", n_outputs=3, weights=str(weights)).eval()
    config = net.export_config({"_target_": "dnnkit.nn.ZooNet", "name": "resnet18", "n_outputs": 3, "weights": str(weights)})
    assert config["weights"] is None and config["normalize"] is True
    save_inference_model(net, tmp_path / "out", config)
    weights.unlink()

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    loaded = load_inference_model(tmp_path / "out" / "model.pt")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-4)
    # an older file that still names torchvision weights builds without them (they are in the file)
    crafted(tmp_path / "old.pt", {**config, "weights": "IMAGENET1K_V1", "normalize": None}, loaded.state_dict())
    assert load_inference_model(tmp_path / "old.pt").adapter.normalize


def test_a_file_without_a_state_dict_is_one_message(tmp_path):
    torch.save(
        {"format": "dnnkit.inference_model/1", "config": {"_target_": "dnnkit.nn.MLP"}, "state_dict": [1], "meta": {}}, tmp_path / "m.pt"
    )
    with pytest.raises(DnnkitError, match="holds no state_dict"):
        load_inference_model(tmp_path / "m.pt")


def test_pt2_does_not_embed_the_batch_its_example_input_was_cut_from(tmp_path):
    net = MLP(784, [30], 10).eval()
    batch = torch.rand(1000, 1, 28, 28)  # 3.1 MB
    save_inference_model(net, tmp_path, {"_target_": "dnnkit.nn.MLP", "hidden": [30]}, batch[:2])
    assert (tmp_path / "model.pt2").stat().st_size < 1_000_000
