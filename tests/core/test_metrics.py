"""Metrics against brute-force definitions and hand-computed examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from cryodiscovery.core.report.metrics import (
    classification_report,
    confusion_matrix,
    roc_auc,
    roc_curve,
)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(
        1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)
    )
    return wins / (pos.size * neg.size)


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.random(40) + 0.3 * y, 1)  # rounding makes ties
        assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_auc_equals_trapezoid_area_under_roc_curve() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = rng.random(60) + 0.5 * y
    fpr, tpr, _ = roc_curve(y, s)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(y, s))


def test_report_on_a_hand_computed_example() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.2, 0.1, 0.1, 0.05])
    kinds = ["good"] * 4 + ["ice", "ice", "empty", "empty", "empty", "ice"]
    rep = classification_report(y, s, 0.5, kinds)
    assert rep.confusion == ((5, 1), (1, 3))
    assert rep.accuracy == pytest.approx(0.8)
    assert rep.recall == pytest.approx(0.75) and rep.fnr == pytest.approx(0.25)
    assert rep.precision == pytest.approx(0.75)
    assert rep.balanced_accuracy == pytest.approx((0.75 + 5 / 6) / 2)
    assert rep.per_kind_recall == {
        "empty": 1.0,
        "good": 0.75,
        "ice": pytest.approx(2 / 3),
    }
    np.testing.assert_array_equal(confusion_matrix(y, s >= 0.5), [[5, 1], [1, 3]])


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError):
        classification_report([0, 1], [0.1, 0.9], 0.5, kinds=["a"])
