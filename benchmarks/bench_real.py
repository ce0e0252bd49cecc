"""How models do on the labelled real class averages beside the project: per set and
pooled, ROC AUC with a 95% bootstrap interval, and balanced accuracy, false-negative rate
and junk rejected at the threshold ``cryodiscovery score`` uses with default options
(the adaptive per-job threshold, falling back to the stored one) and at the stored
threshold; a one-statistic baseline; and how much padding or cropping the box by 25%
moves the scores (issue target: < 0.1 on average).

    .venv/bin/python benchmarks/bench_real.py [--model PATH ...] [--json OUT]

The real classes are for measuring and choosing only, never for fitting weights. Label -1
(unsure) is left out of every figure but stays in its set, so the adaptive threshold sees
the job as the user would. Each set is scored twice: "as read" with the metadata of
labels.csv (as the RELION/cryoSPARC readers would give it) and "bare stack", as
``cryodiscovery score classes.mrcs`` reads it (image only).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from cryodiscovery.core.model.calibration import adaptive_threshold
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.report.metrics import roc_auc
from cryodiscovery.core.selection import SelectionOptions, select_classes
from image_statistics import image_statistics, model_inputs
from real_classes import RealSet, add_real_dir_arg, missing_message, read_real_sets

F64 = npt.NDArray[np.float64]
#: How each set is scored: with the labels.csv metadata, and as a bare stack.
VIEWS = ("as read", "bare stack")
#: The trivial baselines: one image statistic each, sign chosen once on all sets pooled.
BASELINES = ("high_over_low", "central_contrast")
PAD, CROP = 1.25, 0.75
FRAMING_TARGET = 0.1


@dataclass(frozen=True)
class Draws:
    """Bootstrap resamples of the labelled classes: ``counts[i]`` is ``(n_boot, n_i)``,
    how often each labelled class of set ``i`` is drawn (class-level, within its set)."""

    counts: tuple[npt.NDArray[np.int64], ...]


def draw_resamples(sizes: list[int], n_boot: int, seed: int) -> Draws:
    """``n_boot`` resamples with replacement of each set's ``sizes[i]`` classes."""
    out = []
    for i, n in enumerate(sizes):
        rng = np.random.default_rng([seed, i])
        counts = np.zeros((n_boot, n), dtype=np.int64)
        if n:
            rows = np.repeat(np.arange(n_boot), n)
            np.add.at(counts, (rows, rng.integers(0, n, n_boot * n)), 1)
        out.append(counts)
    return Draws(tuple(out))


def weighted_auc(
    labels: npt.NDArray[Any], scores: F64, counts: npt.NDArray[Any]
) -> F64:
    """ROC AUC of each resample, ``(n_boot,)``; ``counts`` ``(n_boot, n)`` multiplicities.
    NaN where a resample lacks one of the labels. Ties count one half."""
    pos, neg = labels == 1, labels == 0
    sp, sn = scores[pos], scores[neg]
    kernel = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    cp, cn = counts[:, pos].astype(np.float64), counts[:, neg].astype(np.float64)
    pairs = cp.sum(axis=1) * cn.sum(axis=1)
    wins = np.einsum("bi,ij,bj->b", cp, kernel, cn)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.maximum(pairs, 1), np.nan)


def auc_summary(
    labels: npt.NDArray[Any], scores: F64, counts: npt.NDArray[Any]
) -> dict[str, Any]:
    """``{"auc", "ci": [lo, hi], "boot": (n_boot,)}``; NaN without both labels."""
    if not ((labels == 1).any() and (labels == 0).any()):
        return {"auc": math.nan, "ci": [math.nan, math.nan], "boot": None}
    boot = weighted_auc(labels, scores, counts)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {"auc": roc_auc(labels, scores), "ci": [float(lo), float(hi)], "boot": boot}


def decision_figures(
    labels: npt.NDArray[Any], selected: npt.NDArray[np.bool_]
) -> dict[str, Any]:
    """Counts and rates of a keep/reject decision on labelled (0/1) classes."""
    good, bad = labels == 1, labels == 0
    lost = int((good & ~selected).sum())
    rejected = int((bad & ~selected).sum())
    fnr = lost / good.sum() if good.any() else math.nan
    junk = rejected / bad.sum() if bad.any() else math.nan
    both = good.any() and bad.any()
    return {
        "good_rejected": lost,
        "junk_rejected_n": rejected,
        "fnr": fnr,
        "junk_rejected": junk,
        "balanced_accuracy": 0.5 * ((1 - fnr) + junk) if both else math.nan,
    }


