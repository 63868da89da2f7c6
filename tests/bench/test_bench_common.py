"""bench.common: the results writer, the epoch timer, the raw loop, the config helper."""

from __future__ import annotations

import argparse
import math
import os

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench.common import EpochTimer, ResultsError, add_results_arguments, markers, raw_fit, results_target, stage_config, write_results
from dnnkit.data.loader import TensorLoader

BEFORE = "# Results\n\nintro line\n\n## bench.demo\n\n"
AFTER = "\nclosing words\n<!-- bench:other:begin -->\nother bench\n<!-- bench:other:end -->\n"


def results_file(tmp_path, inner: str = "old figures\nmore old\n"):
    begin, end = markers("demo")
    path = tmp_path / "RESULTS.md"
    path.write_text(f"{BEFORE}{begin}\n{inner}{end}\n{AFTER}")
    return path


def test_write_results_replaces_only_the_block_between_the_markers(tmp_path):
    path = results_file(tmp_path)
    write_results("demo", "| a | b |\n|---|---|\n| 1 | 2 |\n", path)
    begin, end = markers("demo")
    assert path.read_text() == f"{BEFORE}{begin}\n| a | b |\n|---|---|\n| 1 | 2 |\n{end}\n{AFTER}"
    write_results("demo", "new\n", path)  # again: the previous block goes, nothing else moves
    assert path.read_text() == f"{BEFORE}{begin}\nnew\n{end}\n{AFTER}"
    assert sorted(os.listdir(tmp_path)) == ["RESULTS.md"]  # no temporary file left behind


def test_write_results_keeps_other_sections_and_an_empty_block(tmp_path):
    path = results_file(tmp_path, inner="")
    write_results("other", "changed", path)
    text = path.read_text()
    assert "<!-- bench:other:begin -->\nchanged\n<!-- bench:other:end -->" in text
    assert text.startswith(f"{BEFORE}<!-- bench:demo:begin -->\n<!-- bench:demo:end -->\n")


@pytest.mark.parametrize("text, why", [
    ("# Results\nno markers at all\n", "0 begin and 0 end"),
    ("<!-- bench:demo:begin -->\nno end\n", "1 begin and 0 end"),
    ("<!-- bench:demo:end -->\nx\n<!-- bench:demo:begin -->\n", "end before begin"),
    ("<!-- bench:demo:begin -->\n<!-- bench:demo:end -->\n<!-- bench:demo:begin -->\n<!-- bench:demo:end -->\n", "2 begin and 2 end"),
    ("text <!-- bench:demo:begin -->\nx\n<!-- bench:demo:end --> text\n", "0 begin and 0 end"),  # markers must be whole lines
])
def test_write_results_without_its_markers_raises_and_leaves_the_file_alone(tmp_path, text, why):
    path = tmp_path / "RESULTS.md"
    path.write_text(text)
    with pytest.raises(ResultsError, match=why) as err:
        write_results("demo", "figures", path)
    assert "<!-- bench:demo:begin -->" in str(err.value) and str(path) in str(err.value)
    assert path.read_text() == text


def test_write_results_to_a_missing_file_raises(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        write_results("demo", "figures", tmp_path / "nope.md")


def test_a_bench_refuses_a_results_file_without_its_section_before_it_runs(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="python -m bench.demo")
    add_results_arguments(parser)
    (tmp_path / "R.md").write_text("# no sections\n")
    with pytest.raises(SystemExit) as exit_:
        results_target(parser, parser.parse_args(["--results", str(tmp_path / "R.md")]), "demo")
    assert exit_.value.code == 2 and "bench:demo:begin" in capsys.readouterr().err
    assert results_target(parser, parser.parse_args(["--results", str(tmp_path / "R.md"), "--no-write"]), "demo") is None
    assert results_target(parser, parser.parse_args(["--results", str(results_file(tmp_path))]), "demo") == tmp_path / "RESULTS.md"


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("validate", [True, False])
def test_epoch_timer_times_each_epoch_with_and_without_validation(tmp_path, validate):
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=3, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(_Tiny(), data, data if validate else None)
    assert EpochTimer.last is timer and timer.build_seconds is None
    assert len(timer.epoch_seconds) == len(timer.epoch_cpu_seconds) == len(timer.train_seconds) == 3
    assert all(0 < t <= e for t, e in zip(timer.train_seconds, timer.epoch_seconds))
    assert all(c >= 0 for c in timer.epoch_cpu_seconds)


def test_raw_fit_trains_over_dnnkit_batches_and_advances_the_shuffle():
    torch.manual_seed(0)
    y = torch.arange(200) % 10
    x = torch.zeros(200, 28, 28, dtype=torch.uint8)
    x[torch.arange(200), 2 * y] = 255  # learnable: the lit row says the class
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    train = TensorLoader(x, y, 20, shuffle=True)
    fit = raw_fit(model, torch.optim.SGD(model.parameters(), lr=0.5), train, 4, val=TensorLoader(x, y, 100))
    assert len(fit.wall) == len(fit.cpu) == len(fit.val_acc) == 4 and all(w > 0 for w in fit.wall)
    assert train.sampler.epoch == 4
    assert fit.val_acc[-1] > 0.5
    assert math.isnan(raw_fit(model, torch.optim.SGD(model.parameters(), lr=0.1), train, 1).val_acc[0])


def test_stage_config_picks_a_stage_and_refuses_an_unknown_one(capsys):
    name, cfg = stage_config("reuse", "frozen_cached", ["trainer.max_epochs=1"])
    assert name == "frozen_cached" and cfg.trainer.max_epochs == 1 and cfg.reuse["from"] == "clipping"
    assert stage_config("reuse")[0] == "clipping"
    with pytest.raises(SystemExit) as exit_:
        stage_config("reuse", "nope")
    assert exit_.value.code == 2 and "'nope' not in recipe 'reuse'" in capsys.readouterr().err
