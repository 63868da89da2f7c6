"""Each schedule's learning rate, read back from the optimizer during a real fit, equals its
formula at every step: as a scheduler in configure_optimizers and as a callback, counting
optimizer steps or epochs."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dnnkit.callbacks import LearningRateSchedule
from dnnkit.errors import DnnkitError
from dnnkit.schedules import Exponential, PiecewiseConstant, Power, ScheduledLR, WarmupCosine, scheduled_lr

LR0 = {"weight": 0.1, "bias": 0.05}  # two param groups with their own starting rates
BATCHES, EPOCHS = 4, 3

# (schedule, interval, the formula written out again, independently of dnnkit.schedules)
CASES = {
    "piecewise-step": (PiecewiseConstant([3, 7], [0.2, 0.02, 0.002]), "step", lambda t, lr0: 0.2 if t < 3 else 0.02 if t < 7 else 0.002),
    "piecewise-epoch": (PiecewiseConstant([1, 2], [0.2, 0.02, 0.002]), "epoch", lambda t, lr0: [0.2, 0.02, 0.002][min(t, 2)]),
    "exponential-step": (Exponential(s=5), "step", lambda t, lr0: lr0 * 0.1 ** (t / 5)),
    "exponential-epoch": (Exponential(s=2), "epoch", lambda t, lr0: lr0 * 0.1 ** (t / 2)),
    "power-step": (Power(s=4, c=1.5), "step", lambda t, lr0: lr0 * (1 + t / 4) ** -1.5),
    "power-epoch": (Power(s=1, c=1), "epoch", lambda t, lr0: lr0 * (1 + t / 1) ** -1),
    "exponential-fixed-lr0": (Exponential(s=5, lr0=0.3), "step", lambda t, lr0: 0.3 * 0.1 ** (t / 5)),
    "warmup-cosine-step": (WarmupCosine(warmup_share=0.25, total=12, min_lr=0.01), "step",
                           lambda t, lr0: lr0 * t / 3 if t < 3 else 0.01 + (lr0 - 0.01) * (1 + math.cos(math.pi * (t - 3) / 9)) / 2),
    "warmup-cosine-epoch": (WarmupCosine(warmup_share=0.5, total=2), "epoch",
                            lambda t, lr0: [0.0, lr0, 0.0][t]),
}


class TinyRegression(L.LightningModule):
    """Not a dnnkit module: a linear model that configures its own optimizer (two groups)."""

    def __init__(self, scheduler=None) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.scheduler = scheduler

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        groups = [{"params": [self.net.weight], "lr": LR0["weight"]}, {"params": [self.net.bias], "lr": LR0["bias"]}]
        optimizer = torch.optim.SGD(groups, lr=0.1)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}


class LRProbe(L.Callback):
    """Records the rates the optimizer is about to use, inside each optimizer step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[float]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen.append((trainer.global_step, trainer.current_epoch, [g["lr"] for g in optimizer.param_groups]))


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES * 8, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def fit(module, callbacks, tmp_path, epochs=EPOCHS, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=loader(), ckpt_path=ckpt_path)
    return trainer


def check(probe: LRProbe, interval: str, formula) -> None:
    assert len(probe.seen) == BATCHES * EPOCHS
    for step, epoch, lrs in probe.seen:
        t = step if interval == "step" else epoch
        expected = [formula(t, LR0["weight"]), formula(t, LR0["bias"])]
        assert lrs == pytest.approx(expected, abs=1e-9, rel=0), (step, epoch, lrs, expected)


@pytest.mark.parametrize("case", CASES)
def test_scheduler_form_matches_formula_every_step(case, tmp_path):
    schedule, interval, formula = CASES[case]
    probe = LRProbe()
    fit(TinyRegression(functools.partial(scheduled_lr, schedule=schedule, interval=interval)), [probe], tmp_path)
    check(probe, interval, formula)


