"""reuse: {from: A, search: ...} (dnnkit/search.py): every k in both modes tried, each try the
stage it says (lowest k reused, frozen and cached or fine-tuned, the top dropped or replaced),
the best validation score picked and only it tested; a range beyond the source's layers and a
search whose every try fails refused with what is valid; a finished search loaded on resume."""

import copy
import json
import logging
import signal
from functools import partial

import pytest
import torch

from dnnkit.data.base import TensorDataModule
from dnnkit.errors import DnnkitError
from dnnkit.nn.surgery import read_state_dict
from dnnkit.runner import run_recipe
from dnnkit.search import depths, pick, search_table
from tests.conftest import FAST, compose_config

TINY = [*FAST, "trainer.max_epochs=2", "model.hidden=[16,16,16]", "data.n_per_class=20",
        "stages.all_unfrozen=null", "stages.search.data.n_per_class=20"]


def search_config(*extra: str):
    return compose_config(["+recipe=reuse_search", *TINY, *extra])


def test_every_k_in_both_modes_is_tried_and_the_best_validation_score_is_picked(fake_data, tmp_path):
    cfg = search_config("stages.search.reuse.search.monitor=val/loss", "stages.search.reuse.search.mode=min")
    results = run_recipe(cfg, tmp_path / "run")
    a, found = results
    search, folder = found.search, tmp_path / "run" / "search"
    assert [(t["mode"], t["k"]) for t in search["tries"]] == [(m, k) for m in ("frozen", "fine_tuned") for k in (1, 2, 3)]
    assert all(t["error"] is None and t["value"] is not None for t in search["tries"])
    best = min(search["tries"], key=lambda t: t["value"])
    assert search["pick"] == best["try"] and found.metrics["val/loss"] == pytest.approx(best["value"])
    assert "test/acc" in found.metrics and found.dir == folder / best["try"]
    assert (found.dir / "model.pt").is_file() and (found.dir / "model.pt2").is_file()  # the pick alone is tested and exported
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [best["try"]]
    assert (folder / "search.png").stat().st_size > 0
    assert search_table(search) == (folder / "search.md").read_text().strip()


CACHED = "3 tries with frozen layers fitted on those layers' cached outputs"


@pytest.mark.parametrize("extra, loop", [
    ([], CACHED),
    (["stages.search.reuse.search.top=replace"], CACHED),
    (["data.augment=[crop:2]"], "fitted in Lightning's loop, not on cached outputs: the train split is augmented"),
])
def test_tries_side_by_side_equal_tries_on_their_own(fake_data, tmp_path, caplog, extra, loop):
    """One loop for all tries (the default) gives each try's validation scores and stop epoch as
    its own fit does (no dropout here, whose draws would interleave): the frozen tries on their
    cached outputs in a plain loop, or (augmented, so nothing is cached) in Lightning's with the others."""
    common = ["trainer.max_epochs=6", "stages.search.reuse.search.patience=2", *extra]
    with caplog.at_level(logging.INFO, logger="dnnkit.modules.bundle"):
        parallel = run_recipe(search_config(*common), tmp_path / "a")[-1].search
    assert loop in caplog.text
    alone = run_recipe(search_config(*common, "stages.search.reuse.search.parallel=false"), tmp_path / "b")[-1].search
    assert [t["try"] for t in parallel["tries"]] == [t["try"] for t in alone["tries"]]
    for p, a in zip(parallel["tries"], alone["tries"]):
        assert p["value"] == pytest.approx(a["value"], abs=1e-6) and p["epochs"] == a["epochs"], (p, a)
    assert parallel["pick"] == alone["pick"]
    history = lambda run: json.loads((tmp_path / run / "search" / parallel["pick"] / "fit.json").read_text())["history"]
    assert [h["val/loss"] for h in history("a")] == pytest.approx([h["val/loss"] for h in history("b")], abs=1e-5)


