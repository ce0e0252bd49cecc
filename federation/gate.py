"""The acceptance gate (does a site's scoring switch to a new global model?) and the
installation of a model where scoring picks it up (``cryodiscovery score --model PATH``).

Public API (client_app, operations, tests; keep it stable)::

    GateDecision(accepted, reason, candidate, current)
    acceptance_gate(candidate, current, sets, metric="auc", tolerance=0.01,
                    evaluated=None) -> GateDecision
    install_model(scorer, path, record) -> str      # atomic; writes <path>.json beside
    install_record_path(path) -> Path
    personalise(candidate, train, validation, epochs, lr, batch_size, seed=0)
        -> ClassScorer   # the candidate fine-tuned on the site's own classes
    personalise_for_site(cfg, candidate, data, seed) -> ClassScorer  # per cfg.personalise
    personalised_epochs(scorer) -> int    # 0 unless made by personalise
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.outputs import atomic_path
from cryodiscovery.federation import task

if TYPE_CHECKING:
    from cryodiscovery.federation.config import FacilityConfig
    from cryodiscovery.federation.harvest import Harvest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """Whether a site switches to a candidate model, and why (one line)."""

    accepted: bool
    reason: str
    candidate: float
    current: float


def acceptance_gate(
    candidate: ClassScorer,
    current: ClassScorer | None,
    sets: Sequence[ClassAverages],
    metric: str = "auc",
    tolerance: float = 0.01,
    evaluated: task.Evaluation | None = None,
) -> GateDecision:
    """Accept ``candidate`` unless it is worse than ``current`` by more than
    ``tolerance`` in ``metric`` on the site's validation classes ``sets``.

    Without a current model the candidate is accepted; without a usable validation
    metric (no classes, or only one label) the current model is kept. ``evaluated``:
    the candidate's evaluation on ``sets`` when the caller has it already.
    """
    if evaluated is None:
        evaluated = task.evaluate_scorer(candidate, sets)
    cand = evaluated.metric(metric)
    if current is None:
        return GateDecision(
            True, f"no current model; candidate {metric} {cand:.4f}", cand, math.nan
        )
    cur = task.evaluate_scorer(current, sets).metric(metric)
    if not (math.isfinite(cand) and math.isfinite(cur)):
        return GateDecision(
            False,
            f"cannot compare {metric} on the local validation "
            "split (needs selected and rejected classes)",
            cand,
            cur,
        )
    if cand < cur - tolerance:
        return GateDecision(
            False,
            f"candidate {metric} {cand:.4f} is worse than current "
            f"{cur:.4f} by more than {tolerance:g}",
            cand,
            cur,
        )
    return GateDecision(
        True,
        f"candidate {metric} {cand:.4f} vs current {cur:.4f} (tolerance {tolerance:g})",
        cand,
        cur,
    )


def install_record_path(path: Path) -> Path:
    """The JSON record written beside an installed model (``model.pt.json``)."""
    return path.with_name(path.name + ".json")


def install_model(scorer: ClassScorer, path: Path, record: dict[str, Any]) -> str:
    """Write ``scorer`` to ``path`` (atomically) and a record of where it came from
    beside it; returns the model file's SHA-256. Scoring picks it up with
    ``--model path``."""
    sha = str(save_scorer(scorer, path))
    info = {**record, "sha256": sha, "model_name": scorer.name}
    with atomic_path(install_record_path(path)) as tmp:
        tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return sha


def personalise(
    candidate: ClassScorer,
    train: Sequence[ClassAverages],
    validation: Sequence[ClassAverages],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> ClassScorer:
    """``candidate`` fine-tuned on the site's own classes for ``epochs`` (best epoch on
    ``validation``), keeping its thresholds and description; its info records the
    fine-tuning. The gate then compares this model with the site's current one."""
    options = task.LocalTrainOptions(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed
    )
    tuned = task.train_locally(candidate, train, validation, options).scorer
    out = task.with_arrays(candidate, task.scorer_to_arrays(tuned))
    out.name = f"{candidate.name}+personalised"
    out.info = {
        **candidate.info,
        "personalised": {"epochs": epochs, "learning_rate": lr, "classes": len(train)},
    }
    return out


def personalise_for_site(
    cfg: FacilityConfig, candidate: ClassScorer, data: Harvest, seed: int
) -> ClassScorer:
    """``candidate`` fine-tuned as the site's ``personalise`` settings ask (the end of a
    federation run, ``federation pull``); unchanged when they ask for no epochs or the
    site has too few classes (logged)."""
    per = cfg.personalise
    if per.epochs <= 0:
        return candidate
    try:
        tuned = personalise(
            candidate,
            data.train,
            data.validation,
            per.epochs,
            per.learning_rate,
            cfg.caps.batch_size,
            seed=seed,
        )
    except ValueError as err:
        log.warning("not personalised (%s): the gate judges the model as received", err)
        return candidate
    log.info("personalised the model: %d epoch(s)", per.epochs)
    return tuned


def personalised_epochs(scorer: ClassScorer) -> int:
    """The fine-tuning epochs :func:`personalise` recorded in ``scorer``'s info (0: the
    model as received)."""
    return int(scorer.info.get("personalised", {}).get("epochs", 0))
