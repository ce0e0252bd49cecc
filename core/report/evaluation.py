"""Evaluation of a scorer against labelled class averages: metrics over all sets and per
set, the ROC curve and the score distributions, written as files a person can read.

Thresholds are applied per set exactly as ``cryodiscovery score`` would apply them (an
adaptive threshold adapts to each job), so threshold metrics come from the decisions
themselves, while ROC AUC comes from the scores.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.outputs import staged_outputs, write_run_record
from cryodiscovery.core.report.gallery import KEPT_COLOUR, REJECTED_COLOUR, rgb01
from cryodiscovery.core.report.metrics import (
    ClassificationReport,
    classification_report,
    roc_auc,
    roc_curve,
)
from cryodiscovery.core.selection import Selection, SelectionOptions, select_classes
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

_GOOD = rgb01(KEPT_COLOUR)
_JUNK = rgb01(REJECTED_COLOUR)


@dataclass(frozen=True)
class SetEvaluation:
    """One labelled set: its name, its labelled classes and the decision on them."""

    name: str
    classes: ClassAverages
    selection: Selection
    report: ClassificationReport


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a scorer over several labelled sets.

    ``labels``, ``scores``, ``selected`` are ``(n,)`` over the labelled classes of all
    sets, in set order; ``kinds`` the per-class kinds (``""`` unknown).
    """

    overall: ClassificationReport
    sets: tuple[SetEvaluation, ...]
    labels: npt.NDArray[np.int8]
    scores: npt.NDArray[np.float64]
    selected: npt.NDArray[np.bool_]
    kinds: tuple[str, ...]
    model_name: str
    model_sha256: str


def decision_report(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    selected: npt.ArrayLike,
    kinds: Sequence[str] | None,
    threshold: float,
) -> ClassificationReport:
    """Metrics of actual decisions ``selected`` (which a particle-count rule or per-set
    thresholds may have made), with ROC AUC from ``scores``."""
    decided = np.asarray(selected, dtype=np.float64)
    report = classification_report(labels, decided, 0.5, kinds)
    return replace(report, auc=roc_auc(labels, scores), threshold=float(threshold))


def _set_name(classes: ClassAverages, index: int) -> str:
    prov = classes.provenance
    source = prov.sources[0] if prov.sources else ""
    return f"{source} {prov.job}".strip() or f"set {index + 1}"


def evaluate_sets(
    sets: Sequence[ClassAverages], scorer: ClassScorer, options: SelectionOptions
) -> Evaluation:
    """Score every set, decide as ``score`` would, and compare with the labels.

    Parameters
    ----------
    sets:
        Class-average sets with labels (classes labelled ``-1`` are scored with their set,
        which matters for adaptive thresholds, but left out of the metrics).
    scorer, options:
        The model and the threshold rule.
    """
    results = []
    for i, full in enumerate(sets):
        selection = select_classes(full, options, scorer)
        known = np.flatnonzero(full.labels >= 0)
        if known.size == 0:
            continue
        part = full.subset(known)
        sub = replace(
            selection,
            class_numbers=selection.class_numbers[known],
            scores=selection.scores[known],
            selected=selection.selected[known],
            reasons=tuple(selection.reasons[k] for k in known),
        )
        kinds = part.kinds if any(part.kinds) else None
        report = decision_report(
            part.labels, sub.scores, sub.selected, kinds, sub.threshold
        )
        results.append(SetEvaluation(_set_name(full, i), part, sub, report))
    if not results:
        raise ValueError("no labelled classes to evaluate")
    names = [r.name for r in results]
    if len(set(names)) < len(names):  # e.g. generated sets, all "Class2D/job001"
        results = [replace(r, name=f"{r.name} #{k + 1}") for k, r in enumerate(results)]
    labels = np.concatenate([r.classes.labels for r in results]).astype(np.int8)
    scores = np.concatenate([r.selection.scores for r in results])
    selected = np.concatenate([r.selection.selected for r in results])
    kinds = tuple(k for r in results for k in r.classes.kinds)
    thresholds = {r.selection.threshold for r in results}
    common = thresholds.pop() if len(thresholds) == 1 else float("nan")
    overall = decision_report(
        labels, scores, selected, kinds if any(kinds) else None, common
    )
    return Evaluation(
        overall,
        tuple(results),
        labels,
        scores,
        selected,
        kinds,
        scorer.name,
        scorer.sha256,
    )


def format_evaluation(ev: Evaluation) -> str:
    """A plain-text table of the metrics."""
    o = ev.overall
    (tn, fp), (fn, tp) = o.confusion
    lines = [
        f"{o.n} labelled classes ({o.n_good} good) in {len(ev.sets)} set(s); model {ev.model_name}",
        f"  accuracy {o.accuracy:.3f}   balanced accuracy {o.balanced_accuracy:.3f}   "
        f"ROC AUC {o.auc:.3f}",
        f"  precision {o.precision:.3f}   recall {o.recall:.3f}   "
        f"false-negative rate {o.fnr:.3f}   false-positive rate {o.fpr:.3f}",
        "  confusion (rows truth, columns decision):   kept   rejected",
        f"    good                                    {tp:6d}   {fn:8d}",
        f"    junk                                    {fp:6d}   {tn:8d}",
    ]
    if o.per_kind_recall:
        lines.append("  correct per kind (kept if good, rejected if junk):")
        lines += [f"    {k:<20s} {v:.3f}" for k, v in o.per_kind_recall.items()]
    if len(ev.sets) > 1:
        lines.append("  per set:  AUC   bal.acc  FNR    threshold  name")
        for s in ev.sets:
            r = s.report
            lines.append(
                f"           {r.auc:.3f} {r.balanced_accuracy:.3f}    {r.fnr:.3f}  "
                f"{s.selection.threshold:.3f}      {s.name}"
            )
    return "\n".join(lines)