def _pooled_auc(parts: list[dict[str, Any]], draws: Draws) -> dict[str, Any]:
    """AUC of all labelled classes pooled (resampled within their sets) and the mean of
    the per-set AUCs (sets with both labels) on the same resamples."""
    labels = np.concatenate([p["labels"] for p in parts])
    scores = np.concatenate([p["scores"] for p in parts])
    pooled = auc_summary(labels, scores, np.concatenate(draws.counts, axis=1))
    boots = [p["auc"]["boot"] for p in parts if p["auc"]["boot"] is not None]
    values = [p["auc"]["auc"] for p in parts if p["auc"]["boot"] is not None]
    mean = {"auc": math.nan, "ci": [math.nan, math.nan], "n_sets": len(values)}
    if boots:
        lo, hi = np.nanpercentile(np.nanmean(np.stack(boots), axis=0), [2.5, 97.5])
        mean.update(auc=float(np.mean(values)), ci=[float(lo), float(hi)])
    return {"pooled": pooled, "mean_per_set": mean}


def evaluate_view(
    sets: list[RealSet], view: str, scorer: ClassScorer, draws: Draws
) -> dict[str, Any]:
    """Score every set one way (``view``) with ``cryodiscovery score``'s default
    selection path; per-set and pooled figures."""
    parts = []
    for rs, counts in zip(sets, draws.counts, strict=True):
        classes = rs.classes if view == VIEWS[0] else rs.bare
        sel = select_classes(classes, SelectionOptions(), scorer)
        stored = scorer.stored_threshold(sel.mode)
        known = rs.labels >= 0
        y, s = rs.labels[known].astype(int), sel.scores[known]
        adapt = adaptive_threshold(sel.scores, stored, scorer.target_fnr)
        parts.append(
            {
                "set": rs.name,
                "mode": sel.mode,
                "labels": y,
                "scores": s,
                "n_good": int((y == 1).sum()),
                "n_bad": int((y == 0).sum()),
                "n_unsure": int((~known).sum()),
                "auc": auc_summary(y, s, counts),
                "default": {
                    "threshold": sel.threshold,
                    "source": sel.threshold_source,
                    "adaptive_reason": adapt.reason,
                    **decision_figures(y, sel.selected[known]),
                },
                "stored": {"threshold": stored, **decision_figures(y, s >= stored)},
            }
        )
    labels = np.concatenate([p["labels"] for p in parts])
    pooled = {
        "n_good": int((labels == 1).sum()),
        "n_bad": int((labels == 0).sum()),
        **_pooled_auc(parts, draws),
    }
    for rule in ("default", "stored"):
        selected = np.concatenate([p["scores"] >= p[rule]["threshold"] for p in parts])
        pooled[rule] = decision_figures(labels, selected)
    return {"sets": parts, "pooled": pooled}


def reframe(images: npt.NDArray[np.float32], factor: float) -> npt.NDArray[np.float32]:
    """Pad (``factor > 1``, with the mean of each image's outermost 1-px frame) or
    centrally crop (``factor < 1``) ``(n, b, b)`` images to about ``factor * b`` px;
    the new box keeps the parity of ``b`` so the centre pixel stays the centre."""
    n, box = images.shape[0], images.shape[-1]
    new = round(factor * box)
    new += (new - box) % 2
    if new >= box:
        frame = np.concatenate(
            [
                images[:, 0, :],
                images[:, -1, :],
                images[:, 1:-1, 0],
                images[:, 1:-1, -1],
            ],
            axis=1,
        )
        out = np.repeat(frame.mean(axis=1), new * new).reshape(n, new, new)
        lo = (new - box) // 2
        out[:, lo : lo + box, lo : lo + box] = images
        return out.astype(np.float32)
    lo = (box - new) // 2
    return np.ascontiguousarray(images[:, lo : lo + new, lo : lo + new])


