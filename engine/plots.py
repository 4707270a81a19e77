"""PNG plots for evaluation and reports (matplotlib Agg, no pyplot state): as files (written atomically) or bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.io import fs

_DPI = 100


def confusion_png(cm: npt.ArrayLike, class_names: Sequence[str], path: str, title: str = "Confusion matrix") -> None:
    """Write a confusion-matrix heatmap: colour = row-normalised share (recall), text = count and share.

    Args:
        cm: (C, C) counts, rows = true class, columns = predicted class (as :func:`engine.metrics.confusion_matrix`).
        class_names: the C class names.
        path: destination PNG (local path or URI), written atomically.
        title: figure title.

    Raises:
        ValueError: ``cm`` is not (C, C) with C = len(class_names).
    """
    counts = np.asarray(cm, dtype=np.int64)
    c = len(class_names)
    if counts.shape != (c, c):
        raise ValueError(f"confusion_png needs a ({c}, {c}) matrix for {c} class names, got shape {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)

    fig, ax = _figure(width_in=1.2 + 0.75 * c, height_in=1.0 + 0.7 * c)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(c):
        for j in range(c):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(c), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(c), labels=[f"{name} ({rows[i, 0]})" for i, name in enumerate(class_names)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (count)")
    ax.set_title(title)
    _save(fig, path)


def bars_png(
    series: Mapping[str, Sequence[float]],
    class_names: Sequence[str],
    path: str,
    *,
    title: str = "",
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
) -> None:
    """Write grouped bars: one group per class, one bar per series (e.g. per-class thresholds of rounds r001…r003).

    Args:
        series: ordered ``{legend label: C values}``; NaN values are drawn as missing bars.
        class_names: the C class names (x axis).
        path: destination PNG (local path or URI), written atomically.
        title: figure title.
        ylabel: y-axis label, with its unit.
        ylim: optional fixed y range, e.g. (0, 1) for F1 or thresholds.

    Raises:
        ValueError: no series, or a series whose length is not C.
    """
    c = len(class_names)
    if not series:
        raise ValueError("bars_png needs at least one series")
    for label, values in series.items():
        if len(values) != c:
            raise ValueError(f"bars_png series {label!r} has {len(values)} values for {c} classes")
    k = len(series)
    width = 0.8 / k
    x = np.arange(c, dtype=np.float64)

    fig, ax = _figure(width_in=max(5.0, 1.0 + 0.35 * c * k + 0.4 * c), height_in=3.8)
    for s, (label, values) in enumerate(series.items()):
        ax.bar(x - 0.4 + width * (s + 0.5), np.asarray(values, dtype=np.float64), width=width, label=label)
    ax.set_xticks(x, labels=list(class_names), rotation=30, ha="right")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if k > 1:
        ax.legend(fontsize=8)
    _save(fig, path)


def _figure(width_in: float, height_in: float) -> tuple[Any, Any]:
    # Figure + Agg canvas directly: no pyplot global state, safe in threads and Ray workers, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # figures made with Figure(...) directly get their canvas here
    buf = io.BytesIO()
    # No "Software" metadata: identical plots give identical bytes across matplotlib versions.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _save(fig: Any, path: str) -> None:
    fs.write_bytes(path, _png(fig))


def _tau(v: float) -> str:
    return f"{v:.3f}" if np.isfinite(v) else "—"


# ---------------------------------------------------------------------- in memory (report.html)


def rebin(hist: npt.ArrayLike, bins: int) -> npt.NDArray[np.int64]:
    """Sum (C, B) fine histogram bins into (C, bins) coarse ones; B must be a multiple of ``bins``, else the
    coarse edges are the fine edges closest to ``i / bins``."""
    h = np.asarray(hist, dtype=np.int64)
    b = h.shape[1]
    edges = np.round(np.arange(bins + 1) * b / bins).astype(np.int64)
    return np.stack([h[:, edges[i] : edges[i + 1]].sum(1) for i in range(bins)], axis=1)


def grouped_bars_png(
    series: Mapping[str, Sequence[float]],
    names: Sequence[str],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> bytes:
    """Grouped bars (one group per class, one bar per series) as PNG bytes; NaN values are missing bars."""
    fig, ax = _figure(max(5.0, 1.0 + 0.3 * len(names) * max(1, len(series)) + 0.4 * len(names)), 3.4)
    k = max(1, len(series))
    x = np.arange(len(names), dtype=np.float64)
    for i, (label, vals) in enumerate(series.items()):
        ax.bar(x - 0.4 + 0.8 / k * (i + 0.5), np.asarray(vals, dtype=np.float64), width=0.8 / k, label=label)
    ax.set_xticks(x, labels=list(names), rotation=30, ha="right")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


def histograms_png(hist: npt.NDArray[np.int64], names: Sequence[str], thresholds: Sequence[float]) -> bytes:
    """A grid of per-class histograms (C, bins) over [0, 1] with each class's threshold as a dashed line."""
    from matplotlib.figure import Figure

    c, bins = hist.shape
    cols = min(4, c)
    rows = -(-c // cols)
    fig = Figure(figsize=(3.0 * cols, 2.2 * rows), dpi=100, layout="constrained")
    edges = np.arange(bins + 1) / bins
    for j in range(c):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.bar(edges[:-1], hist[j], width=1 / bins, align="edge", color="#4c72b0")
        if hist[j].any():
            ax.set_yscale("log")
        else:
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes, color="#888")
        if np.isfinite(thresholds[j]):
            ax.axvline(thresholds[j], color="#c44e52", linestyle="--", linewidth=1.5)
        ax.set_xlim(0, 1)
        ax.set_title(f"{names[j]} (n={int(hist[j].sum())}, τ={_tau(thresholds[j])})", fontsize=8)
        ax.tick_params(labelsize=7)
    return _png(fig)


def confusions_png(matrices: dict[str, Any], names: Sequence[str]) -> bytes:
    """Side-by-side row-normalised confusion matrices (colour = recall share, text = count)."""
    from matplotlib.figure import Figure

    c = len(names)
    fig = Figure(figsize=(1.0 + (0.6 * c + 1.2) * len(matrices), 1.2 + 0.55 * c), dpi=100, layout="constrained")
    for i, (title, cm) in enumerate(matrices.items()):
        counts = np.asarray(cm, dtype=np.int64)
        rows = counts.sum(1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        ax = fig.add_subplot(1, len(matrices), i + 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for a in range(c):
            for b in range(c):
                ax.text(
                    b,
                    a,
                    str(counts[a, b]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[a, b] > 0.5 else "black",
                )
        ax.set_xticks(range(c), labels=list(names), rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(c), labels=list(names), fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=9)
    return _png(fig)
