"""Caching frozen layers: same batches, same order, same weights as without the cache."""

import pytest
import torch

from dnnkit.data.feature_cache import FeatureLoader, compute_features
from dnnkit.data.loader import TensorLoader
from dnnkit.nn import MLP
from dnnkit.nn.freeze import NotABottom, freeze, frozen_bottom, skip
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config


def test_feature_loader_keeps_order_and_batches():
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    raw = TensorLoader(images, torch.arange(50), 8, shuffle=True, seed=3)
    net = MLP(784, [16, 8, 4], 3, batch_norm=True)
    bottom, layers = frozen_bottom(net, list(freeze(net, "hidden[12]")))
    cached = FeatureLoader(compute_features(bottom, raw, chunk=7), raw)
    for loader in (raw, cached):
        loader.sampler.set_epoch(2)
    reference = [net(x) for x, _ in raw]
    skip(layers)
    for (x, y), (_xr, yr), out in zip(cached, raw, reference):
        assert torch.equal(y, yr) and x.shape == (len(y), 8)
        torch.testing.assert_close(net(x), out)


def test_only_a_bottom_is_cached():
    net = MLP(784, [16, 8, 4], 3)
    with pytest.raises(NotABottom, match=r"\['hidden2'\] are not the bottom"):
        frozen_bottom(net, ["hidden2"])
    seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    bottom, _ = frozen_bottom(seq, ["0", "1"])
    assert bottom(torch.ones(1, 4)).shape == (1, 4)


@pytest.mark.parametrize("freezing", ["frozen: 'hidden[12]'", "trainable: 'hidden3|output'"])
def test_cached_run_equals_uncached_run(fake_data, tmp_path, freezing, capsys):
    def run(cache, folder):
        cb = f"+callbacks.layer_freezing={{_target_: dnnkit.callbacks.LayerFreezing, {freezing}, cache: {cache}}}"
        cfg = compose_config(FAST + ["trainer.max_epochs=2", "trainer.deterministic=true", "model.hidden=[40,30,20]", cb])
        return run_recipe(cfg, tmp_path / folder)[0]

    cached, plain = run("true", "cached"), run("false", "plain")
    assert "caching the outputs of model.hidden1, model.hidden2" in capsys.readouterr().out
    a, b = read_state_dict(cached.best_checkpoint), read_state_dict(plain.best_checkpoint)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    for k in ("val/acc", "test/acc"):
        assert cached.metrics[k] == pytest.approx(plain.metrics[k], abs=1e-3)