def test_each_try_reuses_the_lowest_k_layers_frozen_or_fine_tuned_and_drops_the_rest(fake_data, tmp_path):
    run_recipe(search_config("stages.search.reuse.search.k=[2]", "stages.search.reuse.search.parallel=false"), tmp_path / "run")
    source = read_state_dict(tmp_path / "run" / "A" / "checkpoints" / "best.ckpt")
    for mode in ("frozen", "fine_tuned"):
        folder = tmp_path / "run" / "search" / f"{mode}_k2"
        state = read_state_dict(next((folder / "checkpoints").glob("best*.ckpt")))
        assert sorted({k.split(".")[1] for k in state if k.startswith("model.")}) == ["hidden1", "hidden2", "output"]
        assert state["model.output.weight"].shape == (5, 16)  # a new output on hidden2
        same = [torch.equal(state[f"model.{n}.linear.weight"], source[f"model.{n}.linear.weight"]) for n in ("hidden1", "hidden2")]
        assert same == ([True, True] if mode == "frozen" else [False, False])  # frozen stays A's; fine-tuned moved on
    assert (tmp_path / "run" / "search" / "frozen_k2" / "result.json").is_file()


def test_replace_keeps_the_shape_with_new_layers_above_k(fake_data, tmp_path):
    run_recipe(search_config("stages.search.reuse.search.k=[1]", "stages.search.reuse.search.top=replace",
                             "stages.search.reuse.search.modes=[frozen]", "stages.search.reuse.search.parallel=false"), tmp_path / "run")
    state = read_state_dict(next((tmp_path / "run" / "search" / "frozen_k1" / "checkpoints").glob("best*.ckpt")))
    source = read_state_dict(tmp_path / "run" / "A" / "checkpoints" / "best.ckpt")
    assert {"model.hidden3.linear.weight", "model.output.weight"} <= set(state)
    assert torch.equal(state["model.hidden1.linear.weight"], source["model.hidden1.linear.weight"])
    assert not torch.equal(state["model.hidden2.linear.weight"], source["model.hidden2.linear.weight"])


def test_a_finished_search_is_loaded_on_resume_and_a_fitted_one_goes_to_the_test(fake_data, tmp_path):
    cfg = search_config("stages.search.reuse.search.k=[1,3]")
    first = run_recipe(cfg, tmp_path / "run")[-1]
    again = run_recipe(search_config("stages.search.reuse.search.k=[1,3]", "resume=true"), tmp_path / "run")[-1]
    assert again.search == first.search and again.metrics == first.metrics and again.dir == first.dir
    folder = tmp_path / "run" / "search"
    fitted = (folder / "tries.json").stat().st_mtime_ns
    (folder / "result.json").unlink()  # as if killed in the pick's test: the tries are not fitted again
    (first.dir / "fit.json").write_text((first.dir / "fit.json").read_text().replace('"tested": true', '"tested": false'))
    third = run_recipe(search_config("stages.search.reuse.search.k=[1,3]", "resume=true"), tmp_path / "run")[-1]
    assert (folder / "tries.json").stat().st_mtime_ns == fitted
    assert third.search["tries"] == first.search["tries"] and third.metrics == first.metrics


def test_k_beyond_the_source_layers_is_refused_before_training(fake_data, tmp_path):
    with pytest.raises(DnnkitError, match=r"reuse.search.k=\[2, 7\]: each k must be an integer in 1..3, the source's 3 "
                                          r"candidate layers \(hidden1, hidden2, hidden3\)"):
        run_recipe(search_config("stages.search.reuse.search.k=[2,7]"), tmp_path / "run")
    assert not (tmp_path / "run" / "A").exists()
    with pytest.raises(DnnkitError, match="unknown reuse.search mode 'frozn'; valid: fine_tuned, frozen"):
        run_recipe(search_config("stages.search.reuse.search.modes=[frozn]"), tmp_path / "run")


