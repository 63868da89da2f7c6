"""Smoke tests: every plain-Python example in recipes/ runs (on synthetic data)."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, fake_data):
    result = load(path).main(["--epochs", "2", "--limit-batches", "3", "--val-size", "200"])
    assert result  # each example returns its metrics: test results or the epoch history


def test_subclass_example_adds_its_penalty(fake_data):
    module = load(EXAMPLES[[p.stem for p in EXAMPLES].index("subclass_classifier")])
    net = module.L2Classifier(module.MLP(784, [8], 10), l2=1.0)
    import torch

    logits, y = torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
    base = module.dnnkit.Classifier.loss(net, logits, y)
    assert net.loss(logits, y) > base
