"""Figures for a run: fixed-size PNGs drawn with matplotlib's Agg canvas.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot global state),
saves one PNG of exactly ``FIGSIZE`` inches at ``DPI`` (600 x 500 pixels), and returns the
:class:`pathlib.Path` it wrote. Array inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from fedgmi.atomic import replacing

FIGSIZE: tuple[float, float] = (6, 5)
DPI: int = 100


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a float numpy array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x, dtype=float)


def _new_figure() -> Figure:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG of exactly ``FIGSIZE * DPI`` pixels (through a temporary file and
    a rename), release it, return the path."""
    out = Path(path)
    try:
        with replacing(out) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        fig.clear()
    return out


def _empty_message(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def plot_proportions(estimated: Any, true: Any, names: Sequence[str], path: str | Path) -> Path:
    """Scatter estimated against true mixture proportions.

    Args:
        estimated: (C, K) estimated proportions, columns already aligned to the true components.
        true: (C, K) true proportions.
        names: K component names, used for the legend.
        path: where to write the PNG.

    Returns:
        The path written. The mean total-variation distance
        ``mean_c 0.5 * sum_k |estimated[c, k] - true[c, k]|`` is shown in a text box.
    """
    est = _to_numpy(estimated)
    tru = _to_numpy(true)
    if est.ndim == 1:
        est = est[None, :]
    if tru.ndim == 1:
        tru = tru[None, :]
    if est.shape != tru.shape:
        raise ValueError(f"estimated {est.shape} and true {tru.shape} must have the same shape")
    k = est.shape[1]
    if len(names) != k:
        raise ValueError(f"expected {k} names, got {len(names)}")
    tv = float(np.mean(0.5 * np.abs(est - tru).sum(axis=1))) if est.size else float("nan")

    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="y = x")
    for j in range(k):
        ax.scatter(tru[:, j], est[:, j], s=30, alpha=0.8, color=f"C{j % 10}", label=str(names[j]))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("true proportion")
    ax.set_ylabel("estimated proportion")
    ax.set_title("estimated vs true mixture proportions")
    ax.text(
        0.03,
        0.97,
        f"mean TV = {tv:.4f}",
        transform=ax.transAxes,
        ha="left",
        va="top",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
    )
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_image_grid(
    rows: Sequence[Any], row_labels: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Draw an R x n grid of grey or colour images, one labelled row per input array.

    Args:
        rows: R arrays, each (n, 1, H, W), (n, 3, H, W) (RGB) or (n, H, W) with values in
            [0, 1]. Rows may have
            different n; the grid has max n columns and short rows leave blank cells.
        row_labels: R labels, drawn to the left of each row.
        path: where to write the PNG.
        title: figure title.

    Returns:
        The path written.
    """
    if len(row_labels) != len(rows):
        raise ValueError(f"expected {len(rows)} row labels, got {len(row_labels)}")
    images = []
    for r, row in enumerate(rows):
        arr = _to_numpy(row)
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim == 4 and arr.shape[1] == 3:
            arr = arr.transpose(0, 2, 3, 1).clip(0.0, 1.0)  # (n, H, W, 3) for imshow
        if arr.ndim != 3 and not (arr.ndim == 4 and arr.shape[-1] == 3):
            raise ValueError(f"row {r}: expected (n, 1, H, W), (n, 3, H, W) or (n, H, W), got {arr.shape}")
        images.append(arr)

    fig = _new_figure()
    if title:
        fig.suptitle(title)
    n_rows = len(images)
    n_cols = max((a.shape[0] for a in images), default=0)
    if n_rows == 0 or n_cols == 0:
        _empty_message(fig.add_subplot(1, 1, 1), "no images")
        return _save(fig, path)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, arr in enumerate(images):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < arr.shape[0]:
                ax.imshow(arr[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.set_axis_off()
        axes[r][0].set_ylabel(str(row_labels[r]), rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.02, top=0.9, wspace=0.05, hspace=0.05)
    return _save(fig, path)


def _series(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> tuple[list, list]:
    xs, ys = [], []
    for row in rows:
        if y_key not in row or x_key not in row:
            continue
        try:
            x, y = float(row[x_key]), float(row[y_key])
        except (TypeError, ValueError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _plot_lines(
    rows: Sequence[Mapping[str, Any]],
    x_key: str,
    y_keys: Sequence[str],
    path: str | Path,
    title: str,
    xlabel: str,
    x_scale: float = 1.0,
    rounds: int | None = None,
) -> Path:
    """One line per key of ``y_keys`` against ``x_key``; the y-axis is named after the keys
    drawn. ``rounds``: the x-axis is the round, with a tick for every round 1..rounds (thinned
    to at most ~20 labels)."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = []
    for key in y_keys:
        xs, ys = _series(rows, x_key, key)
        if not xs:
            continue
        ax.plot([x * x_scale for x in xs], ys, marker="o", markersize=3, label=key)
        drawn.append(key)
    ax.set_title(title)
    if not drawn:
        _empty_message(ax, "no metrics")
        return _save(fig, path)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(y_label(drawn))
    if rounds:
        step = max(1, math.ceil(rounds / 20))
        ax.set_xticks(range(1, rounds + 1, step) if step > 1 else range(1, rounds + 1))
        ax.set_xlim(0.5, rounds + 0.5)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


Y_UNITS = {"assignment_accuracy": "accuracy", "client_accuracy_mean": "accuracy", "nmi": "NMI",
           "proportion_error_tv": "TV distance", "test_nll": "nats per sample", "train_neg_elbo": "nats per sample",
           "train_cross_entropy": "nats per sample"}
"""What each metric measures, to name a y-axis."""


def y_label(keys: Sequence[str]) -> str:
    """A y-axis title for the metrics drawn: the metric itself when one, else what they
    measure (``accuracy, NMI, TV distance (0 to 1)`` for the usual curves)."""
    if len(keys) == 1:
        return keys[0].replace("_", " ")
    measures = list(dict.fromkeys(Y_UNITS.get(k, k.replace("_", " ")) for k in keys))
    unit_interval = all(Y_UNITS.get(k) in ("accuracy", "NMI", "TV distance") for k in keys)
    return ", ".join(measures) + (" (0 to 1)" if unit_interval else "")


def plot_metric_curves(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], path: str | Path, rounds: int | None = None
) -> Path:
    """Plot one line per metric against the round, with a tick for every round of the run (a
    point at every evaluated round; the title says how often that was).

    Args:
        rows: one dict per evaluation, each with a ``"round"`` key and float values.
        keys: metric names to plot; keys absent from every row (or non-finite) are skipped.
        path: where to write the PNG.
        rounds: the run's rounds (default: the last row's round).

    Returns:
        The path written (a figure saying "no metrics" when no key is present).
    """
    evaluated = sorted({int(float(r["round"])) for r in rows if "round" in r})
    rounds = rounds or (evaluated[-1] if evaluated else None)
    every = f" (evaluated at {len(evaluated)} of {rounds} rounds)" if rounds and len(evaluated) < rounds else ""
    return _plot_lines(rows, "round", keys, path, "metrics over rounds" + every, "round", rounds=rounds)