def test_a_search_whose_every_try_fails_lists_each_error(fake_data, tmp_path):
    fail = "+stages.search.callbacks.fail={_target_: tests.probes.FailFit}"
    with pytest.raises(DnnkitError, match=r"a parallel reuse search fits every try in one loop and runs none of the callbacks \['fail'\]"):
        run_recipe(search_config("stages.search.reuse.search.k=[1,2]", fail), tmp_path / "run")
    with pytest.raises(DnnkitError) as err:
        run_recipe(search_config("stages.search.reuse.search.k=[1,2]", "stages.search.reuse.search.parallel=false", fail), tmp_path / "run")
    lines = str(err.value).splitlines()
    assert lines[0] == "every try of the reuse search failed or logged no val/acc:"
    assert lines[1:] == [f"  {m}_k{k}: RuntimeError: probe: this fit fails" for m in ("frozen", "fine_tuned") for k in (1, 2)]


def test_depths_and_pick():
    names = ["hidden1", "hidden2", "hidden3", "hidden4"]
    assert depths({"k": None}, names) == [1, 2, 3, 4]
    assert depths({"k": {"low": 2, "high": 3}}, names) == [2, 3]
    assert depths({"k": [3, 1, 3]}, names) == [1, 3]
    with pytest.raises(DnnkitError, match="in 1..4"):
        depths({"k": [0]}, names)
    rows = [{"try": "a", "value": 0.5}, {"try": "b", "value": 0.7}, {"try": "c", "value": 0.7}, {"try": "d", "value": None, "error": "x"}]
    assert pick(rows, "val/acc", "max")["try"] == "b" and pick(rows, "val/loss", "min")["try"] == "a"
    with pytest.raises(DnnkitError, match="  d: x"):
        pick(rows[3:], "val/acc", "max")


def frozen_tries(**mlp) -> tuple[dict, dict]:
    """Three classifiers reusing the lowest k = 1..3 layers of one MLP (``mlp``: its options),
    frozen, each with a new output; and their frozen layers' names."""
    from dnnkit import Classifier
    from dnnkit.nn import MLP, freeze

    torch.manual_seed(0)
    source = MLP(64, [12, 10, 8], 3, **mlp)
    members = {}
    for k in (1, 2, 3):
        net = MLP(64, [12, 10, 8], 3, **mlp)
        net.load_state_dict(source.state_dict())
        torch.nn.init.normal_(net.output.weight)
        members[f"frozen_k{k}"] = Classifier(net)
        freeze(members[f"frozen_k{k}"].model, "|".join(f"hidden{i}" for i in range(1, k + 1)))
    return members, {n: [f"model.hidden{i}" for i in range(1, int(n[-1]) + 1)] for n in members}


def test_a_bundle_shares_equal_frozen_bottoms_and_gives_each_member_its_own_outputs():
    from dnnkit import Classifier
    from dnnkit.modules.bundle import TryBundle
    from dnnkit.nn import MLP, freeze

    members, frozen = frozen_tries()
    odd = Classifier(MLP(64, [12, 10, 8], 3))  # its own hidden1: not the chain's
    freeze(odd.model, "hidden1")
    members["other"] = odd
    members["fine_tuned"] = Classifier(copy.deepcopy(members["frozen_k3"].model))
    own = {n: copy.deepcopy(m).eval() for n, m in members.items()}
    bundle = TryBundle(members, torch.optim.Adam, frozen={**frozen, "other": ["model.hidden1"]}).eval()
    assert bundle._depth == {"frozen_k1": 1, "frozen_k2": 2, "frozen_k3": 3}  # "other" differs, so it keeps its forward
    x = torch.rand(5, 1, 8, 8)
    out = bundle.outputs(x)
    for n, m in own.items():
        assert torch.allclose(out[n], m(x), atol=1e-6), n
    bundle.on_train_end()  # unskips: each member computes its whole forward again
    assert torch.allclose(members["frozen_k2"](x), own["frozen_k2"](x), atol=1e-6)


class Blobs(TensorDataModule):
    """120 random 8x8 images of 3 classes, no test split."""

    name = "blobs"

    def source_labels(self, split):
        return torch.arange(120) % 3 if split == "train" else None

    def load_source(self, split):
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (120, 8, 8), dtype=torch.uint8, generator=g), self.source_labels(split)

    def source_class_names(self):
        return ["a", "b", "c"]

    def input_shape(self):
        return (1, 8, 8)