def framing(
    sets: list[RealSet], views: tuple[str, ...], scorer: ClassScorer
) -> dict[str, Any]:
    """Mean |score change| when each stack is padded to 1.25x or cropped to 0.75x its box
    (all classes, unsure included), per set and view, and the AUC after each."""
    out: dict[str, Any] = {}
    for view in views:
        rows = []
        for rs in sets:
            classes = rs.classes if view == VIEWS[0] else rs.bare
            base = scorer.predict(classes)
            known = rs.labels >= 0
            row: dict[str, Any] = {"set": rs.name, "box": classes.box_size}
            for name, factor in (("pad", PAD), ("crop", CROP)):
                moved = replace(classes, images=reframe(classes.images, factor))
                s = scorer.predict(moved)
                row[name] = {
                    "box": moved.box_size,
                    "mean_abs_change": float(np.mean(np.abs(s - base))),
                    "auc": roc_auc(rs.labels[known], s[known])
                    if len(set(rs.labels[known].tolist())) == 2
                    else math.nan,
                }
            rows.append(row)
        out[view] = {
            "sets": rows,
            **{
                name: float(np.mean([r[name]["mean_abs_change"] for r in rows]))
                for name in ("pad", "crop")
            },
        }
    return out


def baselines(
    sets: list[RealSet], inputs: list[npt.NDArray[np.float32]], draws: Draws
) -> dict[str, Any]:
    """AUC of single image statistics; each statistic's sign is chosen once, on all
    labelled classes pooled, so that its pooled AUC is >= 0.5."""
    stats = [image_statistics(x) for x in inputs]
    out = {}
    for name in BASELINES:
        parts = []
        for rs, st, counts in zip(sets, stats, draws.counts, strict=True):
            known = rs.labels >= 0
            v = np.nan_to_num(st[name][known], nan=float(np.nanmedian(st[name])))
            parts.append(
                {
                    "set": rs.name,
                    "labels": rs.labels[known].astype(int),
                    "raw": v,
                    "counts": counts,
                }
            )
        y = np.concatenate([p["labels"] for p in parts])
        sign = (
            1.0
            if roc_auc(y, np.concatenate([p["raw"] for p in parts])) >= 0.5
            else -1.0
        )
        for p in parts:
            p["scores"] = sign * p["raw"]
            p["auc"] = auc_summary(p["labels"], p["scores"], p["counts"])
        out[name] = {"sign": sign, "sets": parts, **_pooled_auc(parts, draws)}
    return out


def _f(value: float, width: int = 6, digits: int = 3) -> str:
    return (
        f"{'-':>{width}s}" if not np.isfinite(value) else f"{value:{width}.{digits}f}"
    )


def _ci(auc: dict[str, Any]) -> str:
    lo, hi = auc["ci"]
    return f"{_f(auc['auc'])} [{_f(lo, 5, 2)}, {_f(hi, 4, 2)}]"


def _decision(d: dict[str, Any]) -> str:
    return (
        f"{_f(d['balanced_accuracy'], 7)} {_f(d['fnr'], 7)} {_f(d['junk_rejected'], 8)}"
    )


def print_sets(sets: list[RealSet], real_dir: Path) -> None:
    """The sets measured."""
    print(f"real sets under {real_dir}")
    print(
        f"{'set':<30s} {'box':>4s} {'Å/px':>6s} {'good':>5s} {'bad':>4s} {'unsure':>6s}  metadata (labels.csv)"
    )
    for rs in sets:
        apix = rs.classes.pixel_size or math.nan
        n = [int((rs.labels == v).sum()) for v in (1, 0, -1)]
        print(
            f"{rs.name:<30s} {rs.classes.box_size:4d} {_f(apix, 6, 3)} {n[0]:5d} {n[1]:4d} "
            f"{n[2]:6d}  {', '.join(rs.metadata_columns) or '-'}"
        )


def print_baselines(base: dict[str, Any], n_boot: int) -> None:
    """Per-set and pooled AUC of the one-statistic baselines."""
    print(
        "\nbaseline: ROC AUC [95% CI] of one image statistic of the model input "
        f"({n_boot} resamples); sign chosen once on all sets pooled"
    )
    titles = [f"{k} ({b['sign']:+.0f})" for k, b in base.items()]
    heads = "".join(f"  {t:<26s}" for t in titles)
    print(f"{'set':<30s}{heads}")
    names = [p["set"] for p in next(iter(base.values()))["sets"]]
    for i, name in enumerate(names):
        print(
            f"{name:<30s}"
            + "".join(f"  {_ci(b['sets'][i]['auc']):<26s}" for b in base.values())
        )
    print(
        f"{'POOLED':<30s}"
        + "".join(f"  {_ci(b['pooled']):<26s}" for b in base.values())
    )
    print(
        f"{'MEAN OF SET AUCs':<30s}"
        + "".join(f"  {_ci(b['mean_per_set']):<26s}" for b in base.values())
    )


