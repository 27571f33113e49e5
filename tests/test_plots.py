"""Tests for fedgmi.plots: every figure is a 600 x 500 PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from fedgmi import plots

SHAPE = (500, 600)


def _check_png(path: Path) -> None:
    assert path.is_file()
    assert path.stat().st_size > 0
    assert mpimg.imread(path).shape[:2] == SHAPE


def _proportions(rng: np.random.Generator, c: int = 6, k: int = 3) -> np.ndarray:
    return rng.dirichlet(np.ones(k), size=c)


def test_figsize_constants() -> None:
    assert plots.FIGSIZE == (6, 5)
    assert plots.DPI == 100


def test_proportions_perfect_vs_shuffled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    true = _proportions(rng)
    names = ["mnist", "fashion", "kmnist"]
    perfect = plots.plot_proportions(true.copy(), true, names, tmp_path / "perfect.png")
    shuffled_est = true[rng.permutation(true.shape[0])][:, ::-1]
    shuffled = plots.plot_proportions(shuffled_est, true, names, tmp_path / "shuffled.png")
    assert isinstance(perfect, Path)
    _check_png(perfect)
    _check_png(shuffled)
    assert perfect.read_bytes() != shuffled.read_bytes()


def test_proportions_accepts_tensors_and_rejects_shape_mismatch(tmp_path: Path) -> None:
    true = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    _check_png(plots.plot_proportions(true.clone(), true, ["a", "b"], tmp_path / "t.png"))
    with pytest.raises(ValueError):
        plots.plot_proportions(np.ones((2, 3)) / 3, np.ones((2, 2)) / 2, ["a", "b"], tmp_path / "x")


@pytest.mark.parametrize("channel", [True, False])
def test_image_grid_shapes(tmp_path: Path, channel: bool) -> None:
    rng = np.random.default_rng(1)
    shape = (5, 1, 8, 8) if channel else (5, 8, 8)
    rows = [rng.random(shape), rng.random(shape)]
    out = plots.plot_image_grid(rows, ["original", "reconstruction"], tmp_path / "g.png", "t")
    _check_png(out)


def test_image_grid_tensor_rows(tmp_path: Path) -> None:
    rows = [torch.rand(4, 1, 6, 6, requires_grad=True) for _ in range(3)]
    _check_png(plots.plot_image_grid(rows, ["c0", "c1", "c2"], tmp_path / "g.png", "samples"))


def test_metric_curves(tmp_path: Path) -> None:
    rows = [{"round": r, "acc": 0.1 * r, "loss": 1.0 / (r + 1)} for r in range(5)]
    _check_png(plots.plot_metric_curves(rows, ["acc", "loss", "absent"], tmp_path / "m.png"))


def test_metric_curves_no_matching_keys(tmp_path: Path) -> None:
    rows = [{"round": r, "acc": 0.1 * r} for r in range(3)]
    _check_png(plots.plot_metric_curves(rows, ["nothing"], tmp_path / "none.png"))
    _check_png(plots.plot_metric_curves([], ["acc"], tmp_path / "empty.png"))


def test_component_accuracy_k3(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    matched = rng.random((3, 3))
    client = rng.random(3)
    out = plots.plot_component_accuracy(matched, client, ["a", "b", "c"], tmp_path / "h.png")
    _check_png(out)
    with pytest.raises(ValueError):
        plots.plot_component_accuracy(matched, client[:2], ["a", "b", "c"], tmp_path / "bad.png")


def test_component_accuracy_with_more_learned_components_than_distributions(tmp_path: Path) -> None:
    matched, client = np.random.default_rng(3).random((3, 4)), np.full(3, 0.5)
    columns = ["c0>p0", "c2>p0", "c1>p1", "c3>p2"]
    _check_png(plots.plot_component_accuracy(matched, client, ["a", "b", "c"], tmp_path / "h.png", columns))
    with pytest.raises(ValueError, match="column names"):
        plots.plot_component_accuracy(matched, client, ["a", "b", "c"], tmp_path / "bad.png", columns[:3])


def test_accuracy_vs_bytes(tmp_path: Path) -> None:
    rows = [
        {
            "round": r,
            "bytes_up": 2e6 * r,
            "assignment_accuracy": 0.2 * r,
            "proportion_error_tv": 0.5,
        }
        for r in range(4)
    ]
    _check_png(plots.plot_accuracy_vs_bytes(rows, tmp_path / "b.png"))
    _check_png(plots.plot_accuracy_vs_bytes([{"round": 0}], tmp_path / "none.png"))


def test_runs_vs_bytes(tmp_path: Path) -> None:
    def rows(scale):
        return [{"bytes_up": scale * 1e6 * (r + 1), "assignment_accuracy": 0.1 * r, "proportion_error_tv": 0.3 / (r + 1)}
                for r in range(5)]

    runs = {f"setting{i}": rows(2 ** i) for i in range(12)}  # more runs than colours
    _check_png(plots.plot_runs_vs_bytes(runs, tmp_path / "runs.png"))


@pytest.fixture
def drawn(monkeypatch) -> list[dict]:
    """What each figure saved shows: per axes, x and y titles and x ticks."""
    shown, save = [], plots._save

    def keep(fig, path):
        shown.append([{"x": ax.get_xlabel(), "y": ax.get_ylabel(), "xticks": list(ax.get_xticks())}
                      for ax in fig.axes])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return shown


def test_the_heatmap_names_its_axes_and_its_colour_bar(tmp_path: Path, drawn) -> None:
    plots.plot_component_accuracy(np.eye(3), np.ones(3), ["a", "b", "c"], tmp_path / "h.png")
    (heatmap, colour_bar), = drawn
    assert heatmap["x"] and heatmap["y"] and colour_bar["y"] == "accuracy (fraction correct)"


def test_curves_tick_every_round_and_name_the_y_axis(tmp_path: Path, drawn) -> None:
    rows = [{"round": r, "assignment_accuracy": 0.1 * r, "nmi": 0.05 * r} for r in (5, 10)]
    plots.plot_metric_curves(rows, ["assignment_accuracy", "nmi"], tmp_path / "c.png", rounds=10)
    (curves,), = drawn
    assert [int(t) for t in curves["xticks"]] == list(range(1, 11))
    assert curves["y"] == "accuracy, NMI (0 to 1)"


def test_the_select_k_tables_fit_80_columns(tmp_path: Path) -> None:
    from rich.console import Console

    from fedgmi.selection import ClientScore, KResult, Selection, print_selection

    results = [KResult(k, 300.0 - 10 * k, 1.234, 0.5412, 123.4, 12_345_678, 23_456_789, 1000, 2000, 0.4321,
                       0.8123, 0.0123, {c: ClientScore(30000.0 + c, 100, 50.0, 80) for c in range(3)})
               for k in range(1, 6)]
    found = Selection(results, 0, 1.0, 0.2, "FedGMI", 64, 3, "nll", "paired").choose()
    console = Console(width=80, record=True)
    print_selection(found, tmp_path / "run", console)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "290.00 +- 1.23" in text and "23.46 MB" in text
