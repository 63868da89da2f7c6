"""``compile=true|auto``: the compiled fast path (dnnkit/compile.py, dnnkit/callbacks/compile.py).

Fast tests use dynamo with the ``eager``/``aot_eager`` backends (tracing, guards, recompiles and
fallbacks are dynamo's; no C++ is built); the one slow test trains with Inductor, eager against
compiled, every callback on."""

from __future__ import annotations

import copy
import math
import pickle
import types
import warnings

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from dnnkit import Classifier
from dnnkit.callbacks import GradientClipping, GradientHealth, LayerFreezing, NonFiniteGuard
from dnnkit.callbacks.compile import CompileModel
from dnnkit.compile import CompileFallback, break_even, compile_choice, compile_in_place, compiled, decide, uncompile
from dnnkit.data.loader import TensorLoader
from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.nn.health import activation_stats
from dnnkit.preflight import preflight
from dnnkit.stages import stage_configs
from tests.conftest import compose_config


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def broken_backend(gm, example_inputs):
    raise RuntimeError("no kernels for this graph")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ELU(), nn.Linear(5, 3))


# ----------------------------------------------------------------------------- the config value


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("auto", "auto"), ("true", True), ("False", False)])
def test_compile_choice_takes_true_false_auto(value, expected):
    assert compile_choice(value) is expected or compile_choice(value) == expected


@pytest.mark.parametrize("value", ["fast", 1, 0, None, "yes"])
def test_compile_choice_refuses_anything_else_in_one_line(value):
    with pytest.raises(DnnkitError, match=r"^compile=.* is not valid; valid: true, false, auto$"):
        compile_choice(value)


def test_preflight_refuses_a_bad_compile_before_anything_trains(fake_data):
    with pytest.raises(DnnkitError, match=r"compile='fastest' is not valid; valid: true, false, auto"):
        preflight(stage_configs(compose_config(["compile=fastest"])))
    preflight(stage_configs(compose_config(["compile=auto", "model.hidden=[8]", "data.val_size=100"])))  # passes


# ----------------------------------------------------------------------------- auto's arithmetic


def test_decide_compiles_only_when_the_steps_left_pay_for_the_compile():
    assert decide(3001, 0.02, compile_seconds=6.0, gain=0.1)[0] and not decide(2999, 0.02, compile_seconds=6.0, gain=0.1)[0]
    worth, text = decide(math.inf, 0.01, compile_seconds=6.0, gain=0.1)
    assert worth and "unlimited steps" in text and "break-even 6,000 steps" in text
    assert not decide(10**9, 0.01, compile_seconds=6.0, gain=0.0)[0]  # no gain: never
    assert break_even(10.0, 0.020, 0.015) == pytest.approx(2000) and break_even(1.0, 0.01, 0.01) == math.inf


def fake_trainer(total_steps: float, global_step: int = 0):
    return types.SimpleNamespace(estimated_stepping_batches=total_steps, global_step=global_step)


@pytest.mark.parametrize("total, compiles", [(50, False), (10**7, True)])
def test_auto_times_the_first_steps_then_decides_and_logs_why(total, compiles, caplog):
    module = Classifier(MLP(6, [5], 3))
    cb = CompileModel("auto", backend="eager", probe_steps=3, compile_seconds=1.0, gain=0.1)
    trainer = fake_trainer(total)
    cb.setup(trainer, module, "fit")
    with caplog.at_level("INFO", logger="dnnkit"):
        for step in range(4):
            assert compiled(module.model) is None  # eager while it probes
            cb.on_train_batch_start(trainer, module, None, step)
            module.model(torch.randn(4, 6)).sum().backward()
            cb.on_train_batch_end(trainer, module, None, None, step)
            if cb.decision:
                break
    assert step == 2 and cb.decision.startswith(f"compile=auto: {'compiling' if compiles else 'eager'}: ")
    assert cb.decision in caplog.text
    assert (compiled(module.model) is not None) == compiles
    cb.teardown(trainer, module, "fit")
    assert compiled(module.model) is None  # eager again for test and export


# ----------------------------------------------------------------------------- in place, fallback, hooks


