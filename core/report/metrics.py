"""Classification metrics for class selection, with "good" (selected) as the positive label.

Everything is plain numpy (no scikit-learn): ROC AUC is the Mann-Whitney statistic with
ties counted as half.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


def _check(labels: npt.ArrayLike, other: npt.ArrayLike, what: str) -> tuple[Any, Any]:
    y = np.asarray(labels)
    o = np.asarray(other)
    if y.ndim != 1 or y.shape != o.shape:
        raise ValueError(
            f"labels {y.shape} and {what} {o.shape} must be equal 1-D shapes"
        )
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (rejected) or 1 (selected)")
    return y.astype(bool), o


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve: P(score of a good class > score of a junk class).

    Parameters
    ----------
    labels:
        ``(n,)`` 0/1 truth (1 = good).
    scores:
        ``(n,)`` scores, higher = more likely good.

    Returns
    -------
    AUC in ``[0, 1]``; NaN when only one label is present.
    """
    y, s = _check(labels, scores, "scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order].astype(np.float64)
    ranks = np.empty(len(s), dtype=np.float64)
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """False- and true-positive rates at every distinct threshold (score >= t is "good").

    Returns
    -------
    ``(fpr, tpr, thresholds)``, each ``(k,)``, starting at (0, 0) with threshold +inf.
    """
    y, s = _check(labels, scores, "scores")
    thresholds = np.concatenate([[np.inf], np.unique(s.astype(np.float64))[::-1]])
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.array([(s[y] >= t).sum() / n_pos for t in thresholds], dtype=np.float64)
    fpr = np.array([(s[~y] >= t).sum() / n_neg for t in thresholds], dtype=np.float64)
    return fpr, tpr, thresholds


def confusion_matrix(
    labels: npt.ArrayLike, predicted: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """``[[tn, fp], [fn, tp]]`` (rows: truth junk/good; columns: predicted junk/good)."""
    y, p = _check(labels, predicted, "predictions")
    p = p.astype(bool)
    return np.array(
        [[(~y & ~p).sum(), (~y & p).sum()], [(y & ~p).sum(), (y & p).sum()]],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one selection against truth (rates are NaN when undefined)."""

    n: int
    n_good: int
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    fnr: float
    fpr: float
    auc: float
    threshold: float
    confusion: tuple[tuple[int, int], tuple[int, int]]
    per_kind_recall: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        d = asdict(self)
        d["confusion"] = [list(r) for r in self.confusion]
        return d


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def classification_report(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float,
    kinds: Sequence[str] | None = None,
) -> ClassificationReport:
    """All metrics for scores thresholded at ``threshold`` (score >= threshold is "good").

    Parameters
    ----------
    labels:
        ``(n,)`` 0/1 truth.
    scores:
        ``(n,)`` probabilities of "good".
    threshold:
        Decision threshold on the scores.
    kinds:
        Optional per-class kind (``"good"``, ``"ice"``...): per-kind recall is the fraction
        of that kind classified correctly (kept for good kinds, rejected for junk kinds).
    """
    y, s = _check(labels, scores, "scores")
    pred = s >= threshold
    (tn, fp), (fn, tp) = confusion_matrix(y.astype(int), pred).tolist()
    tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    per_kind: dict[str, float] = {}
    if kinds is not None:
        if len(kinds) != len(y):
            raise ValueError(f"{len(kinds)} kinds for {len(y)} labels")
        k_arr = np.asarray(kinds, dtype=object)
        for kind in sorted(set(kinds) - {""}):
            sel = k_arr == kind
            per_kind[kind] = float((pred[sel] == y[sel]).mean())
    return ClassificationReport(
        n=int(y.size),
        n_good=int(y.sum()),
        accuracy=_ratio(tp + tn, y.size),
        balanced_accuracy=float(np.nanmean([tpr, tnr])) if y.size else float("nan"),
        precision=_ratio(tp, tp + fp),
        recall=tpr,
        fnr=_ratio(fn, tp + fn),
        fpr=_ratio(fp, fp + tn),
        auc=roc_auc(y.astype(int), s),
        threshold=float(threshold),
        confusion=((tn, fp), (fn, tp)),
        per_kind_recall=per_kind,
    )
