"""How real the generated class averages look to the model: image statistics of real and
generated good and bad classes, computed on the model's own input (the preprocessed
image), and the cross-validated AUC of a classifier that tells generated from real
classes by those statistics (the "realism gap": 0.5 is indistinguishable, lower is
better).

    .venv/bin/python benchmarks/bench_realism.py [--runs 30] [--json OUT]

Generated classes come from the project's generator with its current defaults
(``SimulationConfig(n_classes=...)``, seeds from 900000, never used in training); the
input is made by the loaded model's own preprocessing (``--model``, default the shipped
model), so both follow whatever the generator and preprocessing currently do. The real
classes are for measuring only (label -1, unsure, is left out).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.report.metrics import roc_auc
from cryodiscovery.core.synthetic.config import SimulationConfig
from cryodiscovery.core.synthetic.generator import simulate_class_averages
from image_statistics import LOG_SCALE, STATISTICS, image_statistics, model_inputs
from real_classes import (
    add_real_dir_arg,
    missing_message,
    read_real_sets,
    real_set_folders,
)

F64 = npt.NDArray[np.float64]
SEED0 = 900_000
GROUPS = ("real good", "real bad", "generated good", "generated bad")
FOLDS = 5
L2 = 1.0  # ridge penalty on the standardised coefficients (not the intercept)


def real_statistics(
    real_dir: Path, scorer: ClassScorer
) -> tuple[dict[str, F64], npt.NDArray[np.int64], list[str]]:
    """Statistics of every labelled (good or bad) real class, their labels and sets."""
    stats, labels, names = [], [], []
    for rs in read_real_sets(real_dir):
        known = rs.labels >= 0
        stats.append(image_statistics(model_inputs(rs.classes.subset(known), scorer)))
        labels.append(rs.labels[known].astype(np.int64))
        names += [rs.name] * int(known.sum())
    if not stats:
        return {}, np.zeros(0, np.int64), []
    merged = {k: np.concatenate([s[k] for s in stats]) for k in STATISTICS}
    return merged, np.concatenate(labels), names


def generated_statistics(
    n_runs: int, n_classes: int, seed0: int, scorer: ClassScorer
) -> tuple[dict[str, F64], npt.NDArray[np.int64], list[str]]:
    """Statistics of ``n_runs`` generated runs (seeds ``seed0...``), labels and kinds."""
    stats, labels, kinds = [], [], []
    config = SimulationConfig(n_classes=n_classes)
    for seed in range(seed0, seed0 + n_runs):
        classes = simulate_class_averages(config, seed)
        stats.append(image_statistics(model_inputs(classes, scorer)))
        labels.append(classes.labels.astype(np.int64))
        kinds += list(classes.kinds)
    merged = {k: np.concatenate([s[k] for s in stats]) for k in STATISTICS}
    return merged, np.concatenate(labels), kinds


def summarise(values: F64) -> dict[str, float]:
    """Median, quartiles and the fraction undefined (NaN)."""
    ok = values[np.isfinite(values)]
    if ok.size == 0:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "missing": 1.0}
    q25, median, q75 = np.percentile(ok, [25, 50, 75])
    missing = 1.0 - ok.size / max(values.size, 1)
    return {"median": median, "q25": q25, "q75": q75, "missing": missing}


def feature_matrix(stats: dict[str, F64]) -> F64:
    """``(n, len(STATISTICS))`` features: :data:`LOG_SCALE` statistics as log10."""
    cols = []
    for name in STATISTICS:
        v = stats[name].astype(np.float64)
        if name in LOG_SCALE:
            v = np.log10(np.where(v > 0, v, np.nan))
        cols.append(v)
    return np.stack(cols, axis=1)


def fit_logistic(x: F64, y: F64, w: F64, l2: float = L2, steps: int = 50) -> F64:
    """Weighted, ridge-penalised logistic regression by Newton's method.

    Parameters
    ----------
    x:
        ``(n, k)`` standardised features.
    y, w:
        ``(n,)`` 0/1 targets and sample weights.

    Returns
    -------
    ``(k + 1,)`` coefficients, intercept first.
    """
    xa = np.hstack([np.ones((len(x), 1)), x])
    beta = np.zeros(xa.shape[1])
    penalty = np.full(xa.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(xa @ beta, -30, 30)))
        grad = xa.T @ (w * (p - y)) + penalty * beta
        hess = (xa * (w * p * (1 - p))[:, None]).T @ xa + np.diag(penalty)
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(beta)), grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def _standardise(train: F64, other: F64) -> tuple[F64, F64]:
    """Impute NaN with the training medians, scale by the training mean and std."""
    med = np.nanmedian(train, axis=0)
    med = np.where(np.isfinite(med), med, 0.0)
    train = np.where(np.isfinite(train), train, med)
    other = np.where(np.isfinite(other), other, med)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (other - mean) / std


def balanced_weights(y: npt.NDArray[Any]) -> F64:
    """Weights that give both classes equal total weight."""
    w = np.ones(len(y))
    for v in (0, 1):
        w[y == v] = len(y) / (2.0 * max(int((y == v).sum()), 1))
    return w


def stratified_folds(y: npt.NDArray[Any], k: int, seed: int) -> npt.NDArray[np.int64]:
    """Fold index of each sample: each class shuffled and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), dtype=np.int64)
    for v in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == v))
        fold[idx] = np.arange(idx.size) % k
    return fold


