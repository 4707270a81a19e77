"""Evaluation maths in numpy: confusion matrix, macro-F1 / accuracy / ABAW2021 score, CCC and ECE."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

ABAW2021_F1_WEIGHT = 0.67
ABAW2021_ACC_WEIGHT = 0.33


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """Count matrix with rows = true class, columns = predicted class.

    Args:
        y_true: (N,) integer labels in ``[0, num_classes)``.
        y_pred: (N,) integer predictions in ``[0, num_classes)``.
        num_classes: C, the size of the label space.

    Returns:
        (C, C) int64; ``cm[i, j]`` is the number of samples of true class i predicted as j. Sums to N.

    Raises:
        ValueError: shapes differ, or a label lies outside ``[0, num_classes)``.
    """
    t, p = _check_labels(y_true, y_pred, num_classes)
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_scores(
    cm: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Precision, recall, F1 and support per class from a (C, C) confusion matrix.

    A ratio whose denominator is 0 is 0 (sklearn's ``zero_division=0``): a never-predicted class has precision 0,
    a class absent from ``y_true`` has recall 0, and F1 is 0 when precision + recall is 0.

    Returns:
        ``(precision, recall, f1, support)``, each (C,); support is the row sum (true count per class).
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2.0 * precision * recall, precision + recall)
    return precision, recall, f1, support


def classification_metrics(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    class_names: Sequence[str],
    *,
    probs: npt.ArrayLike | None = None,
    ece_bins: int = 15,
) -> dict[str, Any]:
    """All single-label classification metrics of one evaluation, as a JSON-ready dict.

    ``macro_f1`` (the ABAW EXPR metric) is the unweighted mean of per-class F1 over the classes that occur in
    ``y_true`` — sklearn's ``f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))``. Classes of the
    label space with no true sample (e.g. ``Other`` on FER2013) are left out of the mean, so evaluating a basic7
    test set with an abaw8 model is not capped at 7/8; predictions into such a class still count as errors through
    the recall of the true class. ``per_class`` lists every class of the label space, with its support.

    Args:
        y_true: (N,) integer labels in ``[0, C)``, N ≥ 1.
        y_pred: (N,) integer predictions in ``[0, C)``.
        class_names: the C class names, in label order.
        probs: optional (N, C) class probabilities; adds ``ece`` (top-label, ``ece_bins`` equal-width bins).
        ece_bins: number of confidence bins for ``ece``.

    Returns:
        ``{"n", "accuracy", "macro_f1", "macro_f1_classes", "abaw2021", "per_class": {name: {"precision",
        "recall", "f1", "support"}}, "confusion": C lists of C ints, "class_names"}`` (+ ``"ece"``), where
        ``abaw2021 = 0.67 · macro_f1 + 0.33 · accuracy`` and ``macro_f1_classes`` names the classes averaged.

    Raises:
        ValueError: empty input, mismatched shapes, or a label outside the label space.
    """
    num_classes = len(class_names)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    if n == 0:
        raise ValueError("classification_metrics got 0 samples; evaluate on a non-empty split")
    precision, recall, f1, support = per_class_scores(cm)
    present = support > 0
    accuracy = float(np.trace(cm)) / n
    macro_f1 = float(f1[present].mean())
    out: dict[str, Any] = {
        "n": n,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "macro_f1_classes": [name for name, keep in zip(class_names, present, strict=True) if keep],
        "abaw2021": ABAW2021_F1_WEIGHT * macro_f1 + ABAW2021_ACC_WEIGHT * accuracy,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion": cm.tolist(),
        "class_names": list(class_names),
    }
    if probs is not None:
        out["ece"] = ece(probs, y_true, bins=ece_bins)
    return out


def ccc(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Lin's concordance correlation coefficient (the ABAW valence/arousal metric).

    ``ccc = 2·cov(x, y) / (var(x) + var(y) + (mean(x) − mean(y))²)`` with population (ddof=0) moments. Pairs where
    either value is NaN are dropped. Identical series give 1, ``y = −x`` gives −1 (for non-constant x). When the
    denominator is 0 both series are the same constant: that is perfect agreement and gives 1.0.

    Args:
        x: (N,) predictions.
        y: (N,) targets.

    Raises:
        ValueError: shapes differ, or no pair is left after dropping NaNs.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"ccc needs two series of equal length, got {a.shape[0]} and {b.shape[0]}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size == 0:
        raise ValueError("ccc got no pair with both values present; check the valence/arousal columns")
    ma, mb = a.mean(), b.mean()
    cov = float(((a - ma) * (b - mb)).mean())
    denom = float(a.var() + b.var() + (ma - mb) ** 2)
    if denom == 0.0:
        return 1.0
    return 2.0 * cov / denom


def ece(probs: npt.ArrayLike, y_true: npt.ArrayLike, bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (Guo et al. 2017).

    Confidence = max prob, split into ``bins`` equal-width bins ``(k/B, (k+1)/B]`` (the first bin also holds 0).
    ``ece = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|``; empty bins contribute nothing. Ties in argmax go to the lower
    class index, as ``np.argmax``.

    Args:
        probs: (N, C) probabilities (rows need not sum exactly to 1).
        y_true: (N,) integer labels in ``[0, C)``.
        bins: number of bins, ≥ 1.

    Returns:
        ECE in [0, 1].

    Raises:
        ValueError: shapes differ, empty input, or ``bins < 1``.
    """
    counts, conf_sum, correct_sum = reliability_bins(probs, y_true, bins=bins)
    n = counts.sum()
    return float(np.abs(correct_sum - conf_sum).sum() / n)


def reliability_bins(
    probs: npt.ArrayLike, y_true: npt.ArrayLike, bins: int = 15
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-bin sample counts, summed confidence and summed correctness (for ECE and reliability diagrams).

    Binning as in :func:`ece`. The sums are additive, so per-shard results can be added before dividing.

    Returns:
        ``(counts, conf_sum, correct_sum)``, each (bins,).
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true).astype(np.int64).ravel()
    if bins < 1:
        raise ValueError(f"ece bins must be >= 1, got {bins}")
    if p.ndim != 2 or p.shape[0] != t.shape[0]:
        raise ValueError(f"ece needs probs (N, C) and y_true (N,), got {p.shape} and {t.shape}")
    if t.size == 0:
        raise ValueError("ece got 0 samples")
    if t.min() < 0 or t.max() >= p.shape[1]:
        raise ValueError(f"ece labels must lie in [0, {p.shape[1]}), got range [{t.min()}, {t.max()}]")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins).astype(np.float64)
    correct_sum = np.bincount(idx, weights=correct, minlength=bins).astype(np.float64)
    return counts, conf_sum, correct_sum


def _check_labels(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    t = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(y_pred).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} has labels outside [0, {num_classes}): range [{arr.min()}, {arr.max()}]; "
                "drop unlabelled rows (label -1) before evaluating, or check the label space"
            )
    return t, p


def _safe_div(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
