"""``python -m dnnkit.predict``: PNGs written from the test split get the classes the model gives
the test tensors; an .npz the same; images of another shape are one line unless resize=true;
inputs are scaled as the training loader scaled them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from dnnkit import cli, predict
from dnnkit.data import MNISTDataModule
from dnnkit.errors import DnnkitError
from dnnkit.nn import load_inference_model
from dnnkit.nn.export import build_model
from tests.test_evaluate import trained_run  # noqa: F401  (the shared session fixture)


def split_of(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    model = load_inference_model(run / "train" / "model.pt")
    data = {k: v for k, v in model.inference_meta["data"].items() if k != "_target_"}
    images, labels = MNISTDataModule(**data).split("test")
    return images, labels, model


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_of_pngs_gets_the_classes_of_the_test_tensors(trained_run, tmp_path):  # noqa: F811
    images, labels, model = split_of(trained_run)
    with torch.inference_mode():
        expected = model(images.unsqueeze(1).float() / 255).argmax(1)
    folder = tmp_path / "pngs"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        write_png(image.unsqueeze(0), str(folder / str(int(label)) / f"{i:04d}.png"))
    out = predict.main([str(trained_run / "train" / "model.pt"), str(folder), "top_k=3"])
    assert out == folder / "predictions.csv"
    got = rows(out)
    assert len(got) == len(images) and list(got[0]) == ["file", "class", "probability", "class_2", "probability_2",
                                                         "class_3", "probability_3"]
    by_file = {r["file"]: r for r in got}
    names = model.inference_meta["class_names"]
    for i, label in enumerate(labels.tolist()):
        row = by_file[f"{label}/{i:04d}.png"]
        assert row["class"] == names[expected[i]]
        assert float(row["probability"]) >= float(row["probability_2"]) >= float(row["probability_3"])

    array = tmp_path / "test.npz"
    np.savez(array, images=images.numpy(), labels=labels.numpy())
    from_npz = rows(predict.main([str(trained_run / "train"), str(array), f"out={tmp_path / 'npz'}", "top_k=1"]))
    assert [r["class"] for r in from_npz] == [names[c] for c in expected.tolist()]
    assert list(from_npz[0]) == ["file", "class", "probability"] and from_npz[5]["file"] == "test.npz[5]"
    np.savez(tmp_path / "floats.npz", x=images.numpy().astype(np.float32) / 255)  # floats in [0, 1]
    floats = rows(predict.main([str(trained_run / "train"), str(tmp_path / "floats.npz"), f"out={tmp_path / 'f'}"]))
    assert [r["class"] for r in floats] == [r["class"] for r in from_npz]


def test_another_size_or_channel_count_is_one_line_unless_resize(trained_run, tmp_path, capsys):  # noqa: F811
    images, _, model = split_of(trained_run)
    rgb = images[:1].repeat_interleave(2, 1).repeat_interleave(2, 2).expand(3, -1, -1).contiguous()  # 3x56x56
    write_png(rgb, str(tmp_path / "big.png"))
    argv = [str(trained_run / "train" / "model.pt"), str(tmp_path / "big.png")]
    with pytest.raises(DnnkitError, match=r"big.png is 3x56x56 \(channels x height x width\); the model takes 1x28x28: "
                                          r"pass resize=true"):
        predict.main(argv)
    [row] = rows(predict.main([*argv, "resize=true", "top_k=10"]))
    assert len(row) == 1 + 2 * 10 and (tmp_path / "predictions.csv").is_file()  # beside the image
    small = predict.fit_to(rgb.unsqueeze(0), (1, 28, 28), True, "big.png")
    assert small.shape == (1, 1, 28, 28) and small.dtype == torch.uint8
    with torch.inference_mode():
        p = model(small.float() / 255).softmax(1)[0]
    assert float(row["probability"]) == pytest.approx(float(p.max()), abs=1e-6)
    grey = predict.fit_to(images[:1].unsqueeze(1).expand(1, 3, 28, 28), (1, 28, 28), True, "rgb.png")  # R = G = B
    assert (grey.int() - images[:1].unsqueeze(1).int()).abs().max() <= 1  # the same grey, up to rounding


def test_bad_inputs_are_one_line_and_exit_status_2(trained_run, tmp_path, capsys):  # noqa: F811
    model = str(trained_run / "train" / "model.pt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 28, 28), np.uint8), b=np.zeros(2))
    np.savez(tmp_path / "ints.npz", images=np.zeros((2, 28, 28), np.int64))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cases = [
        ([model, str(tmp_path / "nothing.png")], "does not exist"),
        ([model, str(tmp_path / "empty")], "holds no image"),
        ([model, str(tmp_path / "notes.txt")], "is not an image"),
        ([model, str(tmp_path / "two.npz")], r"holds arrays \['a', 'b'\]: choose one with key=NAME"),
        ([model, str(tmp_path / "ints.npz")], "holds int64; give uint8 pixels or floats"),
        ([model, str(tmp_path / "broken.png")], "cannot read image"),
        ([model, str(tmp_path / "empty"), "top_k=0"], "top_k and batch_size must be positive"),
        ([model, str(tmp_path / "empty"), "resize=maybe"], "resize=maybe must be true or false"),
        ([str(tmp_path / "nope.pt"), str(tmp_path / "empty")], "does not exist"),
    ]
    for argv, message in cases:
        with pytest.raises(DnnkitError, match=message):
            predict.main(argv)
        capsys.readouterr()
        assert cli.run(predict.main, argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


def test_inputs_are_scaled_as_the_training_loader_scaled_them(fake_data, tmp_path):
    """A standardised run: model.pt keeps the loader's mean/std; predict's batches are its batches."""
    dm = MNISTDataModule("mnist", val_size=200, normalize=True)
    loader = dm.test_dataloader()
    x, _ = next(iter(loader))
    meta = {"input": predict.input_meta(loader, x[:2])}
    assert meta["input"]["shape"] == [1, 28, 28] and meta["input"]["mean"] == pytest.approx(0.1307)
    net = build_model({"_target_": "dnnkit.nn.MLP", "hidden": [16]}).eval()
    images = dm.split("test")[0]
    probs = predict.predict(net, images[: len(x)], meta, batch_size=len(x))
    with torch.inference_mode():
        assert torch.equal(probs, net(x).softmax(1))  # bit for bit: the same floats in, the same out
    old = {"data": {"name": "mnist", "normalize": True}}  # a model.pt from before meta["input"]
    assert predict.scaling(old) == (0.1307, 0.3081) and predict.expected_shape(old) == (1, 28, 28)
    assert predict.scaling({"data": {"name": "mnist"}}) == (None, None)