def realism_gap(x: F64, is_real: npt.NDArray[Any], seed: int = 0) -> dict[str, Any]:
    """Out-of-fold ROC AUC of real vs generated (``FOLDS``-fold stratified CV, balanced
    weights) and the standardised coefficients of a fit on everything."""
    y = is_real.astype(np.float64)
    n_real = int(y.sum())
    if n_real < FOLDS or len(y) - n_real < FOLDS:
        return {"auc": math.nan, "n_real": n_real, "n_generated": len(y) - n_real}
    fold = stratified_folds(is_real, FOLDS, seed)
    oof = np.zeros(len(y))
    for k in range(FOLDS):
        tr, te = fold != k, fold == k
        xtr, xte = _standardise(x[tr], x[te])
        beta = fit_logistic(xtr, y[tr], balanced_weights(y[tr]))
        oof[te] = beta[0] + xte @ beta[1:]
    xall, _ = _standardise(x, x[:1])
    beta = fit_logistic(xall, y, balanced_weights(y))
    return {
        "auc": roc_auc(is_real.astype(int), oof),
        "n_real": n_real,
        "n_generated": len(y) - n_real,
        "coefficients": dict(zip(STATISTICS, beta[1:].tolist(), strict=True)),
    }


def single_statistic_auc(real: F64, generated: F64) -> float:
    """P(real > generated) for one statistic (NaN left out)."""
    r, g = real[np.isfinite(real)], generated[np.isfinite(generated)]
    if r.size == 0 or g.size == 0:
        return math.nan
    labels = np.r_[np.ones(r.size, int), np.zeros(g.size, int)]
    return roc_auc(labels, np.r_[r, g])


