"""Step-wise schedules on dnnkit.Classifier: any torch scheduler with ``interval``/``frequency``
from the config, 1cycle (its rate and momentum read back from the optimizer at every step of a
real fit equal torch's OneCycleLR formula, also across a mid-cycle resume), warm-up cosine, the
rate logged, and the bad inputs."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch

from dnnkit.build import build_module
from dnnkit.callbacks import LastCheckpoint
from dnnkit.callbacks.lr_schedule import LearningRateLog
from dnnkit.data import TensorLoader
from dnnkit.errors import DnnkitError
from dnnkit.modules import Classifier
from dnnkit.nn import MLP
from dnnkit.schedules import WarmupCosine, lightning_scheduler, scheduled_lr
from tests.conftest import FAST, compose_config

BATCHES, EPOCHS = 6, 3
TOTAL = BATCHES * EPOCHS


def data() -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (BATCHES * 8, 28, 28), dtype=torch.uint8, generator=g)
    return TensorLoader(x, torch.randint(0, 10, (BATCHES * 8,), generator=g), 8)


class Probe(L.Callback):
    """The rate and momentum (or beta1) of the first param group inside every optimizer step."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        group = optimizer.param_groups[0]
        self.seen[trainer.global_step] = (group["lr"], group["betas"][0] if "betas" in group else group.get("momentum", 0.0))


class StopAt(L.Callback):
    """Stands in for a crash just before optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def fit(module, root, *callbacks, ckpt_path=None, epochs=EPOCHS) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, accelerator="cpu")
    trainer.fit(module, data(), ckpt_path=ckpt_path)
    return trainer


def one_cycle_formula(step: int, max_lr: float, total: int, pct: float = 0.3, div: float = 25.0, final_div: float = 1e4,
                      momenta: tuple[float, float] = (0.85, 0.95)) -> tuple[float, float]:
    """torch's OneCycleLR (two phases, cosine), written out again: (rate, momentum) at ``step``."""
    initial, (base_m, max_m) = max_lr / div, momenta
    end1, end2 = pct * total - 1, total - 1

    def anneal(start, end, t):
        return end + (start - end) / 2 * (math.cos(math.pi * t) + 1)

    if step <= end1:
        t = step / end1
        return anneal(initial, max_lr, t), anneal(max_m, base_m, t)
    t = (step - end1) / (end2 - end1)
    return anneal(max_lr, initial / final_div, t), anneal(base_m, max_m, t)


def one_cycle_module(optimizer=None) -> Classifier:
    L.seed_everything(0, verbose=False)
    one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=None, total_steps=None, interval="step",
                                  cycle_momentum="auto")
    optimizer = optimizer or functools.partial(torch.optim.SGD, lr=0.2, momentum=0.9)
    return Classifier(MLP(784, [16], 10, dropout=0.1), optimizer=optimizer, scheduler=one_cycle)


def test_one_cycle_rate_and_momentum_every_step_across_a_mid_cycle_resume(tmp_path):
    """total_steps from the trainer (18), the peak from the optimizer's lr; crash before step 16,
    resume from last.ckpt (saved mid-epoch at step 15): every step's rate and momentum are the
    formula's, and the last epoch's lr/epoch averages all six of its steps."""
    probe = Probe()
    with pytest.raises(RuntimeError, match="crash at step 16"):
        fit(one_cycle_module(), tmp_path, probe, StopAt(16), LearningRateLog(), LastCheckpoint(every_n_seconds=None, every_n_train_steps=5))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 15
    before = dict(probe.seen)
    resumed = Probe()
    trainer = fit(one_cycle_module(), tmp_path, resumed, LearningRateLog(), LastCheckpoint(every_n_seconds=None, every_n_train_steps=5),
                  ckpt_path=str(last))
    assert sorted(before) == list(range(16)) and sorted(resumed.seen) == list(range(15, TOTAL))
    assert resumed.seen[15] == before[15]  # the step repeated after the resume sees what it saw before
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert type(scheduler).__name__ == "OneCycleLR" and scheduler.total_steps == TOTAL
    for step, (lr, momentum) in {**before, **resumed.seen}.items():
        want_lr, want_m = one_cycle_formula(step, 0.2, TOTAL)
        assert lr == pytest.approx(want_lr, abs=1e-9, rel=0), step
        assert momentum == pytest.approx(want_m, abs=1e-9, rel=0), step
    assert max(lr for lr, _ in before.values()) == pytest.approx(0.2, rel=0.05)  # the optimizer's rate is the peak
    last_epoch = [one_cycle_formula(step, 0.2, TOTAL)[0] for step in range(TOTAL - BATCHES, TOTAL)]
    assert float(trainer.callback_metrics["lr/epoch"]) == pytest.approx(sum(last_epoch) / BATCHES, rel=1e-6)


