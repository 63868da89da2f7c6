"""The bad-input catalogue: each entry fails before any training with one DnnkitError that
quotes the bad value and says what is valid, and leaves earlier runs' files untouched.

Most entries run in-process through ``run_recipe`` (what ``python -m dnnkit.train`` calls);
``test_cli_*`` run the real command for a few of them, to show the exit status, the single
message and the absent traceback (each CLI start costs seconds, so they are batched).
"""

import gzip
import hashlib
import subprocess
from pathlib import Path

import pytest
import torch

from dnnkit.data.datamodule import load_arrays
from dnnkit.data.discovery import FILES
from dnnkit.errors import DnnkitError
from dnnkit.nn import MLP
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
    (run / "train" / "result.json").write_text('{"stage": "train"}')
    (run / "results.md").write_text("| train | 1 |\n")
    return run


def fails(overrides: list[str], match: str, run_dir: Path, earlier: Path) -> DnnkitError:
    before = snapshot(earlier)
    with pytest.raises(DnnkitError, match=match) as err:
        run_recipe(compose_config(FAST + overrides), run_dir)
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
    "n_per_class too large": (["data.n_per_class=5000"], r"n_per_class=5000 but class \d has only \d+ training images .* use n_per_class <= \d+"),
    "val_size too large": (["data.val_size=999999"], r"val_size must be an integer in \[0, 1200\), got 999999"),
    "epochs 0": (["trainer.max_epochs=0"], r"trainer.max_epochs must be a positive integer \(or -1\), got 0"),
    "hidden not a list": (["model.hidden=300"], r"hidden must be a list of layer sizes such as \[300, 100\], got 300"),
    "classes not a list": (["data.classes=5"], r"data.classes=5 is invalid"),
    "classes not integers": (["data.classes=[0.5,1.7]"], r"data.classes=\[0.5, 1.7\] is invalid"),
    "seeds not a list": (["+seeds=3"], r"stage 'train': seeds must be a list of distinct integers such as \[0, 1, 2\], got 3"),
    "published without value": (["+published={metric: test/acc, val: 0.99}"], r"stage 'train': published must be \{metric: .*, got"),
    "every stage null": (["+recipe=transfer", "stages.A=null", "stages.B_scratch=null", "stages.B_on_A=null"],
                         r"every stage of \['A', 'B_on_A', 'B_scratch'\] is switched off \(null\): nothing to run"),
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
    "truncated": ("truncated.ckpt", "hidden[12]", r"cannot load '.*truncated.ckpt' as a checkpoint with weights_only=True \(truncated, not a checkpoint"),
    "not a checkpoint": ("notes.ckpt", "hidden[12]", r"cannot load '.*notes.ckpt' as a checkpoint"),
    "not a state_dict": ("list.pt", "hidden[12]", r"expected a state_dict or a Lightning checkpoint, got list"),
    "another architecture": ("convnet.pt", "hidden[12]", r"the source has no layer 'model.hidden1'; its layers: conv1, fc"),
    "shape mismatch": ("narrow.pt", "hidden[12]", r"shape mismatch in layer 'model.hidden1': .* is \(300, 784\) in the model but \(50, 784\) in the source"),
    "pattern matches nothing": ("good.ckpt", "hidden9", r"layer pattern 'hidden9' matches no layer of Classifier; layers are: .*model.hidden1.*model.output"),
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


IDX_CASES = {
    "truncated payload": (lambda p, raw: _write_gz(p, raw[:-100]), r"train-images-idx3-ubyte.gz is truncated: header says shape \[1200, 28, 28\]"),
    "wrong magic": (lambda p, raw: _write_gz(p, b"\x12\x34" + raw[2:]), r"is not an IDX file: magic number 12340803 \(expected 0000 08 0N"),
    "cut gzip": (lambda p, raw: p.write_bytes(p.read_bytes()[:200]), r"cannot read IDX file .*train-images-idx3-ubyte.gz: .*truncated or not gzip"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_idx_catalogue(case, fake_data, tmp_path, earlier):
    damage, match = IDX_CASES[case]
    path = fake_data / "mnist" / (FILES["train_images"] + ".gz")
    damage(path, gzip.decompress(path.read_bytes()))
    load_arrays.cache_clear()
    fails(["data=mnist"], match, tmp_path / "runs" / "bad", earlier)


def test_unwritable_output_folder(fake_data, tmp_path, earlier):
    (tmp_path / "runs" / "afile").write_text("a file where a folder should be")
    fails([], r"cannot write to the output folder '.*afile/bad' \(Not a directory\); choose a writable folder", tmp_path / "runs" / "afile" / "bad", earlier)


def test_finished_run_is_refused_and_kept(fake_data, tmp_path, earlier):
    before = snapshot(earlier)
    with pytest.raises(DnnkitError, match="already holds a finished run; pass resume=true to reuse it"):
        run_recipe(compose_config(FAST), earlier)
    assert snapshot(earlier) == before


# ----------------------------------------------------------------- through the command line


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
