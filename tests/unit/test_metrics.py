"""Unit tests of engine.metrics: hand-computed toys, sklearn cross-checks, CCC and ECE."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from engine.metrics import ccc, classification_metrics, confusion_matrix, ece, reliability_bins

NAMES3 = ["A", "B", "C"]
# true: A A A B B C ; pred: A A B B C C
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


def test_confusion_matrix_toy_exact() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_classification_metrics_toy_hand_computed() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES3)
    # A: P=2/2, R=2/3, F1=0.8 ; B: P=1/2, R=1/2, F1=0.5 ; C: P=1/2, R=1, F1=2/3
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-15)
    assert m["per_class"]["A"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["B"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["C"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    macro = (0.8 + 0.5 + 2 / 3) / 3
    assert m["macro_f1"] == pytest.approx(macro, abs=1e-12)
    assert m["abaw2021"] == pytest.approx(0.67 * macro + 0.33 * 4 / 6, abs=1e-12)
    assert m["macro_f1_classes"] == NAMES3
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["class_names"] == NAMES3
    json.dumps(m)  # JSON-ready: plain Python types only


def test_macro_f1_averages_only_classes_present_in_y_true() -> None:
    names = ["A", "B", "C", "Other"]
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 3, 1, 1, 2, 0]  # one prediction into "Other", which has no true sample
    m = classification_metrics(y_true, y_pred, names)
    assert m["macro_f1_classes"] == ["A", "B", "C"]
    assert m["per_class"]["Other"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # A: P=1/2 R=1/2 F1=1/2 ; B: 1 ; C: P=1 R=1/2 F1=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3, abs=1e-12)
    expected = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true), zero_division=0)
    assert m["macro_f1"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = 7
    y_true = rng.integers(0, c, size=500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, c, size=500))
    y_pred[y_pred == 5] = 4  # class 5 never predicted: precision 0 by convention
    names = [f"c{i}" for i in range(c)]
    m = classification_metrics(y_true, y_pred, names)
    np.testing.assert_array_equal(m["confusion"], sk_confusion_matrix(y_true, y_pred, labels=range(c)))
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    sk_f1 = f1_score(y_true, y_pred, average="macro", labels=range(c), zero_division=0)
    assert m["macro_f1"] == pytest.approx(sk_f1, abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(c), zero_division=0)
    for i, name in enumerate(names):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert m["per_class"]["c5"]["precision"] == 0.0


def test_labels_outside_label_space_raise() -> None:
    with pytest.raises(ValueError, match=r"y_true has labels outside \[0, 3\): range \[-1, 2\]"):
        confusion_matrix([-1, 0, 2], [0, 0, 2], 3)
    with pytest.raises(ValueError, match=r"y_pred has labels outside \[0, 3\)"):
        classification_metrics([0, 1], [0, 3], NAMES3)
    with pytest.raises(ValueError, match="differ in length: 2 vs 3"):
        confusion_matrix([0, 1], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="0 samples"):
        classification_metrics([], [], NAMES3)


def test_ccc_identical_negated_shifted_and_constant() -> None:
    x = np.array([0.1, -0.4, 0.3, 0.9, -0.2])
    assert ccc(x, x) == pytest.approx(1.0, abs=1e-15)
    var = float(np.var(x))
    # -x: -2·var / (2·var + (2·mean)²); exactly -1 only for a zero-mean series.
    assert ccc(x, -x) == pytest.approx(-2 * var / (2 * var + (2 * 0.14) ** 2), abs=1e-12)
    assert ccc(x - x.mean(), x.mean() - x) == pytest.approx(-1.0, abs=1e-12)
    # Shift by d lowers CCC but not Pearson: 2·var / (2·var + d²) with population var.
    assert ccc(x, x + 0.5) == pytest.approx(2 * var / (2 * var + 0.25), abs=1e-12)
    assert ccc([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]) == 1.0
    assert ccc([0.3, 0.3], [0.1, 0.1]) == 0.0  # both constant, different: denominator (0.2)² > 0, cov 0
    # NaN pairs dropped.
    assert ccc([0.1, np.nan, 0.5], [0.1, 0.2, 0.5]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        ccc([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no pair"):
        ccc([np.nan], [1.0])


def test_ccc_matches_formula_on_random_data() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = 0.7 * x + rng.normal(scale=0.5, size=200) + 0.2
    cov = np.cov(x, y, ddof=0)[0, 1]
    expected = 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(expected, abs=1e-12)


def test_ece_toy_hand_computed() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    y = np.array([0, 1, 1, 1])
    # 2 bins: (0, .5] empty; (.5, 1] all four: conf mean (0.9+0.8+0.6+0.55)/4 = 0.7125, acc 2/4.
    assert ece(probs, y, bins=2) == pytest.approx(abs(0.7125 - 0.5), abs=1e-12)
    # 10 bins: 0.9 -> bin 8 (0.8, 0.9] correct; 0.8 -> bin 7 wrong; 0.6 -> bin 5 correct; 0.55 -> bin 5 wrong.
    counts, conf_sum, correct_sum = reliability_bins(probs, y, bins=10)
    np.testing.assert_array_equal(counts, [0, 0, 0, 0, 0, 2, 0, 1, 1, 0])
    np.testing.assert_allclose(correct_sum, [0, 0, 0, 0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_allclose(conf_sum, [0, 0, 0, 0, 0, 1.15, 0, 0.8, 0.9, 0], rtol=1e-12)
    expected = (abs(1.0 - 1.15) + abs(0.0 - 0.8) + abs(1.0 - 0.9)) / 4
    assert ece(probs, y, bins=10) == pytest.approx(expected, abs=1e-12)


def test_ece_perfect_and_in_metrics_dict() -> None:
    probs = np.eye(3)[[0, 1, 2, 1]]
    y = [0, 1, 2, 1]
    assert ece(probs, y) == 0.0
    m = classification_metrics(y, probs.argmax(1), NAMES3, probs=probs)
    assert m["ece"] == 0.0 and m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["abaw2021"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="bins must be >= 1"):
        ece(probs, y, bins=0)
    with pytest.raises(ValueError, match=r"probs \(N, C\) and y_true \(N,\)"):
        ece(probs, [0, 1])