def render_roc(ev: Evaluation, path: Path) -> Path:
    """ROC curve of all labelled classes (per set in grey) with the operating point."""
    fig = Figure(figsize=(5.2, 5.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    if len(ev.sets) > 1:
        for k, s in enumerate(ev.sets):
            if 0 < s.report.n_good < s.report.n:
                fpr, tpr, _ = roc_curve(s.classes.labels, s.selection.scores)
                ax.plot(
                    fpr,
                    tpr,
                    color="0.75",
                    linewidth=0.8,
                    label=None if k else "per job",
                )
    if 0 < ev.overall.n_good < ev.overall.n:
        fpr, tpr, _ = roc_curve(ev.labels, ev.scores)
        ax.plot(
            fpr, tpr, color="black", linewidth=1.8, label=f"AUC {ev.overall.auc:.3f}"
        )
        ax.plot(
            [ev.overall.fpr],
            [ev.overall.recall],
            "o",
            color=_JUNK,
            label=f"decisions (FNR {ev.overall.fnr:.3f})",
        )
    ax.plot([0, 1], [0, 1], linestyle=":", color="0.5", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (junk kept)")
    ax.set_ylabel("true-positive rate (good kept)")
    ax.set_title(f"{ev.overall.n} classes, model {ev.model_name}")
    ax.legend(loc="lower right", frameon=False)
    fig.savefig(path)
    return path


def render_score_distribution(ev: Evaluation, path: Path) -> Path:
    """Scores of good and junk classes; with known kinds, a strip per kind."""
    by_kind = any(ev.kinds)
    fig = Figure(figsize=(11.0 if by_kind else 6.5, 4.2), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2 if by_kind else 1, squeeze=False)[0]
    good = ev.labels == 1
    bins = np.linspace(0, 1, 41)
    ax = axes[0]
    ax.hist(
        ev.scores[good],
        bins=bins,
        histtype="step",
        linewidth=1.8,
        color=_GOOD,
        label=f"good ({int(good.sum())})",
    )
    ax.hist(
        ev.scores[~good],
        bins=bins,
        histtype="step",
        linewidth=1.8,
        color=_JUNK,
        label=f"junk ({int((~good).sum())})",
    )
    _threshold_lines(ax, ev)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (probability that the class is good)")
    ax.set_ylabel("classes")
    ax.legend(frameon=False, loc="upper center")
    if by_kind:
        _kind_strips(axes[1], ev)
    fig.savefig(path)
    return path


def _threshold_lines(ax: Any, ev: Evaluation) -> None:
    values = sorted({s.selection.threshold for s in ev.sets})
    label = "threshold" if len(values) == 1 else "thresholds (per job)"
    for i, t in enumerate(values):
        ax.axvline(
            t, color="black", linestyle="--", linewidth=1, label=None if i else label
        )


def _kind_strips(ax: Any, ev: Evaluation) -> None:
    kinds = np.asarray(ev.kinds, dtype=object)
    names = sorted(
        set(ev.kinds) - {""}, key=lambda k: -float(np.median(ev.scores[kinds == k]))
    )
    rng = np.random.default_rng(0)
    for row, kind in enumerate(names):
        sel = kinds == kind
        colour = _GOOD if ev.labels[sel].mean() >= 0.5 else _JUNK
        y = row + rng.uniform(-0.25, 0.25, int(sel.sum()))
        ax.scatter(ev.scores[sel], y, s=10, color=colour, alpha=0.7, linewidths=0)
        recall = ev.overall.per_kind_recall.get(kind, float("nan"))
        ax.text(1.02, row, f"{recall:.2f}", va="center", fontsize=8)
    _threshold_lines(ax, ev)
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score; right: fraction decided correctly")
    ax.set_title("per kind (blue: good kinds, vermillion: junk kinds)", fontsize=9)


def write_evaluation_outputs(
    out_dir: Path,
    ev: Evaluation,
    *,
    argv: list[str] | None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, scores.csv, roc.png, score_distribution.png and
    run_record.json into ``out_dir`` (all or nothing); returns name -> path."""
    out = Path(out_dir)
    with staged_outputs(out) as stage:
        metrics = {
            "overall": ev.overall.to_dict(),
            "sets": [
                {
                    "name": s.name,
                    "threshold_source": s.selection.threshold_source,
                    "mode": s.selection.mode,
                    **s.report.to_dict(),
                }
                for s in ev.sets
            ],
            "model_name": ev.model_name,
            "model_sha256": ev.model_sha256,
        }
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _write_scores(stage / "scores.csv", ev)
        render_roc(ev, stage / "roc.png")
        render_score_distribution(ev, stage / "score_distribution.png")
        write_run_record(
            stage,
            command="evaluate",
            argv=argv,
            config=dict(config or {}),
            model_checksum=ev.model_sha256,
        )
        names = [p.name for p in stage.iterdir()]
    return {Path(n).stem: out / n for n in sorted(names)}


def _write_scores(path: Path, ev: Evaluation) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["set", "class_number", "label", "kind", "score", "selected", "reason"]
        )
        for s in ev.sets:
            sel = s.selection
            for i in range(len(s.classes)):
                writer.writerow(
                    [
                        s.name,
                        int(sel.class_numbers[i]),
                        int(s.classes.labels[i]),
                        s.classes.kinds[i],
                        f"{float(sel.scores[i]):.6f}",
                        int(bool(sel.selected[i])),
                        sel.reasons[i],
                    ]
                )
