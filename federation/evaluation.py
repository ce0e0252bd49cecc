"""The sites' evaluation of a global model: the metrics a site reports (on its local
validation split) and how the server combines them.

A site evaluates a global model in one of two messages:

- an **evaluate** message (after the last round, where the site's acceptance gate runs):
  the reply's only record is a MetricRecord of :data:`EVALUATE_METRICS`;
- a **train** message whose config carries ``evaluate-received = true``: before training,
  the site evaluates the model it received (the previous round's global model) and adds
  those metrics, prefixed :data:`RECEIVED_PREFIX`, to its train reply. Every round then
  needs one message per site instead of two (a deployment's round time is mostly Flower's
  per-message cost: a SuperNode's poll and a new ClientApp process per message).

Metrics that are not finite (an AUC on a split with one class) are left out of a reply;
the server's weighted means skip them.

Public API (client_app, rounds, strategy, operations, tests; keep it stable)::

    EVALUATE_METRICS, TRAIN_METRICS, RECEIVED_PREFIX, EVALUATE_RECEIVED
    site_metrics(evaluation, prefix="") -> dict[str, float]
    aggregate_metrics(records, weight_key) -> MetricRecord
    received_metrics(replies) -> MetricRecord | None
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from cryodiscovery.federation.task import Evaluation
from cryodiscovery.federation.validation import NUM_EXAMPLES
from flwr.app import Message, MetricRecord, RecordDict

#: What an evaluate reply holds (and, prefixed, what a train reply may add).
EVALUATE_METRICS: tuple[str, ...] = (
    NUM_EXAMPLES,
    "loss",
    "auc",
    "balanced-accuracy",
    "fnr",
)
#: What a train reply always holds.
TRAIN_METRICS: tuple[str, ...] = (NUM_EXAMPLES, "loss")
#: Prefix of the received model's metrics in a train reply.
RECEIVED_PREFIX = "received-"
#: Train-config key: evaluate the received model before training.
EVALUATE_RECEIVED = "evaluate-received"


def site_metrics(evaluation: Evaluation, prefix: str = "") -> dict[str, float]:
    """:data:`EVALUATE_METRICS` of ``evaluation`` (finite ones only), keys prefixed."""
    values = {
        NUM_EXAMPLES: float(evaluation.n),
        "loss": evaluation.loss,
        "auc": evaluation.auc,
        "balanced-accuracy": evaluation.balanced_accuracy,
        "fnr": evaluation.fnr,
    }
    return {prefix + k: float(v) for k, v in values.items() if math.isfinite(v)}


def aggregate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of each scalar metric over the replies where it is finite
    (NaN where none is), plus the total example count under ``weight_key``."""
    total = 0.0
    sums: dict[str, list[float]] = {}
    for record in records:
        metrics = next(iter(record.metric_records.values()))
        weight = float(metrics.get(weight_key, 0.0))  # type: ignore[arg-type]
        if not math.isfinite(weight) or weight <= 0:
            continue
        total += weight
        for key, value in metrics.items():
            if key == weight_key or isinstance(value, list):
                continue
            if math.isfinite(float(value)):
                acc = sums.setdefault(key, [0.0, 0.0])
                acc[0] += weight * float(value)
                acc[1] += weight
    out = MetricRecord(
        {k: (s / w if w > 0 else math.nan) for k, (s, w) in sums.items()}
    )
    out[weight_key] = total
    return out


def received_metrics(replies: Iterable[Message]) -> MetricRecord | None:
    """The sites' metrics of the model they received, from train replies that carry
    them (weighted by each site's validation size); ``None`` when none does."""
    records = []
    for msg in replies:
        if msg.has_error() or len(msg.content.metric_records) != 1:
            continue
        metrics = next(iter(msg.content.metric_records.values()))
        found = {
            k[len(RECEIVED_PREFIX) :]: v
            for k, v in metrics.items()
            if k.startswith(RECEIVED_PREFIX)
            and k[len(RECEIVED_PREFIX) :] in EVALUATE_METRICS
            and not isinstance(v, list)
        }
        if NUM_EXAMPLES in found:
            records.append(RecordDict({"metrics": MetricRecord(found)}))
    return aggregate_metrics(records, NUM_EXAMPLES) if records else None
