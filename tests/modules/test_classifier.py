"""Classifier: train/loss keeps its meaning while `self.log` runs only on logger steps."""

import lightning as L
import torch

from dnnkit import Classifier
from dnnkit.data.loader import TensorLoader
from dnnkit.nn import MLP


class RecordLosses(L.Callback):
    def __init__(self):
        self.losses, self.sizes = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.sizes.append(len(batch[1]))


def test_train_loss_epoch_is_the_exact_mean_and_steps_follow_log_every_n_steps(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (230, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (230,))
    record = RecordLosses()
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    trainer = L.Trainer(
        max_epochs=1, log_every_n_steps=4, logger=logger, callbacks=[record], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(Classifier(MLP(784, [16], 10)), TensorLoader(x, y, 20, shuffle=True))  # 12 batches, the last of 10
    mean = sum(l * n for l, n in zip(record.losses, record.sizes)) / sum(record.sizes)
    assert abs(float(trainer.callback_metrics["train/loss_epoch"]) - mean) < 1e-5
    assert {"train/loss", "train/loss_step", "train/loss_epoch"} <= set(trainer.callback_metrics)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:] if r.split(",")[header.index("train/loss_step")]]
    assert steps == [3, 7, 11]
