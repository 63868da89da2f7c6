"""+recipe=auxiliary task=pairs (Hands-On ML 1e, ch. 11, ex. 10): the pairs (half same, seeded by
(seed, epoch), resumable; the two splits disjoint and fixed whatever the seed), the towers, a
tower reused into the classifier by name, the recipe composed and run on tiny fake data, and a
dataset of one class refused in one line. (One file: tests/ has no packages, so two test
modules may not share a name.)"""

import pytest
import torch

from dnnkit.data.datamodule import load_arrays
from dnnkit.data.idx import write_idx
from dnnkit.data.pairs import PairLoader, PairsDataModule, draw_pairs
from dnnkit.errors import DnnkitError
from dnnkit.modules import Classifier, PairClassifier
from dnnkit.nn import MLP, Towers, reuse_layers
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from dnnkit.stages import stage_configs
from tests.conftest import FAST, compose_config, make_images, write_fake_dataset

LABELS = torch.arange(200) % 7  # 7 classes, uneven counts
IMAGES = torch.randint(0, 256, (200, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_half_the_pairs_are_same_and_the_targets_say_which():
    pairs, same = draw_pairs(LABELS, 501, seed=5)
    assert pairs.shape == (501, 2) and int(same.sum()) == 250
    truth = LABELS[pairs[:, 0]] == LABELS[pairs[:, 1]]
    assert torch.equal(truth.long(), same)
    assert not (pairs[:, 0] == pairs[:, 1]).any()  # a same pair is two images, not one twice
    assert 0 < int(same[:100].sum()) < 100  # shuffled: same and different mixed, not in two blocks
    different = pairs[same == 0]
    assert len(set(LABELS[different[:, 1]].tolist())) == 7  # every class is drawn as the other one


def test_pairs_are_a_function_of_the_seed():
    a, b, c = draw_pairs(LABELS, 300, 1), draw_pairs(LABELS, 300, 1), draw_pairs(LABELS, 300, 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def loader(**kwargs) -> PairLoader:
    return PairLoader(IMAGES, LABELS, n_pairs=100, batch_size=16, seed=3, **kwargs)


def epoch_batches(ld: PairLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ld.sampler.set_epoch(epoch)
    return list(ld)


def test_each_epoch_draws_new_pairs_the_same_for_every_run():
    first, again = loader(shuffle=True), loader(shuffle=True)
    e0, e1 = epoch_batches(first, 0), epoch_batches(first, 1)
    assert len(e0) == 7 and e0[0][0].shape == (16, 2, 8, 8) and e0[-1][0].shape == (4, 2, 8, 8)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(e0, epoch_batches(again, 0)))
    assert not torch.equal(e0[0][0], e1[0][0])
    fixed = loader(shuffle=False)  # validation and test pairs: one set, every epoch
    assert torch.equal(epoch_batches(fixed, 0)[0][0], epoch_batches(fixed, 4)[0][0])


def test_a_resumed_epoch_draws_the_same_pairs():
    whole = epoch_batches(loader(shuffle=True), 2)
    interrupted = loader(shuffle=True)
    interrupted.sampler.set_epoch(2)
    it = iter(interrupted)
    for _ in range(3):
        next(it)
    state = interrupted.state_dict()
    resumed = loader(shuffle=True)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 4
    assert all(torch.equal(x, y) and torch.equal(s, t) for (x, s), (y, t) in zip(rest, whole[3:]))


def test_the_pair_of_a_batch_is_its_two_images():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1).expand(6, 2, 2).contiguous()
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    x, same = next(iter(PairLoader(images, labels, n_pairs=40, batch_size=40)))
    ids = (x[:, :, 0, 0] * 255).round().long()  # the image index, recovered from its pixels
    assert torch.equal((labels[ids[:, 0]] == labels[ids[:, 1]]).long(), same)


def test_the_splits_are_disjoint_and_fixed_whatever_the_seed(fake_data):
    a = PairsDataModule(split2_per_class=20, val_size=50, seed=0)
    b = PairsDataModule(split2_per_class=20, val_size=50, seed=7)
    c = PairsDataModule(part="classifier", split2_per_class=20, val_size=50, seed=7)
    one, two = a.plan()["train"][1], a.plan()["val"][1]
    assert len(one) == 1000 and len(two) == 200 and not set(one.tolist()) & set(two.tolist())
    assert torch.equal(one, b.plan()["train"][1])  # the cut does not move with data.seed
    assert torch.equal(c.plan()["train"][1], two)  # the classifier trains on split 2 ...
    assert torch.bincount(c.plan()["train"][2]).tolist() == [20] * 10
    assert set(c.plan()["val"][1].tolist()) <= set(one.tolist()) and len(c.plan()["val"][1]) == 50  # ... validates on split 1
    assert PairsDataModule(split2_per_class=20, split_seed=1).plan()["val"][1].tolist() != two.tolist()
    assert c.input_shape() == (1, 28, 28) and a.input_shape() == (2, 28, 28) and a.num_classes == 2
    assert a.train_size() == 1000 and PairsDataModule(split2_per_class=20, pairs_per_epoch=64).train_size() == 64


def test_a_dataset_of_one_class_is_one_error(tmp_path, monkeypatch):
    folder = write_fake_dataset(tmp_path / "data" / "mnist")
    images, labels = make_images(1200, 0)
    write_idx(folder / "train-labels-idx1-ubyte.gz", torch.full_like(labels, 3))
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(tmp_path / "data"))
    load_arrays.cache_clear()
    with pytest.raises(DnnkitError, match=r"at least 2 classes.*all of class 3") as err:
        PairsDataModule(split2_per_class=20).train_size()
    assert "\n" not in str(err.value)
    load_arrays.cache_clear()
    with pytest.raises(DnnkitError, match=r"at least 2 classes.*all of class 0"):
        draw_pairs(torch.zeros(5, dtype=torch.long), 4, 0)


def test_bad_options_are_refused(fake_data):
    with pytest.raises(DnnkitError, match=r"data.part.*'pair'"):
        PairsDataModule(part="pair")
    with pytest.raises(DnnkitError, match=r"split2_per_class=200 but class \d has 120 training images; use split2_per_class <= 118"):
        PairsDataModule(split2_per_class=200).plan()
    with pytest.raises(DnnkitError, match=r"n_per_class must be null"):
        PairsDataModule(n_per_class=10)


TINY = [*FAST, "data.split2_per_class=20", "data.val_size=100", "stages.pairs.data.val_size=200",
        "stages.pairs.trainer.max_epochs=1", "stages.scratch.seeds=[0]", "stages.pretrained.seeds=[0]"]


def test_towers_are_separate_unless_shared():
    two, one = Towers(784, [12, 8], join=4), Towers(784, [12, 8], join=4, shared=True)
    assert [n for n, _ in two.named_children()] == ["tower_a", "tower_b", "join", "output"]
    assert sum(p.numel() for p in two.parameters()) > sum(p.numel() for p in one.parameters())
    x = torch.rand(5, 2, 28, 28)
    swapped = x.flip(1)
    assert torch.allclose(one.tower(x[:, 0]), one.tower(swapped[:, 1]))  # one tower sees both images alike
    assert not torch.allclose(two.tower(x[:, 0], "a"), two.tower(x[:, 0], "b"))  # two towers, two initialisations
    with pytest.raises(DnnkitError, match=r"pairs of shape \(B, 2, \.\.\.\), got \(5, 784\)"):
        two(torch.rand(5, 784))


def test_a_tower_is_copied_into_the_classifier_exactly():
    pairs = PairClassifier(Towers(784, [16, 16, 16]))
    clf = Classifier(MLP(784, [16, 16, 16], 10))
    report = reuse_layers(clf, pairs.state_dict(), "hidden.*", source_prefix="tower_a.")
    assert sorted(report) == ["model.hidden1", "model.hidden2", "model.hidden3"]
    for i in (1, 2, 3):
        assert torch.equal(getattr(clf.model, f"hidden{i}").linear.weight, getattr(pairs.model.tower_a, f"hidden{i}").linear.weight)
        assert not torch.equal(getattr(clf.model, f"hidden{i}").linear.weight, getattr(pairs.model.tower_b, f"hidden{i}").linear.weight)
    with pytest.raises(DnnkitError, match=r"layer 'model.hidden1' is ambiguous in the source: .*tower_a.hidden1.*tower_b.hidden1"):
        reuse_layers(clf, pairs.state_dict(), "hidden.*")  # two towers: say which
    shared = PairClassifier(Towers(784, [16, 16, 16], shared=True))
    assert sorted(reuse_layers(clf, shared.state_dict(), "hidden.*")) == ["model.hidden1", "model.hidden2", "model.hidden3"]


def test_the_pairs_task_composes_and_rotation_stays_the_default():
    stages = dict(stage_configs(compose_config(["+recipe=auxiliary", "task=pairs"])))
    assert list(stages) == ["pairs", "scratch", "pretrained"]
    assert stages["pairs"].model._target_ == "dnnkit.nn.Towers" and stages["pairs"].model.shared is False
    assert stages["pairs"].data.part == "pairs" and stages["scratch"].data.part == "classifier"
    assert stages["pretrained"].reuse.source_prefix == "tower_a."
    assert [s.published.value for s in stages.values()] == [0.976, 0.946, 0.965]
    assert list(dict(stage_configs(compose_config(["+recipe=auxiliary"])))) == [
        "auxiliary", "scratch_100", "pretrained_100", "scratch_10", "pretrained_10"]


@pytest.mark.slow  # ~10 s on 2 busy cores: three stages
def test_the_recipe_runs_and_the_frozen_tower_is_the_pair_networks(fake_data, tmp_path):
    results = run_recipe(compose_config(["+recipe=auxiliary", "task=pairs", *TINY]), tmp_path / "run")
    assert [r.stage for r in results] == ["pairs", "scratch", "pretrained"]
    assert all(0 <= r.metrics["test/acc"] <= 1 for r in results)
    pairs, pretrained = (read_state_dict(r.best_checkpoint) for r in (results[0], results[2]))
    for i in range(1, 6):
        key = f"hidden{i}.linear.weight"
        assert torch.equal(pretrained[f"model.{key}"], pairs[f"model.tower_a.{key}"])  # copied, then kept frozen
    assert "| pretrained |" in (tmp_path / "run" / "results.md").read_text()


def test_a_dataset_of_one_class_is_one_line(tmp_path, monkeypatch):
    folder = write_fake_dataset(tmp_path / "data" / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", torch.full_like(make_images(1200, 0)[1], 4))
    monkeypatch.setenv("DNNKIT_DATA_DIR", str(tmp_path / "data"))
    load_arrays.cache_clear()
    try:
        with pytest.raises(DnnkitError, match=r"^stage 'pairs': the pair task needs a dataset of at least 2 classes") as err:
            run_recipe(compose_config(["+recipe=auxiliary", "task=pairs", *TINY]), tmp_path / "run")
        assert "\n" not in str(err.value) and "all of class 4" in str(err.value)
    finally:
        load_arrays.cache_clear()