def test_compile_in_place_keeps_identity_keys_and_results_and_copies_are_eager():
    model = net()
    eager_out = copy.deepcopy(model)(torch.ones(4, 6))
    keys = list(model.state_dict())
    call = compile_in_place(model, backend="eager")
    out = model(torch.ones(4, 6))
    assert call.calls == 1 and call.failed is None and list(model.state_dict()) == keys  # no `_orig_mod.`
    torch.testing.assert_close(out, eager_out)
    with torch.no_grad():
        model(torch.ones(4, 6))
    assert call.calls == 1 and call.eager_calls == 1  # inference runs eager
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin._compiled_call_impl is None and list(twin.state_dict()) == keys
    uncompile(model)
    assert compiled(model) is None


@pytest.mark.parametrize("how", ["backend fails", "backward fails", "dynamo rejects the forward", "unknown backend"])
def test_a_network_that_cannot_compile_runs_eager_with_one_warning_naming_why(how):
    class Rejected(nn.Module):  # with fullgraph=True dynamo refuses a graph break
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            torch._dynamo.graph_break()
            return self.fc(x)

    model, options, why = {
        "backend fails": (net(), {"backend": broken_backend}, "no kernels for this graph"),
        "backward fails": (net(), {"backend": aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=broken_backend)},
                           "no kernels for this graph"),  # AOTAutograd compiles it lazily unless told otherwise
        "dynamo rejects the forward": (Rejected(), {"backend": "eager", "fullgraph": True}, "Unsupported"),
        "unknown backend": (net(), {"backend": "no_such_backend"}, "InvalidBackend"),
    }[how]
    expected = copy.deepcopy(model)
    x = torch.randn(4, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call = compile_in_place(model, "the net", **options)
        outs = [model(x) for _ in range(3)]  # the error comes at the first (lazy) compiled call
    ours = [w for w in caught if issubclass(w.category, CompileFallback)]
    assert len(ours) == 1 and why in str(ours[0].message) and "the net runs eager" in str(ours[0].message)
    assert call.failed and call.calls == 0
    for out in outs:
        torch.testing.assert_close(out, expected(x))  # BatchNorm's running stats updated once per call, as eager
        out.sum().backward()  # eager's backward


def test_the_models_own_error_is_raised_not_hidden_behind_a_fallback():
    model = net()
    compile_in_place(model, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallback)
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            model(torch.randn(4, 7))


def test_hooks_added_after_compile_see_every_call_they_exist_for():
    """torch 2.14's dynamo guards only on the number of hooks: a graph traced with one hook
    closure replays that closure for a later one, whose statistics were never recorded."""
    model = net()
    call = compile_in_place(model, backend="eager")  # plain model.compile(backend="eager") loses rounds 2 and 3
    x = torch.randn(8, 6)
    seen = []
    for _ in range(3):
        box = {}
        handle = model[2].register_forward_hook(lambda m, i, out, box=box: box.update(activation_stats(out, m)))
        model(x).sum().backward()
        handle.remove()
        model(x).sum().backward()  # no hook: compiled
        seen.append(box)
    assert all(set(s) == {"mean", "std", "inactive"} for s in seen)
    assert call.calls == 3 and call.eager_calls == 3  # hooked calls eager, the others compiled


# ----------------------------------------------------------------------------- in a Trainer


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(tmp_path, compile_cb: CompileModel | None, epochs: int = 3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (150, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 4, (150,), generator=g)
    torch.manual_seed(0)
    module = Classifier(MLP(64, [16, 12], 4, batch_norm=True),
                        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    losses, health = Losses(), GradientHealth(every_n_steps=3, plot=False, verbose=False)
    callbacks = [losses, health, LayerFreezing(frozen="hidden1", unfreeze_at_epoch=1, cache=False, verbose=False),
                 GradientClipping(threshold=0.5), NonFiniteGuard()] + ([compile_cb] if compile_cb else [])
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    train, val = TensorLoader(x, y, 30, shuffle=True), TensorLoader(x[:60], y[:60], 30)  # one batch size: no recompile for it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, CompileFallback)]
    return module, losses.losses, health.history, fallbacks


def test_a_fit_whose_network_cannot_compile_finishes_eager_with_one_warning(tmp_path):
    cb = CompileModel(True, backend=broken_backend, verbose=False)
    _, losses, health, fallbacks = fit(tmp_path, cb, epochs=1)  # eager's outputs after a fallback: the unit test above
    assert len(fallbacks) == 1 and "no kernels for this graph" in fallbacks[0]
    assert cb.call.failed.startswith("BackendCompilerFailed") and cb.call.calls == 0
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses) and len(health) == 2  # the whole epoch trained


@pytest.mark.slow
def test_compiled_training_matches_eager_with_every_callback(tmp_path):
    """Inductor against eager, same seed: losses, GradientHealth's samples (hooks added after
    compile), LayerFreezing's unfreeze (a recompile), clipping, NonFiniteGuard, a schedule."""
    _, eager, eager_health, _ = fit(tmp_path / "eager", None)
    cb = CompileModel(True, verbose=False)
    module, losses, health, fallbacks = fit(tmp_path / "compiled", cb)
    assert not fallbacks and cb.call.failed is None and cb.call.calls > 0 and compiled(module.model) is None  # eager again after fit
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    assert [h["step"] for h in health] == [h["step"] for h in eager_health] and len(health) >= 5
    for ours, theirs in zip(health, eager_health):
        assert ours["act"].keys() == theirs["act"].keys() == {"hidden1", "hidden2", "output"}
        for layer, stats in theirs["act"].items():
            assert ours["act"][layer] == pytest.approx(stats, rel=1e-3, abs=1e-5)
        assert ours["grad"] == pytest.approx(theirs["grad"], rel=1e-3, abs=1e-6, nan_ok=True)
    assert math.isnan(health[0]["grad"]["hidden1"]) and not math.isnan(health[-1]["grad"]["hidden1"])  # unfrozen: trains


# ----------------------------------------------------------------------------- export


def test_the_export_works_from_a_compiled_network(fake_data, tmp_path):
    from dnnkit.build import build_module, instantiate
    from dnnkit.runner import export_stage

    cfg = compose_config(["model.hidden=[8]", "data.val_size=100"])
    module = build_module(cfg)
    compile_in_place(module.model, backend="eager")
    module.model(torch.rand(4, 1, 28, 28)).sum().backward()  # compiled once
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    assert all(not k.startswith("model._orig_mod") for k in module.state_dict())
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallback)
        export_stage(module.model, OmegaConf.merge(cfg, {"seed": 0}), dm, str(ckpt), tmp_path, {})
    if not (tmp_path / "model.pt2").is_file():  # the runner may write it later, from model.pt (after the table)
        import dnnkit.nn.export

        dnnkit.nn.export.save_program(tmp_path)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.pt2").is_file()
    program = torch.export.load(tmp_path / "model.pt2")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(program.module()(x), module.eval().model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("false", None)])
