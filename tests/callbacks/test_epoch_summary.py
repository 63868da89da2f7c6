"""EpochSummary's line per epoch."""

import lightning as L
import torch

from dnnkit.callbacks import EpochSummary
from dnnkit.data.loader import TensorLoader
from dnnkit.modules import Classifier
from dnnkit.nn import MLP


def fit(capsys, **limits) -> list[str]:
    x, y = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (40,))
    trainer = L.Trainer(callbacks=[EpochSummary()], logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, **limits)
    trainer.fit(Classifier(MLP(784, [8], 10)), TensorLoader(x, y, 20))  # 2 batches an epoch
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]


def test_epoch_of_max_epochs(capsys):
    lines = fit(capsys, max_epochs=2)
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] and "train/loss" in lines[0]


def test_max_steps_alone_prints_no_epoch_total(capsys):
    lines = fit(capsys, max_steps=4, max_epochs=-1)  # was "epoch   1/-1"
    assert [line.split("train/")[0].split() for line in lines] == [["epoch", "1"], ["epoch", "2"]]