def print_view(view: str, result: dict[str, Any]) -> None:
    """One scoring view of one model: per set, pooled, mean of set AUCs."""
    modes = sorted({p["mode"] for p in result["sets"]})
    what = (
        "labels.csv metadata"
        if view == VIEWS[0]
        else "images only, as `score classes.mrcs`"
    )
    print(f"\n{view} ({what}; scored {', '.join(modes)})")
    rates = f"{'bal.acc':>7s} {'FNR':>7s} {'junk rej':>8s}"
    print(f"{'':<30s} {'':>9s} {'':<21s} | {'default path (`score`)':<33s} | stored")
    print(
        f"{'set':<30s} {'good':>4s} {'bad':>4s} {'AUC [95% CI]':<21s} | "
        f"{'thr':>5s} {'source':<8s} {rates} | {'thr':>5s} {rates}"
    )
    for p in result["sets"]:
        d, s = p["default"], p["stored"]
        print(
            f"{p['set']:<30s} {p['n_good']:4d} {p['n_bad']:4d} {_ci(p['auc']):<21s} | "
            f"{_f(d['threshold'], 5)} {d['source']:<8s} {_decision(d)} | "
            f"{_f(s['threshold'], 5)} {_decision(s)}"
        )
    pooled = result["pooled"]
    print(
        f"{'POOLED':<30s} {pooled['n_good']:4d} {pooled['n_bad']:4d} "
        f"{_ci(pooled['pooled']):<21s} | {'per set':<14s} {_decision(pooled['default'])} "
        f"| {'':5s} {_decision(pooled['stored'])}"
    )
    mean = pooled["mean_per_set"]
    label = f"MEAN OF SET AUCs ({mean['n_sets']} sets)"
    print(f"{label:<40s} {_ci(mean):<21s}")
    for p in result["sets"]:
        if p["default"]["source"] != "adaptive":
            print(
                f"  {p['set']}: stored threshold used ({p['default']['adaptive_reason']})"
            )


def print_framing(frame: dict[str, Any]) -> None:
    """Mean |score change| under padding and cropping."""
    print(
        f"\nframing: mean |score change| when the stack is padded to {PAD}x (mean of the "
        f"outer 1-px frame) or cropped to {CROP}x its box; target < {FRAMING_TARGET}"
    )
    print(
        f"{'set':<30s} {'view':<11s} {'box':>9s} {'pad':>7s} {'crop':>7s}   AUC pad / crop"
    )
    for view, res in frame.items():
        for r in res["sets"]:
            boxes = f"{r['pad']['box']}/{r['crop']['box']}"
            print(
                f"{r['set']:<30s} {view:<11s} {boxes:>9s} {_f(r['pad']['mean_abs_change'], 7)} "
                f"{_f(r['crop']['mean_abs_change'], 7)}   {_f(r['pad']['auc'])} / {_f(r['crop']['auc'])}"
            )
        met = "met" if max(res["pad"], res["crop"]) < FRAMING_TARGET else "NOT met"
        print(
            f"{'MEAN OF SETS':<30s} {view:<11s} {'':>9s} {_f(res['pad'], 7)} {_f(res['crop'], 7)}   target {met}"
        )


def print_summary(models: list[dict[str, Any]]) -> None:
    """One line per model and view: the pooled figures side by side."""
    print(
        "\nsummary: pooled over sets; decisions at the default path's per-set thresholds"
    )
    print(
        f"{'model':<34s} {'view':<11s} {'AUC pool':>8s} {'AUC mean':>8s} {'bal.acc':>7s} "
        f"{'FNR':>6s} {'junk rej':>8s} {'|Δ|pad':>7s} {'|Δ|crop':>7s}"
    )
    for m in models:
        for view, res in m["views"].items():
            p = res["pooled"]
            fr = m["framing"].get(view, {"pad": math.nan, "crop": math.nan})
            print(
                f"{m['label'][:34]:<34s} {view:<11s} {_f(p['pooled']['auc'], 8)} "
                f"{_f(p['mean_per_set']['auc'], 8)} {_f(p['default']['balanced_accuracy'], 7)} "
                f"{_f(p['default']['fnr'])} {_f(p['default']['junk_rejected'], 8)} "
                f"{_f(fr['pad'], 7)} {_f(fr['crop'], 7)}"
            )


