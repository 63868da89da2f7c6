"""The bad-input catalogue: each entry fails before any training with one DnnkitError that
quotes the bad value and says what is valid, and leaves earlier runs' files untouched.

Most entries run in-process through ``run_recipe`` (what ``python -m dnnkit.train`` calls);
``test_cli_*`` run the real command for a few of them, to show the exit status, the single
message and the absent traceback (each CLI start costs seconds, so they are batched).
"""

import gzip
import hashlib
import json
import os
import subprocess
import zlib
from pathlib import Path

import pytest
import torch

from dnnkit.data.datamodule import load_arrays
from dnnkit.data.discovery import FILES
from dnnkit.data.idx import write_idx
from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
from dnnkit.results import StageResult
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config
from tests.probes import cli, cli_env


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def earlier(tmp_path) -> Path:
    """An earlier, finished run next to the one that fails (its files must not change)."""
    run = tmp_path / "runs" / "earlier"
    (run / "train" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": MLP(784, [8], 10).state_dict()}, run / "train" / "checkpoints" / "best.ckpt")
    marker = StageResult("train", 42, run / "train", {"val/acc": 0.5}, best_checkpoint=str(run / "train" / "checkpoints" / "best.ckpt"))
    (run / "train" / "result.json").write_text(json.dumps(marker.to_json()))  # a complete marker: what a finished stage leaves
    (run / "results.md").write_text("| train | 1 |\n")
    return run


def fails(overrides: list[str], match: str, run_dir: Path, earlier: Path, edit=None) -> DnnkitError:
    """``edit(cfg)``, where given, changes the composed config in ways an override cannot spell."""
    before = snapshot(earlier)
    cfg = compose_config(FAST + overrides)
    if edit is not None:
        edit(cfg)
    with pytest.raises(DnnkitError, match=match) as err:
        run_recipe(cfg, run_dir)
    assert snapshot(earlier) == before
    assert not list(run_dir.rglob("result*.json")) if run_dir.exists() else True
    assert "\n" not in str(err.value)  # one message
    return err.value


CATALOGUE = {
    # name: (overrides, the message must match)
    "optimizer name": (["+stages={a: {optimizer: adamw9}}"], r"unknown optimizer option 'adamw9'; valid: .*sgd"),
    "scheduler name": (["+stages={a: {scheduler: cosine9}}"], r"unknown scheduler option 'cosine9'; valid: .*none"),
    "activation name": (["model.activation=relu6"], r"unknown activation 'relu6'; valid: .*elu.*relu"),
    "init scheme": (["model.init=glorot9"], r"unknown init scheme 'glorot9'; valid: .*he"),
    "dataset name": (["data.name=cifar10"], r"unknown dataset 'cifar10'; valid: fashion_mnist, mnist"),
    "learning rate 0": (["optimizer.lr=0"], r"optimizer.lr must be a positive number, got 0"),
    "learning rate < 0": (["optimizer.lr=-0.1"], r"optimizer.lr must be a positive number, got -0.1"),
    "batch size 0": (["data.batch_size=0"], r"data.batch_size must be a positive integer, got 0"),
    "batch size < 0": (["data.batch_size=-32"], r"data.batch_size must be a positive integer, got -32"),
    "empty layer list": (["model.hidden=[]"], r"hidden must be a non-empty list of positive layer sizes, got \[\]"),
    "non-positive layer": (["model.hidden=[300,0]"], r"hidden must be a non-empty list of positive layer sizes, got \[300, 0\]"),
    "classes out of range": (["data.classes=[3,12]"], r"data.classes=\[3, 12\] is invalid: give at least two distinct labels from 0..9"),
    "n_per_class too large": (["data.n_per_class=5000"], r"n_per_class=5000 but class \d has only \d+ "
                                                         r"training images .* use n_per_class <= \d+"),
    "val_size too large": (["data.val_size=999999"], r"val_size must be an integer in \[0, 1200\), got 999999"),
    "epochs 0": (["trainer.max_epochs=0"], r"trainer.max_epochs must be a positive integer \(or -1\), got 0"),
    "hidden not a list": (["model.hidden=300"], r"hidden must be a list of layer sizes such as \[300, 100\], got 300"),
    "classes not a list": (["data.classes=5"], r"data.classes=5 is invalid"),
    "classes not integers": (["data.classes=[0.5,1.7]"], r"data.classes=\[0.5, 1.7\] is invalid"),
    "seeds not a list": (["+seeds=3"], r"stage 'train': seeds must be a list of distinct integers such as \[0, 1, 2\], got 3"),
    "published without value": (["+published={metric: test/acc, val: 0.99}"], r"stage 'train': published must be \{metric: .*, got"),
    "every stage null": (["+recipe=transfer", "stages.A=null", "stages.B_scratch=null", "stages.B_on_A=null"],
                         r"every stage of \['A', 'B_on_A', 'B_scratch'\] is switched off \(null\): nothing to run"),
    # issue 14, item 11: booleans are not numbers, anywhere
    "n_per_class true": (["data.n_per_class=true"], r"^data.n_per_class=true is a boolean, not a number: give an integer or null$"),
    "val_size true": (["data.val_size=true"], r"^data.val_size=true is a boolean, not a number: give an integer$"),
    "max_epochs true": (["trainer.max_epochs=true"], r"^trainer.max_epochs=true is a boolean, not a number: give an integer or null$"),
    "batch_size true": (["data.batch_size=true"], r"^data.batch_size=true is a boolean, not a number: give an integer$"),
    "devices true": (["trainer.devices=true"], r"^trainer.devices=true is a boolean, not a number"),
    "limit_train_batches true": (["trainer.limit_train_batches=true"],
                                 r"^trainer.limit_train_batches=true is a boolean, not a number: give a number or null$"),
    "hidden size true": (["model.hidden=[true,100]"], r"^model.hidden=\[true, 100\] holds a boolean, not a number: give integers$"),
    "momentum true": (["optimizer=momentum", "optimizer.momentum=true"],
                      r"^optimizer.momentum=true is a boolean, not a number: give a number$"),
    "unfreeze epoch true": (["callbacks=[default,layer_freezing]", "callbacks.layer_freezing.unfreeze_at_epoch=true"],
                            r"^callbacks.layer_freezing.unfreeze_at_epoch=true is a boolean, not a number: give an integer or null$"),
    "seed true": (["seed=true"], r"^seed=true is a boolean, not a number: give an integer in \[0, 4294967296\)$"),
    # issue 14, item 13: seeds and optimizer values, before anything trains
    "seed < 0": (["seed=-1"], r"^seed must be an integer in \[0, 4294967296\), got -1$"),
    "seed >= 2**32": (["seed=4294967296"], r"^seed must be an integer in \[0, 4294967296\), got 4294967296$"),
    "seed not a number": (["seed=abc"], r"^seed must be an integer in \[0, 4294967296\), got 'abc'$"),
    "seed not an integer": (["seed=1.5"], r"^seed must be an integer in \[0, 4294967296\), got 1.5$"),
    "seeds out of range": (["+seeds=[0,-3]"], r"^stage 'train': seeds must be integers in \[0, 4294967296\), got -3$"),
    "momentum < 0": (["optimizer=momentum", "optimizer.momentum=-0.5"], r"^optimizer.momentum must be a number in \[0, 1\), got -0.5$"),
    "momentum 1.5": (["optimizer=momentum", "optimizer.momentum=1.5"], r"^optimizer.momentum must be a number in \[0, 1\), got 1.5$"),
    "weight decay < 0": (["optimizer=adamw", "optimizer.weight_decay=-0.01"], r"^optimizer.weight_decay must be a number >= 0, got -0.01$"),
    "beta2 1": (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], r"^optimizer.betas\[1\] must be a number in \[0, 1\), got 1.0$"),
    "beta1 < 0": (["optimizer=adam", "optimizer.betas=[-0.1,0.999]"], r"^optimizer.betas\[0\] must be a number in \[0, 1\), got -0.1$"),
    "one beta": (["optimizer=adam", "optimizer.betas=[0.9]"],
                 r"^optimizer.betas must be two numbers \[beta1, beta2\] in \[0, 1\), got \[0.9\]$"),
    "optimizer key typo": (["+optimizer.momentm=0.9"], r"^optimizer: SGD takes no argument 'momentm'; valid: .*momentum.*weight_decay$"),
    # issue 14, items 12-13: model, data and callbacks checked against each other
    "n_inputs wrong": (["model.n_inputs=100"],
                       r"^model.n_inputs=100 but the data's images are 1x28x28 = 784 values: set model.n_inputs=784$"),
    "n_outputs wrong": (["model.n_outputs=5"],
                        r"^the model has 5 outputs \(model.n_outputs=5\) but the data has 10 classes: set model.n_outputs=10$"),
    "n_outputs vs classes": (["data.classes=[1,2,3]", "model.n_outputs=10"],
                             r"^the model has 10 outputs \(model.n_outputs=10\) but the data has "
                             r"3 classes \(data.classes=\[1, 2, 3\]\): set model.n_outputs=3$"),
    "freeze every layer": (["callbacks=[default,layer_freezing]", "callbacks.layer_freezing.frozen=.*"],
                           r"^callbacks.layer_freezing: frozen='\.\*' freezes every parameter of the "
                           r"model, so the optimizer would get an empty parameter list; .*trainable="),
    "trainable layer without parameters": (["callbacks=[default,layer_freezing]", "callbacks.layer_freezing.frozen=null",
                                            "callbacks.layer_freezing.trainable=hidden1.act"],
                                           r"^callbacks.layer_freezing: trainable='hidden1.act' freezes every parameter of the model"),
    "unfreeze after the last epoch": (["callbacks=[default,layer_freezing]", "callbacks.layer_freezing.unfreeze_at_epoch=5"],
                                      r"^callbacks.layer_freezing.unfreeze_at_epoch=5 is beyond "
                                      r"trainer.max_epochs=1: the layers would never unfreeze; use 0..0 or null$"),
    "checkpoint monitor typo": (["callbacks.checkpoint.monitor=val/acc2"],
                                r"^callbacks.checkpoint.monitor='val/acc2' is not a key Classifier logs "
                                r"while fitting; valid: train/loss, val/acc, val/loss \(or null\)$"),
    "checkpoint monitor without slash": (["callbacks.checkpoint.monitor=val_acc"],
                                         r"^callbacks.checkpoint.monitor='val_acc' is not a key Classifier logs"),
    "checkpoint monitor on a test key": (["callbacks.checkpoint.monitor=test/acc"],
                                         r"^callbacks.checkpoint.monitor='test/acc' is logged only when "
                                         r"testing, after the fit; valid: train/loss, val/acc, val/loss"),
    "early stopping monitor typo": (["callbacks=[default,early_stopping]", "callbacks.early_stopping.monitor=val/los"],
                                    r"^callbacks.early_stopping.monitor='val/los' is not a key Classifier logs while fitting; valid: "),
    "performance scheduling monitor typo": (["callbacks=[default,performance_scheduling]",
                                             "callbacks.performance_scheduling.monitor=valid/loss"],
                                            r"^callbacks.performance_scheduling.monitor='valid/loss' is not a key Classifier logs"),
    "report metric typo": (["report.metrics=[val/acc,test/accuracy]"],
                           r"^report.metrics: 'test/accuracy' is not a key the stages' modules "
                           r"log; valid: test/acc, test/loss, train/loss, val/acc, val/loss$"),
    "report metrics not a list": (["report.metrics=val/acc"],
                                  r"^report.metrics must be a list of metric keys such as \[val/acc, test/acc\], got 'val/acc'$"),
    "published metric typo": (["+published={metric: test/accc, value: 0.9}"],
                              r"^stage 'train': published.metric 'test/accc' is not a key the stages' modules log; valid: "),
    # item 12: found before the first stage trains, not after it
    "reuse shape mismatch from a stage": (["+stages={a: {model: {hidden: [50, 100]}}, b: {reuse: {from: a, layers: 'hidden[12]'}}}"],
                                          r"^stage 'b': shape mismatch in layer 'model.hidden1': linear.weight "
                                          r"is \(300, 784\) in the model but \(50, 784\) in the source$"),
    "reuse pattern matches nothing": (["+stages={a: {}, b: {reuse: {from: a, layers: hidden9}}}"],
                                      r"^stage 'b': layer pattern 'hidden9' matches no layer of Classifier"),
    "reuse from a later stage": (["+stages={a: {reuse: {from: b}}, b: {}}"],
                                 r"^stage 'a' reuses from 'b', which is neither an earlier stage"),
    "frozen pattern of a later stage": (["+stages={a: {}, b: {callbacks: {layer_freezing: {frozen: hidden9}}}}"],
                                        r"^stage 'b': layer pattern 'hidden9' matches no layer"),
    "monitor typo of a later stage": (["+stages={a: {}, b: {callbacks: {checkpoint: {monitor: val/acc2}}}}"],
                                      r"^stage 'b': callbacks.checkpoint.monitor='val/acc2'"),
    "n_per_class of a later stage": (["+stages={a: {}, b: {data: {n_per_class: 5000}}}"],
                                     r"^stage 'b': n_per_class=5000 but class \d has only"),
    "n_inputs of a later stage": (["+stages={a: {}, b: {model: {n_inputs: 100}}}"], r"^stage 'b': model.n_inputs=100 but"),
    # item 2/13: names are plain file names
    "name of 300 characters": ([f"name={'x' * 300}"], r"^name 'x{100}'\.\.\. is not a plain file name: use at most 100 letters"),
    "name with ..": (["name=../../x"], r"^name '\.\./\.\./x' is not a plain file name"),
    "data root of 300 characters": ([f"data.root={'x' * 300}"], r"^data.root='x{100}\.\.\.' cannot be read: File name too long$"),
}