def test_the_runner_adds_the_callback_for_compile_true_or_auto(fake_data, tmp_path, value, expected):
    from dnnkit.runner import build_stage

    (name, cfg), = stage_configs(compose_config([f"compile={value}", "model.hidden=[8]", "data.val_size=100", "logger=[]"]))
    _, _, trainer, _, _ = build_stage(name, cfg, 0, tmp_path / name, {})
    ours = [c for c in trainer.callbacks if isinstance(c, CompileModel)]
    assert [c.compile for c in ours] == ([expected] if expected else [])


class Boom(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        raise RuntimeError("boom")


def test_a_fit_that_raises_leaves_the_network_eager_and_torch_settings_as_they_were(tmp_path):
    import torch._functorch.config as aot

    before = aot.force_non_lazy_backward_lowering
    module = Classifier(MLP(64, [16], 4))
    trainer = L.Trainer(max_epochs=1, callbacks=[CompileModel(True, backend="eager", verbose=False), Boom()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    x, y = torch.randint(0, 256, (60, 8, 8), dtype=torch.uint8), torch.randint(0, 4, (60,))
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module, train_dataloaders=TensorLoader(x, y, 30))
    assert compiled(module.model) is None  # Lightning runs on_exception, not teardown, after an error
    assert aot.force_non_lazy_backward_lowering == before
