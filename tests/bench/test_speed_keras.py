"""The Keras peers of ``python -m bench.speed``: the network they are given, the skip line when
their packages are missing, and (slow, with Keras and JAX installed) a fit in the child process."""

import importlib.util

import pytest

from bench import baselines, keras_peers, speed
from bench.common import stage_config
from tests.bench.sections import number, section, table


def spec_of(recipe: str, stage: str | None = None, overrides=()) -> dict:
    name, cfg = stage_config(recipe, stage, ["data.val_size=200", *overrides])
    dm, model = baselines._seeded(cfg)
    dm.setup("fit")
    return keras_peers.keras_spec(cfg, model, dm.train_dataloader())


def test_the_keras_twin_of_mnist_bn_is_the_recipes_network(fake_data):
    spec = spec_of("mnist_bn")
    assert spec["hidden"] == [300, 200] and spec["n_outputs"] == 10 and spec["input_shape"] == [1, 28, 28]
    assert spec["batch_norm"] and spec["output_batch_norm"] and spec["bn_momentum"] == 0.1
    assert spec["init"] == {"scale": 1.0, "mode": "fan_in", "distribution": "truncated_normal"}  # the recipe's lecun
    assert spec["sgd"] == {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}
    assert spec["scale"] == pytest.approx(1 / 255) and spec["offset"] == 0.0


def test_the_keras_twin_of_transfer_stage_a(fake_data):
    spec = spec_of("transfer", "A")
    assert spec["hidden"] == [300, 100, 50, 50, 50] and spec["n_outputs"] == 8 and spec["activation"] == "selu"
    assert not spec["batch_norm"] and spec["init"] == {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform"}
    assert spec["sgd"]["learning_rate"] == 0.001


def test_a_network_without_a_keras_twin_is_skipped_with_the_reason(fake_data):
    with pytest.raises(keras_peers.Skipped, match="SGD"):
        spec_of("mnist_bn", overrides=["optimizer=adam"])


def test_missing_packages_skip_the_contender_with_the_install_line(fake_data, results, monkeypatch, capsys):
    real = importlib.util.find_spec
    # both absent, whether or not this machine has them (CI installs no [bench] extra)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("jax", "keras") else real(name, *a))
    assert keras_peers.missing("keras-jax") == "keras-jax: skipped, keras and jax not installed (pip install 'dnnkit[bench]')"
    assert speed.main(["--rounds", "2", "--epochs", "2", "--threads", "1", "--only", "keras-jax", "raw", "--results", str(results),
                       "data.val_size=200"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("keras-jax: skipped") for line in printed) == 1  # dropped at its first fit, not retried
    text = section(results, "speed")
    assert list(table(text, "loop")) == ["raw"] and "Not run: keras-jax: skipped, keras and jax not installed" in text


@pytest.mark.slow
@pytest.mark.skipif(keras_peers.missing("keras-jax") is not None, reason="keras or jax not installed (pip install 'dnnkit[bench]')")
def test_keras_on_jax_fits_in_its_child_process_beside_dnnkit(fake_data, results):
    assert speed.main(["--rounds", "2", "--epochs", "2", "--threads", "1", "--only", "dnnkit", "keras-jax",
                       "--results", str(results), "data.val_size=200"]) == 0
    text = section(results, "speed")
    rows, ratios = table(text, "loop"), table(text, "ratio")
    assert list(rows) == ["dnnkit", "keras-jax"] and number(rows["keras-jax"][3]) == 2  # 2 rounds, 1 timed epoch each
    assert 0 <= number(rows["keras-jax"][5]) <= 1 and number(ratios["dnnkit / keras-jax"][0]) > 0
    assert "<= 1.00" in ratios["dnnkit / keras-jax"][3]
