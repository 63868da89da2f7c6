"""Classifier: train/loss keeps its meaning while `self.log` runs only on logger steps."""

import lightning as L
import pytest
import torch
from torch import nn

from dnnkit import Classifier
from dnnkit.callbacks import EpochSummary
from dnnkit.data.loader import TensorLoader
from dnnkit.modules.base import DnnkitModule
from dnnkit.nn import MLP


class RecordLosses(L.Callback):
    def __init__(self):
        self.losses, self.sizes = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.sizes.append(len(batch[1]))


@pytest.mark.parametrize(("every", "logged"), [(4, [3, 7, 11]), (5, [4, 9])])
def test_train_loss_epoch_is_the_exact_mean_and_steps_follow_log_every_n_steps(tmp_path, every, logged):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (230, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (230,))
    record, summary = RecordLosses(), EpochSummary(verbose=False)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    trainer = L.Trainer(
        max_epochs=1, log_every_n_steps=every, logger=logger, callbacks=[record, summary], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(Classifier(MLP(784, [16], 10)), TensorLoader(x, y, 20, shuffle=True))  # 12 batches, the last of 10
    mean = sum(loss * n for loss, n in zip(record.losses, record.sizes)) / sum(record.sizes)
    assert abs(float(trainer.callback_metrics["train/loss_epoch"]) - mean) < 1e-5
    assert abs(summary.history[0]["train/loss"] - mean) < 1e-5  # what the epoch-end callbacks read counts every step
    assert {"train/loss", "train/loss_step", "train/loss_epoch"} <= set(trainer.callback_metrics)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:] if r.split(",")[header.index("train/loss_step")]]
    assert steps == logged


def test_dnnkit_module_stores_lightnings_hook_name_directly_and_the_rest_as_torch_does():
    m = DnnkitModule()
    m._current_fx_name = "training_step"
    assert m._current_fx_name == "training_step" and "_current_fx_name" in m.__dict__
    m.layer = nn.Linear(2, 2)
    m.scale = nn.Parameter(torch.ones(1))
    assert set(dict(m.named_parameters())) == {"layer.weight", "layer.bias", "scale"}


