"""AutoThreads in a plain Trainer (a fake clock: each step "costs" what its thread count costs),
and ``threads=`` through the runner."""

from __future__ import annotations

import csv
import logging

import lightning as L
import pytest
import torch
from torch import nn

from dnnkit.callbacks import AutoThreads
from dnnkit.errors import DnnkitError
from dnnkit.runner import run_recipe
from dnnkit.threads import usable_cores
from tests.conftest import FAST, compose_config


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Costly(L.LightningModule):
    """Each training step advances ``clock`` by ``cost(step)[threads]`` and records the count."""

    def __init__(self, clock: FakeClock, cost) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.clock, self.cost = clock, cost
        self.used: list[int] = []
        self.tested: list[int] = []

    def training_step(self, batch, batch_idx):
        self.used.append(torch.get_num_threads())
        self.clock.t += self.cost(self.global_step)[torch.get_num_threads()]
        return self.layer(batch[0]).pow(2).mean()

    def test_step(self, batch, batch_idx):
        self.tested.append(torch.get_num_threads())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(160, 4)), batch_size=4)

    test_dataloader = train_dataloader


def fit(tmp_path, callback: AutoThreads, cost, epochs: int = 1, clock: FakeClock | None = None) -> tuple[Costly, L.Trainer]:
    clock = clock or FakeClock()
    callback.clock = clock
    module = Costly(clock, cost)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[callback], default_root_dir=tmp_path, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    return module, trainer


def test_auto_picks_the_fast_count_logs_it_and_restores_the_count_it_found(tmp_path, caplog):
    torch.set_num_threads(2)
    callback = AutoThreads(counts=[1, 2])
    with caplog.at_level(logging.INFO, logger="dnnkit"):
        module, trainer = fit(tmp_path, callback, lambda step: {1: 0.010, 2: 0.030})
    # the probe: 1 thread's warm-up + 5 steps; 2 threads' warm-up step took > 2x as long: given up at once
    assert module.used[:7] == [1] * 6 + [2] and set(module.used[7:]) == {1}
    assert float(trainer.callback_metrics["threads"]) == 1
    assert "threads=auto: chose 1 thread (probe 1: 1 -> 10.0 ms/step, 2 -> 30.0 ms/step)" in caplog.text
    assert torch.get_num_threads() == 2  # put back after the fit
    trainer.test(module, verbose=False)
    assert set(module.tested) == {1} and torch.get_num_threads() == 2  # the test runs with the fit's choice


def test_a_machine_that_gets_busy_mid_fit_makes_it_switch(tmp_path):
    quiet, busy = {1: 0.010, 2: 0.006}, {1: 0.011, 2: 0.030}
    callback = AutoThreads(counts=[1, 2], window=10)
    module, _ = fit(tmp_path, callback, lambda step: quiet if step < 30 else busy, epochs=3)
    assert [n for _, n in callback.history] == [1, 2, 1]  # probe 1 then 2, keep 2; busy: re-probe 2 (no change), then 1: kept
    assert module.used[29] == 2 and module.used[-1] == 1
    assert callback.chooser.probes == 2 and callback.chooser.choice == 1


def test_a_fixed_count_holds_for_fit_and_test_and_is_put_back(tmp_path):
    torch.set_num_threads(2)
    callback = AutoThreads(1)
    module, trainer = fit(tmp_path, callback, lambda step: {1: 0.0, 2: 0.0})
    trainer.test(module, verbose=False)
    assert set(module.used) == {1} and set(module.tested) == {1}
    assert torch.get_num_threads() == 2


def test_bad_options_fail_when_the_callback_is_built():
    with pytest.raises(DnnkitError, match="threads must be auto"):
        AutoThreads(0)
    with pytest.raises(DnnkitError, match="probe_steps must be"):
        AutoThreads(probe_steps=0)


@pytest.mark.parametrize("value", ["0", "-1", "999", "abc", "true"])
def test_bad_threads_stop_the_run_before_training(value, fake_data, tmp_path):
    with pytest.raises(DnnkitError, match=r"^threads must be auto, null \(torch's default\) or an integer in \[1, \d+\].*got "):
        run_recipe(compose_config(FAST + [f"threads={value}"]), tmp_path / "run")
    assert not (tmp_path / "run" / "train").exists()


def test_threads_auto_through_the_runner_logs_the_count(fake_data, tmp_path):
    run_recipe(compose_config(FAST + ["threads=auto", "export=false", "test=false"]), tmp_path / "run")
    with open(tmp_path / "run" / "train" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("threads")]
    assert rows and 1 <= float(rows[-1]["threads"]) <= usable_cores()
