"""Loggers (docs/tracking.md): each writes in the run folder and is read back with its own tools,
several at once, the stage's resolved config as hyperparameters, one-line errors for an unknown
logger or a missing package. Tests of optional packages skip when they are not installed."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from hydra.utils import get_class
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import OmegaConf

from dnnkit import loggers as dnnkit_loggers
from dnnkit.errors import DnnkitError
from dnnkit.hydra_callbacks import checked_choices
from dnnkit.loggers import CSVLogger, TensorBoardLogger, build_loggers, check_loggers, constructor_arguments, logger_specs, placement
from dnnkit.runner import run_recipe, stage_loggers
from dnnkit.stages import config_dir
from tests.conftest import FAST, compose_config
from tests.probes import cli, cli_env

CONF = config_dir()
LOGGERS = sorted(p.stem for p in (CONF / "logger").glob("*.yaml"))


def stage_of(overrides: list[str], run_dir: Path, name: str = "train"):
    """The composed config of one stage (seed merged as the runner merges it) and its folder."""
    cfg = OmegaConf.merge(compose_config(overrides), {"seed": 42})
    return cfg, run_dir / name


# ----------------------------------------------------------------------------- the default and several at once


def test_csv_is_the_default_and_writes_metrics_and_the_config_where_it_did(fake_data, tmp_path):
    cfg, stage = stage_of(["optimizer.lr=0.037"], tmp_path / "run")
    (logger,) = stage_loggers("train", cfg, 42, stage)
    assert isinstance(logger, CSVLogger)
    logger.log_metrics({"val/acc": 0.5}, step=3)
    logger.save()
    assert sorted(p.name for p in stage.iterdir()) == ["hparams.yaml", "metrics.csv"]  # no lightning_logs/version_0
    assert (stage / "metrics.csv").read_text().splitlines() == ["step,val/acc", "3,0.5"]
    hparams = OmegaConf.load(stage / "hparams.yaml")  # was {} before: the resolved config now
    assert hparams.optimizer.lr == 0.037 and hparams.optimizer._target_ == "torch.optim.SGD"
    assert hparams.model.n_outputs == 10 and hparams.seed == 42  # resolved (${dnnkit.n_classes:...}) and seeded


def test_csv_and_tensorboard_at_once(fake_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_recipe(compose_config([*FAST, "logger=[csv,tensorboard]", "optimizer.lr=0.037"]), tmp_path / "run")
    stage = tmp_path / "run" / "train"
    assert OmegaConf.load(stage / "hparams.yaml").optimizer.lr == 0.037  # CSV's, beside the fit's other files
    with open(stage / "metrics.csv", newline="") as f:
        csv_acc = [float(r["val/acc"]) for r in csv.DictReader(f) if r["val/acc"]]
    events = EventAccumulator(str(stage / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"val/acc", "val/loss", "test/acc"} <= set(scalars), scalars
    assert "hp_metric" not in scalars  # no placeholder: the hparams tab's columns are report.metrics
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert val_acc == pytest.approx(csv_acc)  # the same values, in both loggers
    plugin = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in events.PluginTagToContent("hparams").items()}
    start = next(d.session_start_info for d in plugin.values() if d.HasField("session_start_info"))
    experiment = next(d.experiment for d in plugin.values() if d.HasField("experiment"))
    assert start.hparams["optimizer/lr"].number_value == pytest.approx(0.037)
    assert start.hparams["model/activation"].string_value == "elu"
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "test/acc"]


def test_no_logger(fake_data, tmp_path):
    assert checked_choices(["logger=null", "optimizer=adam"]) == ["logger=[]", "optimizer=adam"]
    cfg = compose_config(["logger=[]"])
    assert "logger" not in cfg and build_loggers(cfg.get("logger"), tmp_path, tmp_path, "train") == []
    assert logger_specs({"csv": None, "tensorboard": None}) == {}  # logger.csv=null switches one off


# ----------------------------------------------------------------------------- MLflow, W&B


def isolated(tmp_path: Path, monkeypatch) -> Path:
    """An empty folder as the working directory and $HOME: a test can see what lands outside the run folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(work / "home"))
    monkeypatch.chdir(work)
    return work