@pytest.mark.parametrize("case", CASES)
def test_callback_form_matches_formula_every_step(case, tmp_path):
    schedule, interval, formula = CASES[case]
    probe = LRProbe()
    fit(TinyRegression(), [LearningRateSchedule(schedule, interval), probe], tmp_path)
    check(probe, interval, formula)


def test_callback_takes_warmup_cosines_length_from_the_fit(tmp_path):
    probe = LRProbe()
    fit(TinyRegression(), [LearningRateSchedule(WarmupCosine(warmup_share=0.25), "step"), probe], tmp_path)
    check(probe, "step", lambda t, lr0: lr0 * t / 3 if t < 3 else lr0 * (1 + math.cos(math.pi * (t - 3) / 9)) / 2)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_callback_resumes_on_the_same_curve(interval, tmp_path):
    schedule = Exponential(s=3)
    full = LRProbe()
    fit(TinyRegression(), [LearningRateSchedule(schedule, interval), full], tmp_path / "full")
    first = fit(TinyRegression(), [LearningRateSchedule(schedule, interval)], tmp_path / "a", epochs=1)
    ckpt = tmp_path / "a.ckpt"
    first.save_checkpoint(ckpt)
    resumed = LRProbe()
    fit(TinyRegression(), [LearningRateSchedule(schedule, interval), resumed], tmp_path / "b", ckpt_path=str(ckpt))
    assert resumed.seen == full.seen[BATCHES:]


def test_scheduler_resumes_from_a_weights_only_checkpoint(tmp_path):
    sched = functools.partial(scheduled_lr, schedule=Power(s=2), interval="step")
    full = LRProbe()
    fit(TinyRegression(sched), [full], tmp_path / "full")
    first = fit(TinyRegression(sched), [], tmp_path / "a", epochs=1)
    ckpt = tmp_path / "a.ckpt"
    first.save_checkpoint(ckpt)
    torch.load(ckpt, weights_only=True)  # no pickled schedule object inside
    resumed = LRProbe()
    fit(TinyRegression(sched), [resumed], tmp_path / "b", ckpt_path=str(ckpt))
    assert resumed.seen == full.seen[BATCHES:]