def bundle_and_trainer(members: dict, frozen: dict, batch_size: int = 16, **trainer):
    import lightning as L

    from dnnkit.modules.bundle import TryBundle

    bundle = TryBundle(members, partial(torch.optim.Adam, lr=0.01), ("val/acc", "max"), ("val/loss", "min", 2, 0.0), frozen)
    trainer = L.Trainer(**{"max_epochs": 8, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                           "enable_model_summary": False, **trainer})
    return bundle, trainer, Blobs(batch_size=batch_size, val_size=0.25, test_size=12)


@pytest.mark.parametrize("mlp, batch_size", [({}, 16), ({"batch_norm": True, "dropout": 0.3}, 27)])
def test_frozen_tries_on_cached_outputs_train_as_in_lightnings_loop(caplog, mlp, batch_size):
    """The plain loop on the cached chain (what a parallel search does for its frozen tries) gives
    each member the history, best epoch and weights that Lightning's loop over the images gives:
    with batch norm and dropout above the frozen layers too (train and eval modes, the same draws)."""
    members, frozen = frozen_tries(**mlp)
    cached, trainer, data = bundle_and_trainer(copy.deepcopy(members), frozen, batch_size)
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="dnnkit.modules.bundle"):
        cached.fit(trainer, data)
    assert "3 tries with frozen layers fitted on those layers' cached outputs" in caplog.text
    looped, trainer, data = bundle_and_trainer(members, frozen, batch_size)
    torch.manual_seed(1)
    trainer.fit(looped, datamodule=data)
    assert cached.stopped == looped.stopped and min(looped.stopped.values()) < 8  # some stopped early
    for n in members:
        assert [h["val/loss"] for h in cached.history[n]] == pytest.approx([h["val/loss"] for h in looped.history[n]], abs=1e-6)
        assert cached.best[n]["epoch"] == looped.best[n]["epoch"]
        for k, v in cached.member_state(n).items():
            assert torch.allclose(v.float(), looped.member_state(n)[k].float(), atol=1e-6), (n, k)
    x = torch.rand(4, 1, 8, 8)
    cached.eval(), looped.eval()
    assert torch.allclose(cached.members["frozen_k2"](x), looped.members["frozen_k2"](x), atol=1e-6)  # both unskipped


@pytest.mark.parametrize("trainer, why", [
    ({}, None),
    ({"limit_train_batches": 3, "limit_val_batches": 1}, None),  # counts of batches: mirrored
    ({"limit_train_batches": 0.5}, "trainer.limit_train_batches=0.5"),
    ({"val_check_interval": 1}, "trainer.val_check_interval=1"),  # an int: after every batch
    ({"min_epochs": 2}, "trainer.min_epochs=2"),
    ({"max_time": {"seconds": 60}}, "the callback Timer"),
    ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2"),
])
def test_what_the_plain_loop_does_not_mirror_is_named(trainer, why):
    from dnnkit.modules.bundle import not_plain

    _, trainer, _ = bundle_and_trainer(*frozen_tries(), **trainer)
    assert not_plain(trainer) == why


def test_a_signal_stops_the_cached_loop_and_the_members_compute_their_whole_forward(monkeypatch):
    from dnnkit import interrupt

    members, frozen = frozen_tries()
    own = copy.deepcopy(members)
    bundle, trainer, data = bundle_and_trainer(members, frozen)
    monkeypatch.setattr(interrupt, "_received", [signal.SIGTERM])
    with pytest.raises(interrupt.Interrupted):
        bundle.fit(trainer, data)
    assert bundle.history == {n: [] for n in bundle.members}
    x = torch.rand(4, 1, 8, 8)
    assert all(torch.equal(bundle.members[n].eval()(x), own[n].eval()(x)) for n in own)  # not a step taken, all unskipped


def test_a_parallel_search_refuses_bounds_each_try_cannot_keep(fake_data, tmp_path):
    with pytest.raises(DnnkitError, match=r"^a parallel reuse search takes no trainer.min_epochs, trainer.max_time; set "
                                          r"reuse.search.parallel=false to fit each try on its own$"):
        run_recipe(search_config("+trainer.min_epochs=3", "+trainer.max_time=00:00:10:00"), tmp_path / "run")