@pytest.mark.parametrize("entry", list(CATALOGUE))
def test_catalogue(entry, fake_data, tmp_path, earlier):
    overrides, match = CATALOGUE[entry]
    fails(overrides, match, tmp_path / "runs" / "bad", earlier)


# ----------------------------------------------------------------- checkpoints and layers


def reuse(path, layers="hidden[12]") -> list[str]:
    return [f"+stages={{b: {{reuse: {{from: '{path}', layers: '{layers}'}}}}}}"]


@pytest.fixture
def ckpts(tmp_path) -> Path:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    good = MLP(784, [300, 100], 10)  # the default model's architecture
    torch.save({"state_dict": {f"model.{k}": v for k, v in good.state_dict().items()}}, folder / "good.ckpt")
    torch.save(MLP(784, [50, 100], 10).state_dict(), folder / "narrow.pt")
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3), "fc.weight": torch.zeros(10, 8)}, folder / "convnet.pt")
    data = (folder / "good.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "notes.ckpt").write_text("these are my notes, not a checkpoint\n")
    torch.save([1, 2, 3], folder / "list.pt")
    return folder


def test_reuse_from_a_good_checkpoint_file_works(fake_data, tmp_path, ckpts):
    results = run_recipe(compose_config(FAST + reuse(ckpts / "good.ckpt")), tmp_path / "run")
    assert results[0].stage == "b"


CHECKPOINT_CASES = {
    "missing": ("nowhere.ckpt", "hidden[12]", r"checkpoint '.*nowhere.ckpt' does not exist"),
    "truncated": ("truncated.ckpt", "hidden[12]", r"cannot load '.*truncated.ckpt' as a checkpoint with "
                                                  r"weights_only=True \(truncated, not a checkpoint"),
    "not a checkpoint": ("notes.ckpt", "hidden[12]", r"cannot load '.*notes.ckpt' as a checkpoint"),
    "not a state_dict": ("list.pt", "hidden[12]", r"expected a state_dict or a Lightning checkpoint, got list"),
    "another architecture": ("convnet.pt", "hidden[12]", r"the source has no layer 'model.hidden1'; its layers: conv1, fc"),
    "shape mismatch": ("narrow.pt", "hidden[12]", r"shape mismatch in layer 'model.hidden1': .* is \(300, "
                                                  r"784\) in the model but \(50, 784\) in the source"),
    "pattern matches nothing": ("good.ckpt", "hidden9", r"layer pattern 'hidden9' matches no layer of "
                                                        r"Classifier; layers are: .*model.hidden1.*model.output"),
    "not a stage nor a file": ("A", "hidden1", r"reuses from 'A', which is neither an earlier stage \(\[\]\) nor a checkpoint file"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_catalogue(case, fake_data, tmp_path, earlier, ckpts):
    name, layers, match = CHECKPOINT_CASES[case]
    source = name if case == "not a stage nor a file" else ckpts / name
    fails(reuse(source, layers), match, tmp_path / "runs" / "bad", earlier)


def test_resume_from_a_truncated_last_checkpoint(fake_data, tmp_path, earlier, ckpts):
    run = tmp_path / "runs" / "bad"
    (run / "train" / "checkpoints").mkdir(parents=True)
    (run / "train" / "checkpoints" / "last.ckpt").write_bytes((ckpts / "truncated.ckpt").read_bytes())
    fails(["resume=true"], r"cannot load '.*last.ckpt' as a checkpoint", run, earlier)


# ----------------------------------------------------------------- data files and output folders


def _write_gz(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(payload)


def _corrupt_deflate(path: Path, raw: bytes) -> None:
    """Damage the compressed stream so that zlib itself fails (not only gzip's CRC check)."""
    data = path.read_bytes()
    for at in range(20, len(data) - 2, 7):
        bad = data[:at] + bytes([data[at] ^ 0xFF, data[at + 1] ^ 0x33]) + data[at + 2:]
        try:
            gzip.decompress(bad)
        except zlib.error:
            path.write_bytes(bad)
            return
        except (OSError, EOFError):
            continue
    raise AssertionError("no corruption found that zlib rejects")


IDX_CASES = {
    "truncated payload": (lambda p, raw: _write_gz(p, raw[:-100]), r"train-images-idx3-ubyte.gz is truncated: "
                                                                   r"header says shape \[1200, 28, 28\]"),
    "wrong magic": (lambda p, raw: _write_gz(p, b"\x12\x34" + raw[2:]), r"is not an IDX file: magic number 12340803 \(expected 0000 08 0N"),
    "cut gzip": (lambda p, raw: p.write_bytes(p.read_bytes()[:200]), r"cannot read IDX file .*train-images-idx3-ubyte.gz: "
                                                                     r".*truncated or not gzip"),
    # issue 14, item 13: zlib's own error came out as a traceback
    "corrupt gzip data": (_corrupt_deflate,
                          r"^cannot read IDX file .*train-images-idx3-ubyte.gz: its gzip data "
                          r"is corrupt \(Error -3 .*\); copy or download the file again$"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_idx_catalogue(case, fake_data, tmp_path, earlier):
    damage, match = IDX_CASES[case]
    path = fake_data / "mnist" / (FILES["train_images"] + ".gz")
    damage(path, gzip.decompress(path.read_bytes()))
    load_arrays.cache_clear()
    fails(["data=mnist"], match, tmp_path / "runs" / "bad", earlier)


def _write_set(folder: Path, n_train: int = 1200, n_test: int = 300, size: int = 28, labels: int | None = None) -> Path:
    """The four IDX files of a synthetic set with ``size`` x ``size`` images (``labels``: that many
    training labels instead of one per image)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("test", n_test)):
        write_idx(folder / (FILES[f"{split}_images"] + ".gz"), torch.randint(0, 255, (n, size, size), generator=g, dtype=torch.uint8))
        n_labels = labels if labels is not None and split == "train" else n
        write_idx(folder / (FILES[f"{split}_labels"] + ".gz"), torch.arange(n_labels) % 10)
    return folder


def _only_train_files(folder: Path) -> Path:
    _write_set(folder)
    for key in ("test_images", "test_labels"):
        (folder / (FILES[key] + ".gz")).unlink()
    return folder


def _directory_for_a_file(folder: Path) -> Path:
    _write_set(folder)
    path = folder / (FILES["train_images"] + ".gz")
    path.unlink()
    path.mkdir()
    return folder


# issue 14, items 13-14: a given data.root is the only place looked at, and what it holds is checked
ROOT_CASES = {
    "empty folder": (lambda f: (f.mkdir(), f)[1],
                     r"^data.root='.*empty_folder' holds no mnist IDX files \(missing train-images-idx3-ubyte\[.gz\], "
                     r"train-labels-idx1-ubyte\[.gz\], t10k-images-idx3-ubyte\[.gz\], "
                     r"t10k-labels-idx1-ubyte\[.gz\]\); with data.root set nothing else is searched"),
    "no such folder": (lambda f: f,
                       r"^data.root='.*no_such_folder' does not exist; give a folder holding the four mnist IDX files, or data.root=null"),
    "a file, not a folder": (lambda f: (f.write_text("x"), f)[1], r"^data.root='.*a_file__not_a_folder' is a file, not a folder"),
    "test files missing": (_only_train_files,
                           r"^data.root='.*test_files_missing' holds no mnist IDX files \(missing "
                           r"t10k-images-idx3-ubyte\[.gz\], t10k-labels-idx1-ubyte\[.gz\]\)"),
    "directory for a file": (_directory_for_a_file,
                             r"^.*directory_for_a_file/train-images-idx3-ubyte.gz is "
                             r"a directory, not an IDX file; remove it or put the file "
                             r"train-images-idx3-ubyte.gz in its place$"),
    "32x32 images": (lambda f: _write_set(f, size=32),
                     r"^model.n_inputs=784 but the data's images are 1x32x32 = 1024 values: set model.n_inputs=1024$"),
    "labels of another set": (lambda f: _write_set(f, labels=1000),
                              r"^.*train-images-idx3-ubyte.gz holds 1200 images but .*train-labels-idx1-ubyte.gz 1000 labels: "
                              r"the images and labels of one split must be one dataset's"),
}


@pytest.mark.parametrize("case", list(ROOT_CASES))
def test_data_root_catalogue(case, fake_data, tmp_path, earlier):
    """The root is given to the second stage: the first must not train before the check."""
    make, match = ROOT_CASES[case]
    root = make(tmp_path / case.replace(" ", "_").replace(",", "_"))
    stages = f"+stages={{a: {{}}, b: {{data: {{root: '{root}'}}}}}}"
    fails([stages], f"^stage 'b': {match.removeprefix('^')}", tmp_path / "runs" / "bad", earlier)


@pytest.mark.data
@pytest.mark.slow  # reads the real sets
def test_labels_of_another_real_dataset_beside_the_images(real_data_dir, tmp_path, earlier):
    """MNIST's images with Fashion-MNIST's labels: the counts agree, the files' contents do not."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for key, stem in FILES.items():
        source = "fashion-mnist" if key == "train_labels" else "mnist"
        (mixed / f"{stem}.gz").symlink_to(real_data_dir / source / f"{stem}.gz")
    fails([f"data.root={mixed}"], r"^.*train-labels-idx1-ubyte.gz holds Fashion-MNIST's training labels but "
          r".*train-images-idx3-ubyte.gz MNIST's training images: the images and labels of one split must be one dataset's$",
          tmp_path / "runs" / "bad", earlier)


@pytest.mark.data
@pytest.mark.slow  # reads the real sets
def test_another_real_dataset_than_the_one_named(real_data_dir, tmp_path, earlier):
    fails([f"data.root={real_data_dir / 'mnist'}", "data.name=fashion_mnist"],
          r"^data.name='fashion_mnist' but .*mnist holds MNIST's files: point data.root at fashion_mnist's files, or set data.name=mnist$",
          tmp_path / "runs" / "bad", earlier)


def test_unreadable_data_file(fake_data, tmp_path, earlier, monkeypatch):
    """Permission denied (simulated: this may run as root, whom chmod does not stop)."""
    denied = fake_data / "mnist" / (FILES["train_labels"] + ".gz")
    real_open = gzip.open

    def guarded(path, *args, **kwargs):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(gzip, "open", guarded)
    fails([], r"^cannot read .*mnist/train-labels-idx1-ubyte.gz: Permission "
              r"denied; make the file readable$", tmp_path / "runs" / "bad", earlier)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_data_file_by_mode(fake_data, tmp_path, earlier):
    path = fake_data / "mnist" / (FILES["train_labels"] + ".gz")
    path.chmod(0)
    fails([], r"^cannot read .*train-labels-idx1-ubyte.gz: Permission denied; make the file readable$", tmp_path / "runs" / "bad", earlier)


# ----------------------------------------------------------------- names, DDP


def test_name_that_resolves_to_a_path(fake_data, tmp_path, earlier, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where today's code wrote the run
    (tmp_path / "home").mkdir()
    fails(["name=${oc.env:HOME}"],
        r"^name '\$\{oc.env:HOME\}', resolved to '.*home' is not a plain file name", tmp_path / "runs" / "bad", earlier)
    assert not list((tmp_path / "home").iterdir())


@pytest.mark.parametrize("stage", ["../../x", "y" * 300, "a b"])
def test_stage_name_that_is_not_a_file_name(stage, fake_data, tmp_path, earlier):
    def name_the_stage(cfg):
        cfg.stages = {"first": {}, stage: {}}

    fails([], r"^stage name '(\.\./\.\./x|y{100}'\.\.\.|a b)'? is "
              r"not a plain file name", tmp_path / "runs" / "bad", earlier, edit=name_the_stage)
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs" / "bad" / "first").exists()


@pytest.fixture
def no_launch(monkeypatch):
    """Fail, never start processes, if a test's run gets as far as launching DDP ranks."""
    from lightning.pytorch.strategies.launchers import multiprocessing, subprocess_script

    def refuse(*args, **kwargs):
        raise RuntimeError("the test run reached the DDP launcher")

    monkeypatch.setattr(subprocess_script._SubprocessScriptLauncher, "launch", refuse)
    monkeypatch.setattr(multiprocessing._MultiProcessingLauncher, "launch", refuse)


DDP_ONE_BATCH = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.classes=[0,1]", "data.n_per_class=10"]


def test_ddp_with_fewer_batches_than_ranks(fake_data, tmp_path, earlier, no_launch):
    fails(DDP_ONE_BATCH, r"^trainer.devices=2 x trainer.num_nodes=1 makes 2 ranks, but the 20 training images in batches of "
          r"data.batch_size=200 are 1 batch: 0 per rank; use data.batch_size <= 10, more data, or fewer devices$",
          tmp_path / "runs" / "bad", earlier)


@pytest.mark.slow
def test_cli_ddp_with_fewer_batches_than_ranks(fake_data, tmp_path):
    proc = subprocess.run(cli(*FAST, *DDP_ONE_BATCH, f"hydra.run.dir={tmp_path / 'run'}"), capture_output=True, text=True,
                          env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "0 per rank" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert "results" not in proc.stdout and not (tmp_path / "run" / "train" / "result.json").exists()


def test_unwritable_output_folder(fake_data, tmp_path, earlier):
    (tmp_path / "runs" / "afile").write_text("a file where a folder should be")
    fails([], r"cannot write to the output folder '.*afile/bad' \(Not a directory\); "
              r"choose a writable folder", tmp_path / "runs" / "afile" / "bad", earlier)


def test_finished_run_is_refused_and_kept(fake_data, tmp_path, earlier):
    before = snapshot(earlier)
    with pytest.raises(DnnkitError, match="already holds a finished run; pass resume=true to reuse it"):
        run_recipe(compose_config(FAST), earlier)
    assert snapshot(earlier) == before


# ----------------------------------------------------------------- through the command line


@pytest.mark.slow  # spawns python -m dnnkit.train
def test_cli_messages_exit_codes_and_no_traceback(fake_data, tmp_path):
    """One process per case, started together: dnnkit's errors exit 2, Hydra's composition errors
    (an unknown config-group option or recipe) exit 1; both print one message, no traceback."""
    (tmp_path / "afile").write_text("")
    cases = {
        "batch size": (["data.batch_size=0"], 2, "data.batch_size must be a positive integer, got 0"),
        "optimizer": (["optimizer=adamw9"], 1, "Could not find 'optimizer/adamw9'|Available options in 'optimizer':|\tsgd\n"),
        "recipe": (["+recipe=nope"], 1, "Could not find 'recipe/nope'|Available options in 'recipe':|\tmnist_bn\n"),
        "output folder": ([f"hydra.run.dir={tmp_path / 'afile' / 'run'}"], 2, "cannot write to the output folder"),
        "divergence": (["optimizer.lr=1e6", "trainer.max_epochs=3"], 2, "training diverged at step"),
        # HYDRA_FULL_ERROR=1 brings the traceback back for debugging
        "full error": (["data.batch_size=0"], 1, "Traceback|DnnkitError: data.batch_size must be a positive integer"),
    }
    procs = {}
    for name, (args, _, _) in cases.items():
        run_dir = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={tmp_path / name.replace(' ', '_')}"]
        env = cli_env(HYDRA_FULL_ERROR="1") if name == "full error" else cli_env()
        procs[name] = subprocess.Popen(
            cli(*FAST, *args, *run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        _, code, message = cases[name]
        assert proc.returncode == code, f"{name}: {proc.returncode}\n{err[-2000:]}"
        assert all(part in err for part in message.split("|")), f"{name}: {err[-2000:]}"
        if name != "full error":
            assert "Traceback" not in err and "Traceback" not in out, name