@pytest.mark.parametrize("optimizer, cycles", [
    (functools.partial(torch.optim.SGD, lr=0.1), False),                 # plain SGD: no momentum to cycle
    (functools.partial(torch.optim.Adam, lr=0.01, betas=(0.9, 0.99)), True),  # beta1 cycles
])
def test_one_cycle_cycles_momentum_only_where_the_optimizer_has_it(optimizer, cycles):
    module = one_cycle_module(optimizer)
    opt = optimizer(module.parameters())
    scheduler = lightning_scheduler(module.scheduler_factory, opt)["scheduler"]
    assert scheduler.cycle_momentum is cycles
    group = opt.param_groups[0]
    assert (group["betas"][0] if "betas" in group else group["momentum"]) == (0.95 if cycles else 0)


def test_any_torch_scheduler_takes_interval_and_frequency_from_the_config(fake_data):
    cfg = compose_config(["scheduler=cosine", "+scheduler.interval=step", "+scheduler.frequency=2", "scheduler.T_max=50"])
    module = build_module(cfg)
    config = module.configure_optimizers()["lr_scheduler"]
    assert (config["interval"], config["frequency"], type(config["scheduler"]).__name__) == ("step", 2, "CosineAnnealingLR")
    assert config["scheduler"].T_max == 50


def test_warmup_cosine_takes_its_length_from_the_fit_and_follows_its_formula(tmp_path):
    L.seed_everything(0, verbose=False)
    sched = functools.partial(scheduled_lr, schedule=WarmupCosine(warmup_share=0.25, min_lr=0.001), interval="step")
    probe, log = Probe(), LearningRateLog()
    module = Classifier(MLP(784, [8], 10), optimizer=functools.partial(torch.optim.SGD, lr=0.1), scheduler=sched)
    trainer = fit(module, tmp_path, probe, log)
    assert trainer.lr_scheduler_configs[0].scheduler.schedule.total == TOTAL
    warmup = round(0.25 * TOTAL)
    for step, (lr, _) in probe.seen.items():
        p = (step - warmup) / (TOTAL - warmup)
        want = 0.1 * step / warmup if step < warmup else 0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr == pytest.approx(want, abs=1e-12), step
    last_epoch = [lr for step, (lr, _) in probe.seen.items() if step >= TOTAL - BATCHES]
    assert float(trainer.callback_metrics["lr/epoch"]) == pytest.approx(sum(last_epoch) / BATCHES, rel=1e-6)


def test_one_cycle_from_the_cli_config_logs_the_rate_per_step_and_per_epoch(fake_data, tmp_path):
    import csv

    from dnnkit.runner import run_recipe

    overrides = ["scheduler=one_cycle", "callbacks=[default,lr_monitor]", "trainer.log_every_n_steps=1",
                 "+optimizer.momentum=0.9"]
    [result] = run_recipe(compose_config([*FAST, "trainer.max_epochs=2", *overrides]), tmp_path / "run")
    with open(tmp_path / "run" / "train" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lr-SGD")]
    assert [int(r["step"]) for r in rows] == list(range(6))  # 3 batches x 2 epochs, each step logged
    rates = [float(r["lr-SGD"]) for r in rows]
    assert rates == pytest.approx([one_cycle_formula(s, 0.01, 6)[0] for s in range(6)], abs=1e-9)
    assert [float(r["lr-SGD-momentum"]) for r in rows] == pytest.approx([one_cycle_formula(s, 0.01, 6)[1] for s in range(6)])
    assert [h["lr/epoch"] for h in result.history] == pytest.approx([sum(rates[:3]) / 3, sum(rates[3:]) / 3], rel=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["scheduler=one_cycle", "scheduler.interval=minute"], "unknown interval 'minute'; valid: epoch, step"),
    (["scheduler=cosine", "+scheduler.interval=minute"], "unknown interval 'minute'; valid: epoch, step"),
    (["scheduler=one_cycle", "scheduler.pct_start=1.0"],
     r"scheduler.pct_start \(the warm-up share\) must be a number in \(0, 1\), got 1.0"),
    (["scheduler=one_cycle", "scheduler.pct_start=0"], r"must be a number in \(0, 1\), got 0"),
    (["scheduler=warmup_cosine", "scheduler.schedule.warmup_share=1.5"], r"warmup_share must be a number in \[0, 1\), got 1.5"),
    (["scheduler=one_cycle", "+scheduler.frequency=0"], r"scheduler.frequency must be a positive integer, got 0"),
])
def test_bad_schedules_are_one_message_before_training(overrides, message, fake_data, tmp_path):
    from dnnkit.runner import run_recipe

    with pytest.raises(DnnkitError, match=message):
        run_recipe(compose_config([*FAST, *overrides]), tmp_path / "run")
    assert not (tmp_path / "run" / "train").exists()  # refused by the preflight: nothing trained
