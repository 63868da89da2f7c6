"""GradientClipping: the pure functions, and what the optimizer sees inside its step."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dnnkit.callbacks import GradientClipping
from dnnkit.callbacks.gradient_clipping import adaptive_clip_, clip_by_global_norm_, clip_by_param_norm_, clip_by_value_, grad_norm
from dnnkit.errors import DnnkitError


class ProbeSGD(torch.optim.SGD):
    """SGD that records the gradients it is about to apply, inside ``step``: after Lightning's
    closure (forward, backward, ``on_before_optimizer_step``) has run."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        super().step()
        return loss


class PlainNet(L.LightningModule):
    """Not a dnnkit module: a Sequential with a loss scaled up so gradients are large."""

    def __init__(self, scale: float = 100.0, lr: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.output = nn.Linear(16, 3)
        self.scale, self.lr = scale, lr
        self.probe: ProbeSGD | None = None

    def forward(self, x):
        return self.output(self.net(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.scale * nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        self.probe = ProbeSGD(self.parameters(), lr=self.lr)
        return self.probe


def loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=16)


def fit(callback, tmp_path, module=None, **trainer_kwargs):
    module = module or PlainNet()
    trainer = L.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **trainer_kwargs)
    trainer.fit(module, loader())
    return module, trainer


def test_value_clipping_every_element_the_optimizer_sees_is_within_threshold(tmp_path):
    """Issue check 3: mode=value, threshold=1.0; gradients read inside the optimizer step."""
    module, _ = fit(GradientClipping(mode="value", threshold=1.0), tmp_path)
    seen = module.probe.seen
    assert len(seen) == 8
    largest = max(g.abs().max().item() for step in seen for g in step)
    assert largest <= 1.0
    assert largest == 1.0  # the loss is scaled so that clipping really happens


def test_without_clipping_the_probe_sees_large_gradients(tmp_path):
    module = PlainNet()
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(module, loader())
    assert max(g.abs().max().item() for step in module.probe.seen for g in step) > 1.0


@pytest.mark.parametrize("threshold", [1.0, 0.25])
def test_norm_clipping_global_norm_within_threshold(tmp_path, threshold):
    """Issue check 3: mode=norm; the global norm over all parameters, inside the step."""
    clip = GradientClipping(mode="norm", threshold=threshold)
    module, _ = fit(clip, tmp_path)
    norms = [torch.linalg.vector_norm(torch.stack([g.norm() for g in step])).item() for step in module.probe.seen]
    assert max(norms) <= threshold * (1 + 1e-5)
    assert max(norms) >= threshold * (1 - 1e-5)  # clipped to the threshold, not below
    assert clip.stats["steps"] == 8 and clip.stats["clipped_steps"] == 8


def test_norm_clipping_counts_only_what_the_optimizer_steps(tmp_path):
    # the module trains only its output; the body keeps requires_grad (so it gets gradients),
    # which must not enter the global norm: the output's gradients end at the threshold
    class OutputOnly(PlainNet):
        def configure_optimizers(self):
            self.probe = ProbeSGD(self.output.parameters(), lr=self.lr)
            return self.probe

    module, _ = fit(GradientClipping(mode="norm", threshold=0.25), tmp_path, OutputOnly())
    norms = [torch.linalg.vector_norm(torch.stack([g.norm() for g in step])).item() for step in module.probe.seen]
    assert norms == pytest.approx([0.25] * 8, rel=1e-5)  # were below it: scaled by a norm that counted the body too


def test_param_norm_clipping_each_parameter(tmp_path):
    module, _ = fit(GradientClipping(mode="param_norm", threshold=0.5), tmp_path)
    for step in module.probe.seen:
        assert all(g.norm().item() <= 0.5 * (1 + 1e-5) for g in step)
        # per parameter, not global: the global norm is above the threshold
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in step])).item() > 0.5


