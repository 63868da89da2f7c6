"""``python -m dnnkit.evaluate`` and the test-time confusion matrix: a tiny run on synthetic data
is evaluated again from its exported model and reproduces its test/acc exactly; bad inputs are
one line and exit status 2; the documented evaluate/predict commands parse."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dnnkit import cli, evaluate, predict
from dnnkit.data.discovery import FILES
from dnnkit.data.idx import write_idx
from dnnkit.errors import DnnkitError
from dnnkit.nn.onnx import missing_packages
from dnnkit.runner import run_recipe
from tests.conftest import FAST, compose_config, write_fake_dataset
from tests.probes import cli_env
from tests.test_docs import CODE_SPAN, PAGES, rel, split_code, without_comment

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def trained_run(tmp_path_factory) -> Path:
    """One tiny finished run (batch norm, so the exported model is folded), its data given as
    ``data.root`` so that evaluate finds it without DNNKIT_DATA_DIR; with the [onnx] extra
    installed it exports model.onnx too. Trained once per session, in a fixed folder of the
    session's temporary directory, for the evaluate, predict and ONNX tests (a session fixture
    imported into three modules would be three fixtures, and train three times). Tests only read it."""
    base = tmp_path_factory.getbasetemp() / "dnnkit-evaluate"
    if not (base / "run" / "train" / "result.json").is_file():
        shutil.rmtree(base, ignore_errors=True)  # what a failed attempt left
        root = write_fake_dataset(base / "data" / "mnist")
        onnx = [] if missing_packages() else ["export.onnx=true"]
        run_recipe(compose_config([*FAST, f"data.root={root}", "model.batch_norm=true", *onnx]), base / "run")
    return base / "run"


def recorded_test_acc(run: Path) -> float:
    return json.loads((run / "train" / "result.json").read_text())["metrics"]["test/acc"]


def test_a_test_run_saves_its_confusion_matrix(trained_run):
    stage = trained_run / "train"
    saved = json.loads((stage / "confusion.json").read_text())
    assert (stage / "confusion.png").read_bytes()[:8] == PNG
    matrix = torch.tensor(saved["matrix"])
    assert saved["split"] == "test" and saved["images"] == int(matrix.sum()) == 300  # the whole fake test set
    assert saved["accuracy"] == recorded_test_acc(trained_run)  # the same predictions as the logged test/acc
    assert saved["accuracy"] == pytest.approx(float(matrix.diag().sum() / matrix.sum()))
    assert [r["images"] for r in saved["per_class"]] == matrix.sum(1).tolist()
    for pair in saved["most_confused"]:
        t, p = saved["classes"].index(pair["true"]), saved["classes"].index(pair["predicted"])
        assert t != p and pair["count"] == matrix[t, p] > 0
    counts = [p["count"] for p in saved["most_confused"]]
    assert counts == sorted(counts, reverse=True)


def test_evaluate_reproduces_the_runs_test_accuracy(trained_run, tmp_path, capsys):
    before = (trained_run / "train" / "confusion.json").read_text()
    [summary] = evaluate.main([str(trained_run), f"out={tmp_path}"])
    assert summary["accuracy"] == recorded_test_acc(trained_run)  # exactly, from model.pt (batch norm folded)
    assert summary["matrix"] == json.loads(before)["matrix"]
    assert (tmp_path / "train" / "confusion.json").is_file() and (tmp_path / "train" / "confusion.png").is_file()
    assert (trained_run / "train" / "confusion.json").read_text() == before  # out= leaves the run folder alone
    shown = capsys.readouterr().out
    assert f"the run's test/acc: {summary['accuracy']:.4f}" in shown and "most confused" in shown


def test_evaluate_a_model_file_on_the_validation_split(trained_run, tmp_path):
    model = tmp_path / "copy" / "model.pt"
    model.parent.mkdir()
    model.write_bytes((trained_run / "train" / "model.pt").read_bytes())
    [summary] = evaluate.main([str(model), "split=val", "batch_size=64"])
    assert summary["split"] == "val" and summary["images"] == 200  # FAST's data.val_size
    assert (model.parent / "confusion_val.json").is_file() and (model.parent / "confusion_val.png").is_file()
    [again] = evaluate.main([str(trained_run), "stage=train", "split=val", f"out={tmp_path / 'out'}"])
    assert again["matrix"] == summary["matrix"]


def test_each_seed_of_a_stage_is_evaluated_on_its_own_validation_split(fake_data, tmp_path):
    """model.pt keeps the data config with the seed its fit used (data.seed: ${seed}), so
    split=val is each seed's own validation split and reproduces its val/acc."""
    run_recipe(compose_config([*FAST, "+seeds=[3,4]", "test=false"]), tmp_path / "run")
    summaries = evaluate.main([str(tmp_path / "run"), "split=val"])
    for seed, summary in zip((3, 4), summaries):
        stage = tmp_path / "run" / "train" / f"seed{seed}"
        assert torch.load(stage / "model.pt", weights_only=True)["meta"]["data"]["seed"] == seed
        assert summary["accuracy"] == json.loads((stage / "result.json").read_text())["metrics"]["val/acc"]
        assert (stage / "confusion_val.json").is_file() and not (stage / "confusion.json").exists()  # test=false: no test


