"""PNG plots for evaluation and reports (matplotlib Agg, no pyplot state), written atomically."""

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


def _figure(*, width_in: float, height_in: float) -> tuple[Any, Any]:
    # Figure + Agg canvas directly: no pyplot global state, safe in threads and Ray workers, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Any, path: str) -> None:
    buf = io.BytesIO()
    # No "Software" metadata: identical plots give identical bytes across matplotlib versions.
    fig.savefig(buf, format="png", metadata={"Software": None})
    fs.write_bytes(path, buf.getvalue())