def test_classifier_takes_a_scheduler_config(fake_data):
    from dnnkit.runner import build_module
    from tests.conftest import compose_config

    module = build_module(compose_config(["scheduler=power", "scheduler.interval=step", "scheduler.schedule.s=7"]))
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    assert isinstance(config["lr_scheduler"]["scheduler"], ScheduledLR)
    assert config["lr_scheduler"]["scheduler"].schedule.s == 7


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PiecewiseConstant([5, 15], [0.01, 0.001]), "one more value than boundaries"),
        (lambda: PiecewiseConstant([15, 5], [0.01, 0.005, 0.001]), "boundaries must increase strictly, got \\[15, 5\\]"),
        (lambda: Exponential(s=0), "s must be a positive number, got 0"),
        (lambda: Power(s=10, c=-1), "c must be a positive number, got -1"),
        (lambda: LearningRateSchedule(Exponential(s=1), interval="batch"), "unknown interval 'batch'; valid: epoch, step"),
        (lambda: LearningRateSchedule(lambda t: 0.1), "schedule must be a dnnkit.schedules schedule"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(DnnkitError, match=message):
        make()


def test_recipe_runner_with_a_scheduler_and_performance_scheduling(fake_data, tmp_path):
    from dnnkit.runner import run_recipe
    from tests.conftest import FAST, compose_config

    overrides = ["optimizer=momentum", "scheduler=exponential", "scheduler.schedule.s=1", "trainer.max_epochs=2",
                 "callbacks=[default,performance_scheduling]", "callbacks.performance_scheduling.patience=3"]
    cfg = compose_config(FAST + overrides)
    [result] = run_recipe(cfg, tmp_path / "run")
    # logged at the end of the 2nd epoch, after Lightning stepped the scheduler: the next epoch's rate
    assert result.metrics["lr"] == pytest.approx(0.001 * 0.1**2, rel=1e-6)
    assert result.metrics["lr/reductions"] == 0


def book_piecewise_constant_fn(epoch):
    """Hands-On ML, ch. 11: the book's piecewise constant schedule."""
    if epoch < 5:
        return 0.01
    elif epoch < 15:
        return 0.005
    else:
        return 0.001


def keras_piecewise_constant_decay(step, boundaries, values):
    """Keras 3's PiecewiseConstantDecay: values[0] while step <= boundaries[0], ..., values[-1] after."""
    for boundary, value in zip(boundaries, values):
        if step <= boundary:
            return value
    return values[-1]


def test_piecewise_constant_switches_as_the_book_one_step_before_keras():
    ours = PiecewiseConstant([5, 15], [0.01, 0.005, 0.001])
    ts = range(30)
    assert [ours(t, lr0=0.01) for t in ts] == [book_piecewise_constant_fn(t) for t in ts]
    assert (ours(5, lr0=0.01), keras_piecewise_constant_decay(5, [5, 15], [0.01, 0.005, 0.001])) == (0.005, 0.01)
    shifted = PiecewiseConstant([6, 16], [0.01, 0.005, 0.001])  # every boundary + 1: Keras's switching points
    assert [shifted(t, lr0=0.01) for t in ts] == [keras_piecewise_constant_decay(t, [5, 15], [0.01, 0.005, 0.001]) for t in ts]


def test_recipe_schedules_is_the_books_comparison(fake_data):
    from dnnkit.stages import stage_configs
    from tests.conftest import compose_config

    stages = dict(stage_configs(compose_config(["+recipe=schedules"])))
    assert list(stages) == ["power", "exponential_epoch", "exponential_step", "piecewise_constant", "performance", "one_cycle"]
    for name, cfg in stages.items():
        assert (cfg.trainer.max_epochs, cfg.data.val_size, cfg.data.val_split, cfg.data.normalize) == (25, 5000, "first", True)
        assert (list(cfg.model.hidden), cfg.model.activation, cfg.model.init_distribution) == ([300, 100], "selu", "truncated_normal")
        assert cfg.data.batch_size == (128 if name == "one_cycle" else 32)
        assert cfg.published.metric == "val/acc"
    assert stages["exponential_step"].scheduler.schedule.s == 20 * 55_000 // 32
    assert (stages["power"].scheduler.schedule.s, stages["power"].optimizer.lr) == (10_000, 0.01)
    assert stages["one_cycle"].find_lr == "apply" and stages["one_cycle"].scheduler.max_lr is None
    assert stages["performance"].callbacks.performance_scheduling.patience == 5


@pytest.mark.slow  # an end-to-end run of two stages and the LR finder: ~8 s of CPU
def test_recipe_schedules_runs_and_plots_every_stage(fake_data, tmp_path):
    """Two of its stages, a few batches each: schedules.png, lr/epoch per epoch, the finder's peak."""
    import json

    from dnnkit.runner import run_recipe
    from tests.conftest import compose_config

    off = [f"stages.{s}=null" for s in ("exponential_epoch", "exponential_step", "piecewise_constant", "performance")]
    cfg = compose_config(["+recipe=schedules", *off, "trainer.max_epochs=2", "+trainer.limit_train_batches=8",
                          "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "data.val_size=200",
                          "trainer.enable_progress_bar=false", "export=false", "stages.one_cycle.data.batch_size=64",
                          "stages.one_cycle.callbacks.lr_finder.num_training_steps=14", "stages.one_cycle.callbacks.lr_finder.max_lr=0.1"])
    power, one_cycle = run_recipe(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "schedules.png").stat().st_size > 10_000
    assert [h["lr/epoch"] for h in power.history] == pytest.approx([
        sum(0.01 / (1 + t / 10_000) for t in range(e * 8, e * 8 + 8)) / 8 for e in range(2)], rel=1e-6)
    suggestion = json.loads((one_cycle.dir / "lr_find.json").read_text())["suggestion"]
    state = torch.load(one_cycle.dir / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]
    assert state["param_groups"][0]["max_lr"] == pytest.approx(suggestion, rel=1e-12)