def small_images(folder: Path, side: int) -> Path:
    """The four IDX files of a set of ``side`` x ``side`` images."""
    folder.mkdir(parents=True)
    for split, n in (("train", 300), ("test", 50)):
        write_idx(folder / FILES[f"{split}_images"], torch.zeros(n, side, side, dtype=torch.uint8))
        write_idx(folder / FILES[f"{split}_labels"], (torch.arange(n) % 10).to(torch.uint8))
    return folder


def bad_inputs(trained_run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "empty").mkdir()
    (tmp / "cut" / "train").mkdir(parents=True)
    (tmp / "cut" / "train" / "fit.json").write_text("{}")
    newer = torch.load(trained_run / "train" / "model.pt", weights_only=True)
    newer["format"] = "dnnkit.inference_model/2"
    torch.save(newer, tmp / "newer.pt")
    run = str(trained_run)
    return [
        ([str(tmp / "empty")], "holds no finished stage"),
        ([str(tmp / "cut")], r"stages train did not finish: resume the run with resume=true"),
        ([str(tmp / "newer.pt")], "made by a newer dnnkit"),
        ([str(tmp / "missing")], "does not exist"),
        ([run, "split=tset"], r"unknown split 'tset'; valid: test, train, val"),
        ([run, "stage=B"], r"no finished stage 'B' .*; valid: train"),
        ([run, "splt=val"], r"unknown dnnkit.evaluate option 'splt'"),
        ([run, "batch_size=many"], "batch_size=many must be an integer"),
        ([run, f"root={small_images(tmp / 'small', 20)}", f"out={tmp / 'o'}"],
         r"the test images of train are 1x20x20 \(channels x height x width\); the model takes 1x28x28"),
    ]


def test_bad_input_is_one_line_and_exit_status_2(trained_run, tmp_path, capsys):
    for argv, message in bad_inputs(trained_run, tmp_path):
        with pytest.raises(DnnkitError, match=message):
            evaluate.main(argv)
        capsys.readouterr()
        assert cli.run(evaluate.main, argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


# ----------------------------------------------------------------------------- documented commands

COMMAND = r"^\s*python -m dnnkit\.(evaluate|predict)(\s|$)"


def documented_commands() -> list[tuple[str, str]]:
    import re

    found = []
    for page in PAGES:
        prose, blocks = split_code(page.read_text(encoding="utf-8"))
        lines = [line for block in blocks for line in block]
        lines += [span for line in prose for _, span in CODE_SPAN.findall(line)]
        found += [(without_comment(line), rel(page)) for line in lines if re.match(COMMAND, line) and len(line.split()) > 3]
    return found


def test_documented_evaluate_and_predict_commands_parse():
    commands = documented_commands()
    assert {c.split()[2] for c, _ in commands} == {"dnnkit.evaluate", "dnnkit.predict"}, commands
    assert len(commands) >= 6, commands
    for command, page in commands:
        tokens = shlex.split(command)
        module = evaluate if tokens[2] == "dnnkit.evaluate" else predict
        try:
            args = module.build_parser().parse_args(tokens[3:])
            options = cli.parse_options(args.options, module.DEFAULTS, tokens[2])
        except (DnnkitError, SystemExit) as err:
            pytest.fail(f"{command} (in {page}) does not parse: {err}")
        if module is evaluate:
            evaluate.choose("split", options["split"], evaluate.SPLITS)


# ----------------------------------------------------------------------------- the commands themselves


@pytest.mark.slow  # three fresh interpreters: the import check, evaluate and predict
def test_the_commands_run_and_their_help_imports_no_torch(trained_run, tmp_path):
    code = ("import sys; from dnnkit import evaluate, predict; evaluate.build_parser().format_help(); "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env=cli_env(), timeout=60)
    proc = subprocess.run([sys.executable, "-m", "dnnkit.evaluate", str(trained_run), f"out={tmp_path}"],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "train" / "confusion.json").read_text())
    assert saved["accuracy"] == recorded_test_acc(trained_run)
    assert f"{saved['accuracy']:.4f}" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "dnnkit.predict", str(trained_run / "train"), str(tmp_path / "nothing.png")],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "does not exist" in proc.stderr