def analyse(
    real: dict[str, F64],
    real_labels: npt.NDArray[np.int64],
    real_sets: list[str],
    gen: dict[str, F64],
    gen_labels: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """The table, the per-set medians, the realism gaps and the largest differences."""
    masks = {
        "real good": (real, real_labels == 1),
        "real bad": (real, real_labels == 0),
        "generated good": (gen, gen_labels == 1),
        "generated bad": (gen, gen_labels == 0),
    }
    table = {
        stat: {g: summarise(src[stat][m]) for g, (src, m) in masks.items()}
        for stat in STATISTICS
    }
    sets = np.asarray(real_sets)
    per_set = {
        stat: {
            name: summarise(real[stat][(sets == name) & (real_labels == 1)])["median"]
            for name in dict.fromkeys(real_sets)
        }
        for stat in STATISTICS
    }
    x = np.vstack([feature_matrix(real), feature_matrix(gen)])
    labels = np.r_[real_labels, gen_labels]
    is_real = np.r_[np.ones(len(real_labels), int), np.zeros(len(gen_labels), int)]
    gaps = {
        "all": realism_gap(x, is_real),
        "good": realism_gap(x[labels == 1], is_real[labels == 1]),
        "bad": realism_gap(x[labels == 0], is_real[labels == 0]),
    }
    coef = gaps["all"].get("coefficients", {})
    differences = []
    for stat in STATISTICS:
        auc = {
            kind: single_statistic_auc(
                real[stat][real_labels == v], gen[stat][gen_labels == v]
            )
            for kind, v in (("good", 1), ("bad", 0))
        }
        spread = np.nanmax([abs(a - 0.5) for a in auc.values()] + [0.0])
        differences.append(
            {
                "statistic": stat,
                "auc_good": auc["good"],
                "auc_bad": auc["bad"],
                "coefficient": coef.get(stat, math.nan),
                "separation": spread,
            }
        )
    differences.sort(key=lambda d: -d["separation"])
    return {
        "table": table,
        "real_good_per_set": per_set,
        "gaps": gaps,
        "differences": differences,
    }


def _cell(s: dict[str, float]) -> str:
    if not np.isfinite(s["median"]):
        return "-"
    star = "*" if s["missing"] > 0 else ""
    return f"{s['median']:.3g} [{s['q25']:.3g}, {s['q75']:.3g}]{star}"


def print_report(res: dict[str, Any], counts: dict[str, int]) -> None:
    """Every figure of :func:`analyse`."""
    print(
        "\nimage statistics of the model input: median [IQR]; * some classes undefined "
        "(no particle or no solvent), left out"
    )
    heads = "".join(f" {f'{g} (n={counts[g]})':<26s}" for g in GROUPS)
    print(f"{'statistic':<20s}{heads}")
    for stat, row in res["table"].items():
        print(f"{stat:<20s}" + "".join(f" {_cell(row[g]):<26s}" for g in GROUPS))
    for stat, desc in STATISTICS.items():
        print(f"  {stat}: {desc}")
    names = list(next(iter(res["real_good_per_set"].values())))
    print("\nreal good classes per set (median)")
    w = max(len(n) for n in names)
    print(f"{'statistic':<20s}" + "".join(f" {n:>{w}s}" for n in names))
    for stat, row in res["real_good_per_set"].items():
        print(f"{stat:<20s}" + "".join(f" {row[n]:{w}.3g}" for n in names))
    print(
        f"\nrealism gap: out-of-fold ROC AUC of real vs generated ({FOLDS}-fold stratified "
        "CV, logistic regression on the standardised statistics, balanced weights; "
        "0.5 = indistinguishable, lower is better)"
    )
    for kind, gap in res["gaps"].items():
        print(
            f"  {kind + ' classes':<14s} AUC {gap['auc']:.3f}  "
            f"({gap['n_real']} real, {gap['n_generated']} generated)"
        )
    print(
        "\nlargest differences: AUC of one statistic, P(real > generated), among good "
        "and among bad classes; coefficient in the all-classes fit (standardised)"
    )
    print(f"{'statistic':<20s} {'AUC good':>8s} {'AUC bad':>8s} {'coef':>7s}")
    for d in res["differences"]:
        print(
            f"{d['statistic']:<20s} {d['auc_good']:8.3f} {d['auc_bad']:8.3f} "
            f"{d['coefficient']:7.2f}"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    """Measure real and generated classes; print (and optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="model whose preprocessing makes the input (default: the shipped model)",
    )
    add_real_dir_arg(parser)
    parser.add_argument(
        "--runs", type=int, default=30, help="generated runs (default 30)"
    )
    parser.add_argument(
        "--classes", type=int, default=40, help="classes per run (default 40)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED0,
        help=f"first generator seed (default {SEED0})",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (default 2)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="OUT", help="also write every figure as JSON"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    start = time.perf_counter()
    if not real_set_folders(args.real_dir):
        print(missing_message(args.real_dir))
        return 0
    torch.set_num_threads(args.threads)
    scorer = load_scorer(args.model)
    real, real_labels, real_sets = real_statistics(args.real_dir, scorer)
    gen, gen_labels, kinds = generated_statistics(
        args.runs, args.classes, args.seed, scorer
    )
    print(
        f"model input: {scorer.name} preprocessing {scorer.preprocess.to_dict()}\n"
        f"real: {len(set(real_sets))} sets under {args.real_dir}; generated: {args.runs} "
        f"runs x {args.classes} classes, SimulationConfig defaults, seeds "
        f"{args.seed}-{args.seed + args.runs - 1}"
    )
    counts = {
        "real good": int((real_labels == 1).sum()),
        "real bad": int((real_labels == 0).sum()),
        "generated good": int((gen_labels == 1).sum()),
        "generated bad": int((gen_labels == 0).sum()),
    }
    res = analyse(real, real_labels, real_sets, gen, gen_labels)
    print_report(res, counts)
    elapsed = time.perf_counter() - start
    print(f"\n{sum(counts.values())} classes measured in {elapsed:.1f} s")
    if args.json is not None:
        record = {
            "model": {"name": scorer.name, "sha256": scorer.sha256},
            "preprocess": scorer.preprocess.to_dict(),
            "real_dir": str(args.real_dir),
            "generated": {
                "runs": args.runs,
                "classes": args.classes,
                "seed0": args.seed,
            },
            "counts": counts,
            **res,
            "classes": {
                "real": {"set": real_sets, "label": real_labels, **real},
                "generated": {"kind": kinds, "label": gen_labels, **gen},
            },
            "elapsed_s": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(record), indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
