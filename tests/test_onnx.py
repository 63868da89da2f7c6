"""ONNX export: ``export`` takes a bool or ``{model, onnx}``; ``export.onnx=true`` writes
``model.onnx`` whose outputs match ``model.pt2``'s to 1e-5 with a dynamic batch size, refuses to
start without its packages, and never writes a model that does not match."""

from __future__ import annotations

import logging

import pytest
import torch

from dnnkit import runner
from dnnkit.errors import DnnkitError
from dnnkit.nn import onnx
from dnnkit.nn.export import build_model, save_inference_model
from dnnkit.preflight import preflight
from dnnkit.stages import stage_configs
from tests.conftest import FAST, compose_config
from tests.nn.test_fold import randomize_bn_
from tests.test_evaluate import trained_run  # noqa: F401  (the shared session fixture)

NEEDS_ONNX = pytest.mark.skipif(bool(onnx.missing_packages()), reason=f"the [onnx] extra is not installed "
                                f"({', '.join(onnx.missing_packages())}): pip install -e '.[onnx]'")


def test_export_takes_a_bool_or_model_and_onnx():
    assert onnx.export_options(True) == (True, False) and onnx.export_options(False) == (False, False)
    assert onnx.export_options({"model": True, "onnx": True}) == (True, True)
    assert onnx.export_options({"onnx": False}) == (True, False)
    for bad in ("yes", {"model": True, "onx": True}, {"model": 1}, None):
        with pytest.raises(DnnkitError, match=r"export must be true, false or \{model: true\|false, onnx: true\|false\}"):
            onnx.export_options(bad)
    with pytest.raises(DnnkitError, match="export.onnx=true needs export.model=true"):
        onnx.export_options({"model": False, "onnx": True})
    # both spellings compose: the base config's dict, replaced by a bool or changed key by key
    assert compose_config(["export=false"]).export is False
    assert dict(compose_config(["export.onnx=true"]).export) == {"model": True, "onnx": True}


def test_onnx_without_its_packages_fails_before_training(fake_data, monkeypatch):
    monkeypatch.setattr(onnx, "missing_packages", lambda: ["onnxscript"])
    with pytest.raises(DnnkitError, match=r"export.onnx=true needs onnxscript \(not installed\): pip install 'dnnkit\[onnx\]'"):
        preflight(stage_configs(compose_config([*FAST, "export.onnx=true"])))
    preflight(stage_configs(compose_config([*FAST, "export=false"])))  # nothing asked of the packages


@NEEDS_ONNX
def test_onnx_matches_the_pt2_program_with_a_dynamic_batch(tmp_path):
    config = {"_target_": "dnnkit.nn.MLP", "hidden": [40, 30], "batch_norm": True, "output_batch_norm": True}
    net = randomize_bn_(build_model(config)).eval()
    save_inference_model(net, tmp_path, config, torch.zeros(2, 1, 28, 28))
    path = onnx.save_onnx(tmp_path, torch.rand(9, 1, 28, 28))
    session = onnx.onnx_session(path)
    assert session.get_inputs()[0].name == "images" and isinstance(session.get_inputs()[0].shape[0], str)  # symbolic
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    for batch in (1, 5, 130):
        x = torch.rand(batch, 1, 28, 28)
        with torch.no_grad():
            assert (onnx.run_onnx(session, x) - program(x)).abs().max() <= onnx.ATOL
            assert (onnx.run_onnx(session, x) - net(x)).abs().max() <= 1e-4  # and the unfolded network


@NEEDS_ONNX
def test_a_mismatching_onnx_model_is_not_written(trained_run, tmp_path, monkeypatch):  # noqa: F811
    for name in ("model.pt", "model.pt2"):
        (tmp_path / name).write_bytes((trained_run / "train" / name).read_bytes())
    converted = (trained_run / "train" / "model.onnx").read_bytes()
    monkeypatch.setattr(onnx, "convert", lambda program, x: converted)  # what torch.onnx.export made for this program
    monkeypatch.setattr(onnx, "onnx_difference", lambda session, program, batches: (0.25, 64))
    with pytest.raises(DnnkitError, match=r"model.onnx was not written: its logits differ from model.pt2's by 0.25 on a batch of 64"):
        onnx.save_onnx(tmp_path, torch.rand(64, 1, 28, 28))
    assert not (tmp_path / "model.onnx").exists()


@NEEDS_ONNX
def test_a_run_with_export_onnx_writes_a_model_onnx_that_matches(trained_run):  # noqa: F811
    stage = trained_run / "train"
    session = onnx.onnx_session(stage / "model.onnx")
    program = torch.export.load(str(stage / "model.pt2")).module()
    x = torch.rand(17, 1, 28, 28)
    with torch.no_grad():
        assert (onnx.run_onnx(session, x) - program(x)).abs().max() <= onnx.ATOL


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_failing_onnx_export_warns_and_keeps_the_model(trained_run, tmp_path, monkeypatch):  # noqa: F811
    from dnnkit.build import build_module, instantiate

    def broken(folder, example):
        raise DnnkitError("no converter for this layer")

    monkeypatch.setattr(onnx, "save_onnx", broken)
    meta = torch.load(trained_run / "train" / "model.pt", weights_only=True)["meta"]
    cfg = compose_config([*FAST, f"data.root={meta['data']['root']}", "model.batch_norm=true"])
    module, datamodule = build_module(cfg), instantiate(cfg.data, _convert_="all")
    records = Records()
    logging.getLogger("dnnkit.runner").addHandler(records)
    try:
        runner.export_stage(module.model, cfg, datamodule, meta["checkpoint"], tmp_path, {}, onnx=True)
    finally:
        logging.getLogger("dnnkit.runner").removeHandler(records)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.pt2").is_file() and not (tmp_path / "model.onnx").exists()
    assert any("no converter for this layer" in m for m in records.messages), records.messages
