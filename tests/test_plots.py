"""dnnkit.plots: curves that stay distinguishable beyond ten lines, make_grid image grids, the
gradient-health plot; matplotlib only loaded when something is drawn."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from dnnkit import plots
from dnnkit.nn.health import diagnose
from dnnkit.results import StageResult


def results(n: int) -> list[StageResult]:
    return [StageResult(f"s{i}", 0, Path("."), {}, history=[{"epoch": e, "val/acc": 0.5 + 0.01 * (e + i)} for e in range(3)])
            for i in range(n)]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots close (each closes the one it saved), kept open to be inspected."""
    figures: list = []
    with monkeypatch.context() as m:
        m.setattr(plt, "close", figures.append)
        yield figures
    for fig in figures:
        plt.close(fig)


def combos(ax) -> list[tuple]:
    return [(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]


def test_importing_plots_loads_no_matplotlib():
    code = "import sys, dnnkit.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_series_styles_up_to_ten_is_the_default_cycle():
    assert plots.series_styles(10, marker="o") == [{"color": f"C{i}", "linestyle": "-", "marker": "o"} for i in range(10)]


@pytest.mark.parametrize("n", [11, 12, 40, 140])
def test_series_styles_beyond_ten_are_all_distinct(n):
    styles = plots.series_styles(n)
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in styles}) == n


def test_twelve_curves_get_twelve_distinct_styles(tmp_path, drawn):
    assert plots.save_curves(results(12), tmp_path / "curves.png") == tmp_path / "curves.png"
    lines = combos(drawn[0].axes[0])
    assert len(lines) == 12 and len(set(lines)) == 12
    assert len({color for color, _, _ in lines}) == 10  # the colours alone repeat: style and marker tell them apart
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_few_curves_look_as_before(tmp_path, drawn):
    plots.save_curves(results(3), tmp_path / "curves.png")
    assert combos(drawn[0].axes[0]) == [(matplotlib.colors.to_hex(f"C{i}"), "-", "o") for i in range(3)]


def test_curves_without_the_metric_draw_nothing(tmp_path):
    assert plots.save_curves(results(2), tmp_path / "curves.png", metric="val/loss") is None
    assert not (tmp_path / "curves.png").exists()


def test_health_plot_with_many_layers_keeps_them_apart(tmp_path, drawn):
    names = [f"hidden{i}" for i in range(1, 12)] + ["output"]
    history = [{"step": s, "grad": {n: 10.0 ** -(12 - i) for i, n in enumerate(names)}, "update": {n: 1e-3 for n in names},
                "act": {}} for s in range(5)]
    plots.save_health_plot(history, tmp_path / "gradient_health.png", diagnose(history))
    for ax in drawn[0].axes[:2]:
        assert len(set(combos(ax))) == 12
    assert drawn[0]._suptitle.get_text().startswith("vanishing: hidden1, hidden2")
    assert (tmp_path / "gradient_health.png").stat().st_size > 5000


def test_tile_is_make_grid_with_white_borders():
    images = torch.arange(6 * 2 * 3, dtype=torch.float).view(6, 2, 3) / 36
    grid = plots.tile(images, ncols=4)
    assert grid.shape == (2 * 3 + 1, 4 * 4 + 1)  # two rows of four, a 1-pixel border around every tile
    assert torch.equal(grid[1:3, 1:4], images[0]) and torch.equal(grid[4:6, 5:8], images[5])
    assert grid[0].eq(1).all() and grid[:, 0].eq(1).all() and grid[4:6, 9:].eq(1).all()  # blank tiles are white


def test_tile_scales_each_image_and_pads_a_lone_one():
    images = torch.stack([torch.full((2, 2), 5.0), torch.tensor([[0.0, 2.0], [4.0, 8.0]])])
    grid = plots.tile(images, ncols=2, normalize_each=True)
    assert torch.equal(grid[1:3, 1:3], torch.zeros(2, 2))  # a constant image reads 0
    assert torch.equal(grid[1:3, 4:6], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    lone = plots.tile(images[1:], ncols=1, normalize_each=True)
    assert lone.shape == (4, 4) and lone[0].eq(1).all()  # make_grid alone would drop the border


def test_image_grids_write_pngs_of_the_expected_size(tmp_path):
    inputs = torch.rand(5, 784)
    path = plots.save_reconstructions(tmp_path / "r.png", inputs, inputs.flip(1))
    assert plt.imread(path).shape[:2] == (3 * (2 * 29 + 1), 3 * (5 * 29 + 1))
    path = plots.save_filters(tmp_path / "f.png", torch.randn(10, 784))  # 4 to a row, 3 rows
    assert plt.imread(path).shape[:2] == (3 * (3 * 29 + 1), 3 * (4 * 29 + 1))
    assert plots.save_filters(tmp_path / "none.png", torch.randn(4, 10)) is None  # not a square image
    assert plots.save_reconstructions(tmp_path / "none.png", torch.rand(2, 10), torch.rand(2, 10)) is None
    assert plots.image_side(784) == 28 and plots.image_side(10) is None
    assert math.isclose(plt.imread(tmp_path / "f.png")[0, 0, 0], 1.0)  # the border is white