def plot_component_accuracy(
    matched: Any, client_model: Any, names: Sequence[str], path: str | Path,
    columns: Sequence[str] | None = None,
) -> Path:
    """Heatmap of per-component head accuracy plus the client model's accuracy.

    Args:
        matched: (K, J) accuracy (J learned components, K = J unless the learned K differs from
            the true one); row t is inherent distribution ``names[t]``, column j is component ``c_j``.
        client_model: (K,) accuracy of the client (mixture) model on each inherent distribution.
        names: K names of the inherent distributions.
        path: where to write the PNG.
        columns: J column names (default ``c0..cJ-1``).

    Returns:
        The path written. The table drawn is (K, J + 1), the last column "client model".
    """
    m = _to_numpy(matched)
    cm = _to_numpy(client_model).reshape(-1)
    k = m.shape[0] if m.ndim >= 1 else 0
    if m.ndim != 2:
        raise ValueError(f"matched must be (K, J), got {m.shape}")
    columns = [f"c{j}" for j in range(m.shape[1])] if columns is None else list(columns)
    if len(columns) != m.shape[1]:
        raise ValueError(f"expected {m.shape[1]} column names, got {len(columns)}")
    if cm.shape != (k,):
        raise ValueError(f"client_model must be ({k},), got {cm.shape}")
    if len(names) != k:
        raise ValueError(f"expected {k} names, got {len(names)}")
    table = np.concatenate([m, cm[:, None]], axis=1)

    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(table, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label("accuracy (fraction correct)")
    for t in range(k):
        for j in range(table.shape[1]):
            value = table[t, j]
            text = "-" if not np.isfinite(value) else f"{value:.2f}"  # no such component
            colour = "black" if np.isfinite(value) and value > 0.6 else "white"
            ax.text(j, t, text, ha="center", va="center", color=colour, fontsize="small")
    ax.set_xticks(range(table.shape[1]))
    ax.set_xticklabels(columns + ["client model"], rotation=30, ha="right")
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"p{t} ({names[t]})" for t in range(k)])
    ax.set_xlabel("classifier: component (matched) or client model")
    ax.set_ylabel("test data of inherent distribution")
    ax.set_title("accuracy per inherent distribution and component")
    fig.subplots_adjust(left=0.25, bottom=0.2)
    return _save(fig, path)


def plot_accuracy_vs_bytes(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    x_key: str = "bytes_up",
    y_keys: Sequence[str] = ("assignment_accuracy", "proportion_error_tv"),
) -> Path:
    """Plot metrics against cumulative uplink traffic.

    Args:
        rows: one dict per evaluation holding ``x_key`` (cumulative bytes) and metric values.
        path: where to write the PNG.
        x_key: the key of the cumulative byte count; plotted in MB (bytes / 1e6).
        y_keys: metric names to plot; absent keys are skipped.

    Returns:
        The path written (a figure saying "no metrics" when no key is present).
    """
    return _plot_lines(
        rows,
        x_key,
        y_keys,
        path,
        "metrics vs communication",
        "cumulative uplink (MB)",
        x_scale=1e-6,
    )


def plot_runs_vs_bytes(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    x_key: str = "bytes_up",
    y_keys: Sequence[str] = ("assignment_accuracy", "proportion_error_tv"),
) -> Path:
    """Compare runs: one panel per metric, one line per run, against cumulative uplink bytes.

    Args:
        runs: run name -> its rows (one dict per evaluation, as in metrics.csv).
        path: where to write the PNG.
        x_key: the cumulative byte count; plotted in MB (bytes / 1e6) on a log axis.
        y_keys: the metrics, one panel each.

    Returns:
        The path written.
    """
    fig = _new_figure()
    for i, key in enumerate(y_keys):
        ax = fig.add_subplot(len(y_keys), 1, i + 1)
        for j, (name, rows) in enumerate(runs.items()):
            xs, ys = _series(rows, x_key, key)
            ax.plot([x * 1e-6 for x in xs], ys, marker="o", markersize=2, color=f"C{j % 10}",
                    linestyle="-" if j < 10 else "--", label=name)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(key, fontsize="small")
        ax.grid(True, alpha=0.3)
    ax.set_xlabel("cumulative uplink (MB)")
    fig.axes[0].legend(fontsize="xx-small", ncol=2)
    return _save(fig, path)
