"""Early stopping as an option (``callbacks=[default,early_stopping]``): it stops, the table says
after how many epochs, a run interrupted before it stopped (mid-epoch) or after it stopped (before
the fit's results were written) resumes to the same result, and a key nobody logs is refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from dnnkit.errors import DnnkitError
from dnnkit.nn.surgery import read_state_dict
from dnnkit.report import render_table
from dnnkit.runner import run_recipe
from tests.conftest import compose_config

# min_delta 10 on val/loss: no epoch after the first counts as an improvement, so with patience 2
# the fit stops after epoch 3 of 6. 1000 training images / 100 = 10 steps an epoch.
RUN = ["trainer.max_epochs=6", "trainer.enable_progress_bar=false", "data.val_size=200", "data.batch_size=100",
       "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "model.hidden=[16]", "model.dropout=0.2",
       "callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=2", "callbacks.early_stopping.min_delta=10",
       "callbacks.last_checkpoint.every_n_train_steps=4", "export=false"]


class CrashAt(L.Callback):
    """Stands in for a crash: before optimizer step ``step``, or (``step=-1``) at the fit's end,
    after the last epoch's checkpoint and before the runner records the fit."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")

    def on_train_end(self, trainer, pl_module):
        if self.step == -1:
            raise RuntimeError("crash at the end of the fit")


def run(tmp_path, folder: str, *extra: str):
    return run_recipe(compose_config([*RUN, *extra]), tmp_path / folder)[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, once for the module, on a copy of the ``fake_data`` sets."""
    from dnnkit.data.datamodule import load_arrays
    from tests.conftest import write_fake_dataset

    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNNKIT_DATA_DIR", str(write_fake_dataset(root / "data" / "mnist").parent))
        mp.setenv("DNNKIT_CACHE_DIR", str(root / "cache"))
        load_arrays.cache_clear()
        yield run(root, "ref")
    load_arrays.cache_clear()


def test_early_stopping_stops_and_the_table_says_so(reference):
    assert reference.epochs == 3 and reference.stopped_early
    assert [h["epoch"] for h in reference.history] == [1, 2, 3]
    table = render_table([reference], ["val/acc"], {}, "t")
    assert "3 (stopped early)" in table


@pytest.mark.parametrize("step", [13, -1])  # mid-epoch 2 (last.ckpt at step 12), and after stopping
def test_an_interrupted_run_resumes_to_the_same_stop(step, reference, fake_data, tmp_path):
    crash = f"+callbacks.crash={{_target_: tests.test_early_stopping.CrashAt, step: {step}}}"
    with pytest.raises(RuntimeError, match="crash at"):
        run(tmp_path, "run", crash)
    last = tmp_path / "run" / "train" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == (12 if step == 13 else 30)
    resumed = run(tmp_path, "run", "+callbacks.crash=null", "resume=true")
    assert (resumed.epochs, resumed.stopped_early) == (3, True)  # no fourth epoch after a resume past the stop
    assert resumed.metrics == reference.metrics  # bit-equal, not approximately
    ref, got = (read_state_dict(d / "checkpoints" / "last.ckpt") for d in (reference.dir, tmp_path / "run" / "train"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_early_stopping_on_a_key_never_logged_lists_the_keys(fake_data, tmp_path):
    with pytest.raises(DnnkitError, match=r"callbacks.early_stopping.monitor='val/accuracy' is not a key Classifier logs"):
        run(tmp_path, "a", "callbacks.early_stopping.monitor=val/accuracy")
    with pytest.raises(DnnkitError, match=r"callbacks.early_stopping.monitor='accuracy' is never logged while fitting, so early "
                                          r"stopping could never decide; valid: train/loss, val/acc, val/loss"):
        run(tmp_path, "b", "callbacks.early_stopping.monitor=accuracy")
    assert not (tmp_path / "a" / "train").exists() and not (tmp_path / "b" / "train").exists()
