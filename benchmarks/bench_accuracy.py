"""Accuracy of the shipped model on generated Class2D runs from seeds never used in
training (910000 on): ROC AUC, balanced accuracy and false-negative rate overall, per kind
and per particle-SNR bin; the model's stored threshold against the per-job adaptive
threshold; image+metadata against image-only scoring.

    .venv/bin/python benchmarks/bench_accuracy.py [--runs 30]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.calibration import adaptive_threshold, logit, sigmoid
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.report.metrics import classification_report, roc_auc
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run

SEED0 = 910_000
SNR_BINS = ((0.0, 0.03), (0.03, 0.1), (0.1, 1.0))


@dataclass
class RunScores:
    """One generated run scored both ways."""

    snr: float
    labels: np.ndarray
    kinds: tuple[str, ...]
    scores: np.ndarray
    image_only: np.ndarray


def _run(seed: int) -> tuple[float, ClassAverages]:
    torch.set_num_threads(1)
    run = simulate_run(SimulationConfig(n_classes=40), seed)
    return run.snr, run.classes


def score_runs(n_runs: int, workers: int) -> list[RunScores]:
    """Generate ``n_runs`` unseen runs and score them with and without metadata."""
    scorer = load_scorer()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(_run, range(SEED0, SEED0 + n_runs)))
    out = []
    for snr, classes in runs:
        bare = ClassAverages.create(classes.images, pixel_size=classes.pixel_size)
        out.append(
            RunScores(
                snr,
                classes.labels.astype(int),
                classes.kinds,
                scorer.predict(classes),
                scorer.predict(bare),
            )
        )
    return out


def _line(name: str, y: np.ndarray, s: np.ndarray, selected: np.ndarray) -> str:
    tp = int((selected & (y == 1)).sum())
    tn = int((~selected & (y == 0)).sum())
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    rec = tp / n_pos if n_pos else float("nan")
    spec = tn / n_neg if n_neg else float("nan")
    auc = roc_auc(y, s) if 0 < n_pos < len(y) else float("nan")
    return (
        f"{name:<26s} n={len(y):<5d} AUC {auc:6.3f}  bal.acc {np.nanmean([rec, spec]):6.3f}"
        f"  FNR {1 - rec:6.3f}  junk kept {1 - spec:6.3f}"
    )


def report(
    runs: list[RunScores], threshold: float, image_only_thr: float, target_fnr: float
) -> None:
    """Print every figure."""
    y = np.concatenate([r.labels for r in runs])
    s = np.concatenate([r.scores for r in runs])
    s_img = np.concatenate([r.image_only for r in runs])
    kinds = [k for r in runs for k in r.kinds]
    adaptive = [adaptive_threshold(r.scores, threshold, target_fnr) for r in runs]
    sel_adapt = np.concatenate(
        [r.scores >= a.threshold for r, a in zip(runs, adaptive, strict=True)]
    )
    print(
        f"{len(runs)} unseen runs, {len(y)} classes ({int(y.sum())} good); model threshold "
        f"{threshold:.3f}, image-only {image_only_thr:.3f} (target FNR {target_fnr:.0%})"
    )
    print(_line("image+metadata, model thr", y, s, s >= threshold))
    print(_line("image+metadata, adaptive", y, s, sel_adapt))
    print(_line("image-only, model thr", y, s_img, s_img >= image_only_thr))
    print(
        "emulated real-data shift (every logit lowered by d, as real good classes score lower):"
    )
    for d in (2.0, 4.0):
        shifted = [sigmoid(logit(r.scores) - d) for r in runs]
        s_sh = np.concatenate(shifted)
        sel = np.concatenate(
            [
                x >= adaptive_threshold(x, threshold, target_fnr).threshold
                for x in shifted
            ]
        )
        print("  " + _line(f"d={d:.0f}, model thr", y, s_sh, s_sh >= threshold))
        print("  " + _line(f"d={d:.0f}, adaptive", y, s_sh, sel))
    n_adapted = sum(a.adapted for a in adaptive)
    print(
        f"adaptive threshold used in {n_adapted}/{len(runs)} runs; median "
        f"{np.median([a.threshold for a in adaptive]):.3f}"
    )
    print("per SNR bin (particle SNR of the run), model threshold:")
    snr = np.concatenate([np.full(len(r.labels), r.snr) for r in runs])
    for lo, hi in SNR_BINS:
        m = (snr >= lo) & (snr < hi)
        if m.any():
            print("  " + _line(f"SNR {lo:.2f}-{hi:.2f}", y[m], s[m], s[m] >= threshold))
    print("per kind: fraction classified correctly (model thr / adaptive), mean score")
    rep = classification_report(y, s, threshold, kinds)
    rep_a = classification_report(y, np.where(sel_adapt, 1.0, 0.0), 0.5, kinds)
    k_arr = np.asarray(kinds)
    for kind, value in rep.per_kind_recall.items():
        mean = float(s[k_arr == kind].mean())
        print(
            f"  {kind:<18s} {value:6.3f} / {rep_a.per_kind_recall[kind]:6.3f}   "
            f"score {mean:.3f}  (n={int((k_arr == kind).sum())})"
        )


def main(argv: list[str] | None = None) -> int:
    """Generate, score, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scorer = load_scorer()
    print(f"model {scorer.name} ({scorer.rule}), sha256 {scorer.sha256[:12]}")
    runs = score_runs(args.runs, args.threads)
    report(runs, scorer.threshold, scorer.image_only_threshold, scorer.target_fnr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
