"""``python -m bench.startup``: its table from fabricated measurements (fast), and one round on
the small fake data set (spawns training processes: slow). The timings themselves are not tested."""

import json
import os

import pytest

from bench import startup
from tests.bench.sections import number, outside, positive, section, table


def test_stage_costs_read_the_probe_and_the_result_file(tmp_path):
    stage = tmp_path / "B" / "seed1"
    stage.mkdir(parents=True)
    (stage / startup.PROBE_FILE).write_text(json.dumps({"first_step": 100.0, "fit_end": 105.0}))
    (stage / "result.json").write_text("{}")
    os.utime(stage / "result.json", (107.5, 107.5))
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / startup.PROBE_FILE).write_text(json.dumps({"first_step": 90.0}))  # killed before its fit ended
    costs = {c["stage"]: c for c in startup.stage_costs(tmp_path)}
    assert costs["B/seed1"] == {"stage": "B/seed1", "first_step": 100.0, "test_export": pytest.approx(2.5)}
    assert costs["A"]["first_step"] == 90.0 and costs["A"]["test_export"] != costs["A"]["test_export"]  # NaN


def test_report_puts_medians_beside_the_goals():
    short = [{"floor": 5.0, "help": h, "error": 1.0, "first_step": 7.0, "test_export": 0.5, "mnist_bn_wall": 12.0} for h in (1.0, 3.0, 1.5)]
    transfers = [{"wall": 100.0, "fit": 85.0, "fit_share": 0.85, "first_step": 8.0, "test_export": [0.5, 1.5, 2.0]}]
    rows = table(startup.report(short, transfers, "python -m bench.startup", 5), "measurement")
    help_row = rows["`--help`, whole process (s)"]
    assert help_row[0] == "1.50 (1.00-3.00)" and help_row[-1] == "met"
    assert rows["first training step, mnist_bn, from the command (s)"][-1] == "**not met**"
    assert rows["`+recipe=transfer`: fit share of wall (%)"][0] == "85.0" and rows["`+recipe=transfer`: fit share of wall (%)"][-1] == "met"
    assert rows["`+recipe=transfer`: test + export per stage (s)"][0] == "1.50 (0.50-2.00)"
    assert rows["`+recipe=transfer`: test + export per stage (s)"][-1] == "**not met**"


@pytest.mark.slow  # spawns python -m dnnkit.train four times
def test_one_round_goes_into_its_section(fake_data, results, tmp_path):
    before = results.read_text()
    argv = ["--rounds", "1", "--steps", "2", "--transfer-runs", "0", "--runs", str(tmp_path / "runs"),
            "--results", str(results), "--", "data.val_size=200"]
    assert startup.main(argv) == 0
    text = section(results, "startup")
    rows = table(text, "measurement")
    first = number(rows["first training step, mnist_bn, from the command (s)"][0])
    wall = number(rows["mnist_bn `++trainer.max_steps=2`, whole process (s)"][0])
    assert 0 < first < wall and positive(rows["`--help`, whole process (s)"][0])
    assert positive(rows["config error `optimizer=nope`, to exit (s)"][0])
    assert 0 < number(rows["test + export of the stage, mnist_bn (s)"][0]) < wall
    assert "Command: `python -m bench.startup --rounds 1" in text
    assert outside(results.read_text(), "startup") == outside(before, "startup")
