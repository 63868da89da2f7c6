"""A cheap start: ``python -m dnnkit.train --help`` and a config error cost Hydra's composition,
not Lightning's, torchvision's or matplotlib's imports (~5 s; issue 17). Each test runs a fresh
interpreter (``sys.modules`` of this one holds them all) and reads what it imported."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.probes import cli_env

HEAVY = ("lightning", "torchvision", "matplotlib", "torchmetrics")

# Runs dnnkit.train as `python -m` would, with `argv`, then prints the heavy modules it imported
# (also when Hydra ends it with sys.exit) and the exit status.
PROBE = """
import json, runpy, sys
heavy = {heavy!r}
sys.argv = ["dnnkit.train", *{argv!r}]
code = 0
try:
    runpy.run_module("dnnkit.train", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
print("PROBE " + json.dumps({{"code": code, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}}))
"""


def probe(argv: list[str], tmp_path) -> tuple[dict, str]:
    """``({"code": exit status, "heavy": modules}, stderr)`` of ``python -m dnnkit.train *argv``."""
    source = PROBE.format(heavy=HEAVY, argv=argv)
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, cwd=tmp_path,
                          env=cli_env(), timeout=120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line.removeprefix("PROBE ")), proc.stderr


def test_import_of_the_entry_point_loads_no_lightning(tmp_path):
    source = f"import sys; import dnnkit.train; print(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r}))"
    out = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True, text=True, cwd=tmp_path, env=cli_env(), timeout=60, check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_help_composes_the_config_without_lightning(tmp_path):
    result, _ = probe(["--help"], tmp_path)
    assert result == {"code": 0, "heavy": []}


def test_a_config_error_is_reached_without_lightning(tmp_path):
    result, err = probe(["optimizer=nope", "hydra.run.dir=run"], tmp_path)
    assert result["code"] not in (0, None) and "nope" in err
    assert result["heavy"] == []
    assert not (tmp_path / "run").exists()