@pytest.mark.slow  # MLflow's import and the creation of its SQLite store: ~5 s alone, ~20 s on a loaded machine
def test_mlflow_run_in_the_run_folders_store(fake_data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # what placement() sets where unset (else ~/.config/mlflow/)
    work = isolated(tmp_path, monkeypatch)
    cfg, stage = stage_of(["logger=mlflow", "optimizer.lr=0.037", "name=demo"], work / "run")
    (logger,) = stage_loggers("train", cfg, 42, stage)
    logger.log_metrics({"val/acc": 0.5}, step=3)
    logger.finalize("success")
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # no ./mlruns, nothing in $HOME
    assert sorted(p.name for p in (work / "run").iterdir()) == ["mlruns"]  # the run folder's store, not the stage's
    client = MlflowClient(f"sqlite:///{work / 'run' / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    assert run.data.metrics == {"val/acc": 0.5}
    assert float(run.data.params["optimizer/lr"]) == 0.037 and run.data.params["logger/mlflow/experiment_name"] == "demo"


@pytest.mark.slow  # wandb starts its service process: ~10 s
def test_wandb_offline_one_run_per_stage_in_the_stage_folder(fake_data, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    work = isolated(tmp_path, monkeypatch)
    runs = []
    try:
        for name in ("A", "B"):
            cfg, stage = stage_of(["logger=wandb", "optimizer.lr=0.037"], work / "run", name)
            (logger,) = stage_loggers(name, cfg, 42, stage)
            logger.log_metrics({"val/acc": 0.5}, step=3)
            runs.append((logger.experiment.id, logger.experiment.name, logger.experiment.config["optimizer"]["lr"]))
    finally:
        wandb.finish()
    assert runs[0][0] != runs[1][0] and [r[1:] for r in runs] == [("A", 0.037), ("B", 0.037)]  # a run per stage
    for name in ("A", "B"):
        assert len(list((work / "run" / name / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert sorted(p.name for p in work.iterdir()) == ["run"]  # wandb's service logs too: nothing in $HOME


# ----------------------------------------------------------------------------- arguments and errors


def test_each_logger_gets_only_the_arguments_its_constructor_takes(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # placement() sets it where unset
    for option in LOGGERS:
        (spec,) = OmegaConf.to_container(OmegaConf.load(CONF / "logger" / f"{option}.yaml")).values()
        cls = get_class(spec["_target_"])
        takes, _ = constructor_arguments(cls)
        assert set(spec) - {"_target_"} <= takes, option  # every key of the option is an argument
        assert set(placement(cls, tmp_path / "s", tmp_path, "s")) <= takes, option
    assert not {"name", "version"} & constructor_arguments(MLFlowLogger)[0]  # what broke logger=mlflow before
    assert {"save_dir", "name", "version", "hparams_metrics"} <= constructor_arguments(TensorBoardLogger)[0]  # through **kwargs
    with pytest.raises(DnnkitError, match=r"logger.csv: CSVLogger takes no argument 'run_name'; valid: .*save_dir"):
        build_loggers({"csv": {"_target_": "dnnkit.loggers.CSVLogger", "run_name": "x"}}, tmp_path, tmp_path, "train")
    (old_style,) = build_loggers({"_target_": "dnnkit.loggers.CSVLogger"}, tmp_path / "s", tmp_path, "s")  # a config from before
    assert isinstance(old_style, CSVLogger) and Path(old_style.log_dir) == tmp_path / "s"


def test_mlflow_goes_where_the_user_points_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mine = placement(MLFlowLogger, tmp_path / "s", tmp_path, "s", {"tracking_uri": "http://tracking:5000"})
    assert mine == {"tracking_uri": None, "run_name": "s"} and not (tmp_path / "mlruns").exists()  # build keeps the config's
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert placement(MLFlowLogger, tmp_path / "s", tmp_path, "s", {})["tracking_uri"] == "http://tracking:5000"
    assert not (tmp_path / "mlruns").exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    default = placement(MLFlowLogger, tmp_path / "s", tmp_path, "s", {})
    assert default["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}" and (tmp_path / "mlruns").is_dir()


def test_a_missing_package_names_the_extra(monkeypatch):
    real = dnnkit_loggers.importlib.util.find_spec
    monkeypatch.setattr(dnnkit_loggers.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = compose_config(["logger=[csv,mlflow]"])
    with pytest.raises(DnnkitError, match=r"^logger.mlflow \(MLFlowLogger\) needs the mlflow package: pip install 'dnnkit\[mlflow\]'$"):
        check_loggers(cfg.logger)
    check_loggers(compose_config(["logger=csv"]).logger)
    with pytest.raises(DnnkitError, match=r"logger.x._target_='nope.Logger' is not a class"):
        check_loggers({"x": {"_target_": "nope.Logger"}})


def test_an_unknown_logger_lists_the_valid_ones():
    with pytest.raises(DnnkitError, match=rf"^unknown logger 'tensorbord'; valid: {', '.join(LOGGERS)} \(several at once"):
        checked_choices(["logger=[csv,tensorbord]"])
    with pytest.raises(DnnkitError, match="unknown logger 'x'"):
        checked_choices(["-m", "logger=csv,x"])  # a sweep over loggers
    assert checked_choices(["logger=[csv,wandb]", "logger.wandb.offline=false"]) == ["logger=[csv,wandb]", "logger.wandb.offline=false"]


@pytest.mark.slow  # spawns python -m dnnkit.train, which stops before composing (the imports: ~5 s on an idle machine)
def test_cli_unknown_logger_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(cli("logger=nope", f"hydra.run.dir={tmp_path / 'run'}"), capture_output=True, text=True,
                          env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: unknown logger 'nope'; valid: {', '.join(LOGGERS)} "
                                                "(several at once: logger=[csv,tensorboard]; none: logger=[])"]
    assert not (tmp_path / "run").exists()