def test_agc_clips_units_relative_to_weights_and_leaves_output_alone(tmp_path):
    module = PlainNet()
    fit(GradientClipping(mode="agc", clip_factor=0.01), tmp_path, module=module)
    names = [n for n, p in module.named_parameters()]
    for step in module.probe.seen:
        grads = dict(zip(names, step))
        # hidden weights: per output row, the gradient norm is at most 0.01 x the row's norm (weights
        # move between steps, so compare with a little slack against the weights after the run)
        for name in ("net.0.weight", "net.2.weight"):
            w = dict(module.named_parameters())[name].detach()
            limit = 0.01 * w.norm(dim=1).clamp(min=1e-3)
            assert (grads[name].norm(dim=1) <= limit * 1.1).all(), name
        assert grads["output.weight"].norm() > 0.1  # excluded: not clipped to 1% of the weights


def test_statistics_logged_and_clipped_shares(tmp_path):
    clip = GradientClipping(mode="value", threshold=1.0)
    _, trainer = fit(clip, tmp_path)
    metrics = trainer.callback_metrics
    assert math.isclose(float(metrics["grad/clipped_steps"]), 1.0)
    assert 0 < float(metrics["grad/clipped_elements"]) < 1
    assert float(metrics["grad/norm"]) > 1.0  # before clipping
    assert clip.stats["steps"] == 8
    assert clip.stats["elements"] == 8 * sum(p.numel() for p in PlainNet().parameters())


def test_state_survives_checkpoint_resume(tmp_path):
    clip = GradientClipping(mode="norm", threshold=1.0)
    module = PlainNet()
    trainer = L.Trainer(max_epochs=1, callbacks=[clip], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader())
    ckpt = tmp_path / "one.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = GradientClipping(mode="norm", threshold=1.0)
    L.Trainer(max_epochs=2, callbacks=[resumed], logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(PlainNet(), loader(), ckpt_path=ckpt)
    assert resumed.stats["steps"] == 8 and resumed.stats["clipped_steps"] == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "clipnorm"}, "unknown gradient clipping mode 'clipnorm'; valid: agc, norm, param_norm, value"),
    ({"threshold": 0}, "threshold must be a positive number, got 0"),
    ({"threshold": -1.0}, "threshold must be a positive number, got -1.0"),
    ({"threshold": float("nan")}, "threshold must be a positive number, got nan"),
    ({"clip_factor": "0.1"}, "clip_factor must be a positive number, got '0.1'"),
    ({"mode": "agc", "exclude": "fc[1"}, "'fc\\[1' is not a valid regular expression"),
])
def test_bad_arguments_fail_in_the_constructor(kwargs, message):
    with pytest.raises(DnnkitError, match=message.replace("(", "\\(").replace(")", "\\)")):
        GradientClipping(**kwargs)


def test_agc_exclude_pattern_that_matches_nothing_names_the_layers(tmp_path):
    with pytest.raises(DnnkitError, match="'head' matches no layer of PlainNet; layers are: net, net.0"):
        fit(GradientClipping(mode="agc", exclude="head"), tmp_path)


def test_pure_functions_without_a_trainer():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])
    assert float(grad_norm([a, b])) == pytest.approx(5.0)
    assert clip_by_value_([a, b], 2.0) == (2, 4)
    assert a.grad.tolist() == [2.0, 0.0] and b.grad.tolist() == [0.0, 2.0]
    assert float(clip_by_global_norm_([a, b], 1.0)) == pytest.approx(8 ** 0.5)
    assert float(grad_norm([a, b])) == pytest.approx(1.0, rel=1e-5)
    a.grad = torch.tensor([30.0, 40.0])
    assert clip_by_param_norm_([a, b], 1.0) == (1, 2)
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    w = nn.Parameter(torch.zeros(2, 3))  # zero weights: the eps floor still lets them move
    w.grad = torch.ones(2, 3)
    assert adaptive_clip_([w], clip_factor=0.5, eps=1e-3) == (2, 2)
    assert w.grad.norm(dim=1).tolist() == pytest.approx([5e-4, 5e-4], rel=1e-4)
