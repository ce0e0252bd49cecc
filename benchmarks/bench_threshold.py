"""Choose a model's default threshold rule on the real labelled class averages, honestly:
every candidate rule is scored on each real set, and the rule is chosen by leave-one-set-
out (for each set, the rule that keeps the pooled false-negative rate of the *other*
sets at or below ``--max-fnr`` while rejecting the most junk, then applied to the set
left out). ``--max-fnr`` defaults to 0.025, half the project's 5% target: the other sets
hold about 60 good classes, so a rate measured at 5% on them is as likely as not to be
above 5% on a new set; half the target leaves that margin. The LOSO figures are the estimate of how the chosen rule does on a set it was
not chosen on; the rule chosen on all sets is what the model card should state.

Candidate rules: the stored threshold recalibrated on the model's generated validation
jobs for each target false-negative rate of ``--fnrs`` (``ClassScorer.threshold_for_fnr``),
each with and without the per-job adaptive threshold (``choose_threshold``).

Usage::

    python benchmarks/bench_threshold.py [--model PATH] [--max-fnr 0.025] [--json OUT]

Real sets are read as ``bench_real.py`` reads them (labels.csv metadata as the readers give
it); skips cleanly when ``../shared/data/real_classes`` is absent. No weights are fitted:
one scalar per rule is chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.model.calibration import adaptive_threshold
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import IMAGE_AND_METADATA, IMAGE_ONLY, ClassScorer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_classes import (
    add_real_dir_arg,
    missing_message,
    read_real_sets,
)

FNRS = (0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)


def rule_threshold(
    stored: float,
    scores: npt.NDArray[np.float64],
    fnr: float,
    adaptive: bool,
) -> float:
    """The threshold ``cryodiscovery score`` would use on one job with this rule (as
    ``core.selection.choose_threshold`` does), from the rule's stored threshold."""
    if not adaptive:
        return stored
    return adaptive_threshold(scores, stored, fnr).threshold


def rates(labels: npt.NDArray[np.int8], keep: npt.NDArray[np.bool_]) -> dict[str, int]:
    """Counts behind the false-negative rate and the share of junk rejected."""
    good, bad = labels == 1, labels == 0
    return {
        "good": int(good.sum()),
        "lost": int((good & ~keep).sum()),
        "bad": int(bad.sum()),
        "rejected": int((bad & ~keep).sum()),
    }


def pooled(counts: list[dict[str, int]]) -> tuple[float, float]:
    """Pooled FNR and junk rejected over sets."""
    tot = {k: sum(c[k] for c in counts) for k in ("good", "lost", "bad", "rejected")}
    fnr = tot["lost"] / tot["good"] if tot["good"] else float("nan")
    rej = tot["rejected"] / tot["bad"] if tot["bad"] else float("nan")
    return fnr, rej


def evaluate(
    scorer: ClassScorer, real_dir: Path, fnrs: tuple[float, ...]
) -> dict[str, Any]:
    """Per rule and set: the threshold and the counts; both scoring modes."""
    sets = read_real_sets(real_dir)
    out: dict[str, Any] = {"sets": [s.name for s in sets], "modes": {}}
    for mode in (IMAGE_AND_METADATA, IMAGE_ONLY):
        table: dict[str, list[dict[str, Any]]] = {}
        stored = {fnr: scorer.threshold_for_fnr(fnr, mode) for fnr in fnrs}
        for s in sets:
            classes = s.classes if mode == IMAGE_AND_METADATA else s.bare
            known = s.labels >= 0
            scores = scorer.predict(classes)
            for fnr in fnrs:
                for adaptive in (False, True):
                    t = rule_threshold(stored[fnr], scores, fnr, adaptive)
                    keep = scores >= t
                    key = f"fnr={fnr:g}{' +adaptive' if adaptive else ''}"
                    table.setdefault(key, []).append(
                        {"set": s.name, "threshold": t}
                        | rates(s.labels[known], keep[known])
                    )
        out["modes"][mode] = table
    return out


def loso(table: dict[str, list[dict[str, Any]]], max_fnr: float) -> dict[str, Any]:
    """Leave-one-set-out choice of the rule, and the rule chosen on every set."""

    def choose(exclude: str | None) -> str:
        best, best_key = (-1.0, 1.0), next(iter(table))
        for key, rows in table.items():
            fnr, rej = pooled([r for r in rows if r["set"] != exclude])
            rej = 0.0 if np.isnan(rej) else rej
            if fnr <= max_fnr and (rej, -fnr) > best:
                best, best_key = (rej, -fnr), key
        return best_key

    names = [r["set"] for r in next(iter(table.values()))]
    held = []
    for name in names:
        key = choose(name)
        row = next(r for r in table[key] if r["set"] == name)
        held.append({"held_out": name, "rule": key} | row)
    fnr, rej = pooled(held)
    return {
        "held_out": held,
        "pooled_fnr": fnr,
        "pooled_rejected": rej,
        "all": choose(None),
    }


def print_mode(
    mode: str, table: dict[str, list[dict[str, Any]]], choice: dict[str, Any]
) -> None:
    print(
        f"\n== {mode} scoring: pooled FNR / junk rejected per rule (per-set thresholds)"
    )
    for key, rows in table.items():
        fnr, rej = pooled(rows)
        thr = " ".join(f"{r['threshold']:.3f}" for r in rows)
        print(
            f"  {key:22s} FNR {fnr:5.3f}  junk rejected {rej:5.3f}   thresholds {thr}"
        )
    print("  leave-one-set-out:")
    for h in choice["held_out"]:
        print(
            f"    {h['held_out']:30s} rule {h['rule']:20s} lost {h['lost']}/{h['good']}"
            f"  rejected {h['rejected']}/{h['bad']}"
        )
    print(
        f"    pooled over held-out sets: FNR {choice['pooled_fnr']:.3f}, junk rejected "
        f"{choice['pooled_rejected']:.3f}; rule chosen on all sets: {choice['all']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--max-fnr", type=float, default=0.025)
    parser.add_argument("--fnrs", type=float, nargs="+", default=list(FNRS))
    parser.add_argument("--json", type=Path, default=None)
    add_real_dir_arg(parser)
    args = parser.parse_args(argv)
    if not args.real_dir.is_dir():
        print(missing_message(args.real_dir))
        return 0
    scorer = load_scorer(args.model)
    print(f"model {scorer.name} ({scorer.sha256[:12]}), rule {scorer.rule}")
    result = evaluate(scorer, args.real_dir, tuple(args.fnrs))
    for mode, table in result["modes"].items():
        result.setdefault("choice", {})[mode] = loso(table, args.max_fnr)
        print_mode(mode, table, result["choice"][mode])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