def _jsonable(value: Any) -> Any:
    """Plain JSON values: arrays as lists, NaN as null, bootstrap draws dropped."""
    if isinstance(value, dict):
        return {
            k: _jsonable(v)
            for k, v in value.items()
            if k not in ("boot", "counts", "raw")
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate_model(
    path: Path | None, sets: list[RealSet], draws: Draws, framing_check: bool
) -> dict[str, Any]:
    """Every figure of one model."""
    scorer = load_scorer(path)
    views = VIEWS if scorer.uses_metadata else VIEWS[1:]
    return {
        "label": "shipped default model" if path is None else str(path),
        "path": None if path is None else str(path),
        "name": scorer.name,
        "rule": scorer.rule,
        "sha256": scorer.sha256,
        "stored_thresholds": {
            m: scorer.stored_threshold(m) for m in ("image+metadata", "image-only")
        },
        "target_fnr": scorer.target_fnr,
        "image_only_target_fnr": scorer.image_only_target_fnr or scorer.target_fnr,
        "views": {v: evaluate_view(sets, v, scorer, draws) for v in views},
        "framing": framing(sets, views, scorer) if framing_check else {},
    }


def print_model(m: dict[str, Any]) -> None:
    """Every figure of one model."""
    print(f"\n== {m['label']}: {m['name']} ({m['rule']}, sha256 {m['sha256'][:12]}) ==")
    st = m["stored_thresholds"]
    print(
        f"stored thresholds: image+metadata {st['image+metadata']:.3f}, image-only "
        f"{st['image-only']:.3f} (calibrated for FNR {m['target_fnr']:.0%} and "
        f"{m.get('image_only_target_fnr', m['target_fnr']):.0%} on the model's "
        "validation jobs)\ndefault path (`cryodiscovery score`, default options: --adaptive): "
        "a per-job threshold from the job's own scores (two-Gaussian fit), never above the "
        "stored one; the stored one when the scores show no two clear modes"
    )
    for view, res in m["views"].items():
        print_view(view, res)
    if m["framing"]:
        print_framing(m["framing"])


def main(argv: list[str] | None = None) -> int:
    """Score the real sets with each model; print (and optionally write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        metavar="PATH",
        help="model file; repeat to compare models side by side (default: the shipped model)",
    )
    add_real_dir_arg(parser)
    parser.add_argument(
        "--boot", type=int, default=2000, help="bootstrap resamples (default 2000)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="bootstrap seed (default 0)"
    )
    parser.add_argument(
        "--no-framing", action="store_true", help="skip the pad/crop check"
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
    sets = read_real_sets(args.real_dir)
    if not sets:
        print(missing_message(args.real_dir))
        return 0
    torch.set_num_threads(args.threads)
    paths: list[Path | None] = list(args.model) if args.model else [None]
    sizes = [int((rs.labels >= 0).sum()) for rs in sets]
    draws = draw_resamples(sizes, args.boot, args.seed)
    print_sets(sets, args.real_dir)
    first = load_scorer(paths[0])
    base = baselines(sets, [model_inputs(rs.classes, first) for rs in sets], draws)
    print_baselines(base, args.boot)
    models = []
    for path in paths:
        models.append(evaluate_model(path, sets, draws, not args.no_framing))
        print_model(models[-1])
    print_summary(models)
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(sets)} sets, {len(models)} model(s), {args.boot} resamples, seed {args.seed}: {elapsed:.1f} s"
    )
    if args.json is not None:
        record = {
            "real_dir": str(args.real_dir),
            "n_boot": args.boot,
            "seed": args.seed,
            "sets": [
                {
                    "set": rs.name,
                    "box": rs.classes.box_size,
                    "pixel_size": rs.classes.pixel_size,
                    "class_numbers": rs.classes.class_numbers,
                    "labels": rs.labels,
                    "metadata_columns": rs.metadata_columns,
                }
                for rs in sets
            ],
            "baselines": base,
            "models": models,
            "elapsed_s": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable(record), indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
