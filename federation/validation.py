"""Checks on every site update before it can reach aggregation.

A reply from a site is accepted only if it carries exactly one ``ArrayRecord`` with the
model's parameter names, shapes and dtypes, all values finite, a weights delta (update
minus the global weights sent that round) whose L2 norm is within the bound, and exactly
one ``MetricRecord`` with a finite, positive ``num-examples`` within the cap. Anything
else is dropped and logged with the reason, never aggregated.

Public API (used by ``strategy`` and tests; keep it stable)::

    UpdateBounds(max_delta_norm: float | None, max_examples: int)
    UpdateVerdict(node_id: int, accepted: bool, reason: str, delta_norm: float,
                  num_examples: float)
    check_update(content: RecordDict, reference: ArrayRecord, bounds, node_id=0)
        -> UpdateVerdict
    screen_replies(replies, reference, bounds, site=None)
        -> tuple[list[Message], list[UpdateVerdict]]   # accepted, every verdict
    delta_norm(arrays: ArrayRecord, reference: ArrayRecord) -> float
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

log = logging.getLogger(__name__)

#: Metric key that weights aggregation (Flower's default ``weighted_by_key``).
NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class UpdateBounds:
    """Limits an update must respect.

    Parameters
    ----------
    max_delta_norm:
        Upper bound on the L2 norm of (update - global weights), over all arrays
        together; ``None`` disables the check.
    max_examples:
        Upper bound on the ``num-examples`` a site may claim (it weights FedAvg).
    """

    max_delta_norm: float | None = None
    max_examples: int = 1_000_000

    def __post_init__(self) -> None:
        if self.max_delta_norm is not None and not self.max_delta_norm > 0:
            raise ValueError(f"max_delta_norm must be > 0, got {self.max_delta_norm}")
        if self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {self.max_examples}")


@dataclass(frozen=True)
class UpdateVerdict:
    """The outcome of checking one reply; ``reason`` is ``""`` when accepted."""

    node_id: int
    accepted: bool
    reason: str
    delta_norm: float = math.nan
    num_examples: float = math.nan


def delta_norm(arrays: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of ``arrays - reference`` over all arrays (same keys and shapes)."""
    total = 0.0
    for key, ref in reference.items():
        diff = arrays[key].numpy().astype(np.float64) - ref.numpy().astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def _check_arrays(arrays: ArrayRecord, reference: ArrayRecord) -> str:
    """The first problem found in ``arrays``, or ``""``."""
    got, want = list(arrays.keys()), list(reference.keys())
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        if missing or extra:
            return f"parameter names differ (missing {missing[:3]}, unexpected {extra[:3]})"
        return "parameter names are in a different order"
    for key, ref in reference.items():
        arr = arrays[key]
        if tuple(arr.shape) != tuple(ref.shape):
            return f"'{key}' has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if arr.dtype != ref.dtype:
            return f"'{key}' has dtype {arr.dtype}, expected {ref.dtype}"
        try:
            values = arr.numpy()
        except Exception as err:  # untrusted bytes: any decoding failure is a rejection
            return f"'{key}' cannot be decoded ({type(err).__name__})"
        if values.shape != tuple(ref.shape) or str(values.dtype) != ref.dtype:
            return (
                f"'{key}' decodes to {values.dtype} {values.shape}, "
                f"declared {ref.dtype} {tuple(ref.shape)}"
            )
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            return f"'{key}' has non-finite values"
    return ""


def _check_metrics(metrics: MetricRecord, bounds: UpdateBounds) -> tuple[str, float]:
    """The first problem in the reply's metrics (or ``""``) and its ``num-examples``."""
    if NUM_EXAMPLES not in metrics:
        return f"metrics lack '{NUM_EXAMPLES}'", math.nan
    value = metrics[NUM_EXAMPLES]
    if isinstance(value, list) or not math.isfinite(float(value)):
        return f"'{NUM_EXAMPLES}' is not a finite number: {value!r}", math.nan
    n = float(value)
    if not 1 <= n <= bounds.max_examples:
        return f"'{NUM_EXAMPLES}' = {n:g} outside [1, {bounds.max_examples}]", n
    for key, item in metrics.items():
        items = item if isinstance(item, list) else [item]
        if not all(math.isfinite(float(v)) for v in items):
            return f"metric '{key}' is not finite", n
    return "", n


def check_update(
    content: RecordDict,
    reference: ArrayRecord,
    bounds: UpdateBounds,
    node_id: int = 0,
) -> UpdateVerdict:
    """Check one train reply's content against the global weights sent that round.

    Parameters
    ----------
    content:
        The reply's records: one ``ArrayRecord`` of weights, one ``MetricRecord``.
    reference:
        The global ``ArrayRecord`` the site was sent (names, shapes, dtypes, and the
        point the delta is measured from).
    bounds:
        Norm and example-count limits.
    node_id:
        For the verdict and the log.
    """

    def reject(
        reason: str, norm: float = math.nan, n: float = math.nan
    ) -> UpdateVerdict:
        return UpdateVerdict(node_id, False, reason, norm, n)

    if len(content.array_records) != 1:
        return reject(f"expected one ArrayRecord, got {len(content.array_records)}")
    if len(content.metric_records) != 1:
        return reject(f"expected one MetricRecord, got {len(content.metric_records)}")
    if content.config_records:
        return reject("reply carries a ConfigRecord (only weights and metrics allowed)")
    arrays = next(iter(content.array_records.values()))
    problem = _check_arrays(arrays, reference)
    if problem:
        return reject(problem)
    problem, n = _check_metrics(next(iter(content.metric_records.values())), bounds)
    if problem:
        return reject(problem, n=n)
    norm = delta_norm(arrays, reference)
    if not math.isfinite(norm):
        return reject("weights delta norm is not finite", norm, n)
    if bounds.max_delta_norm is not None and norm > bounds.max_delta_norm:
        return reject(
            f"weights delta norm {norm:.4g} exceeds the bound {bounds.max_delta_norm:.4g}",
            norm,
            n,
        )
    return UpdateVerdict(node_id, True, "", norm, n)


def screen_replies(
    replies: Iterable[Message],
    reference: ArrayRecord,
    bounds: UpdateBounds,
    site: Callable[[int], str] | None = None,
) -> tuple[list[Message], list[UpdateVerdict]]:
    """Split train replies into those fit to aggregate and a verdict for every reply.

    Error replies (a site that failed or dropped out) count as rejected with the
    error's reason. Each rejection is logged at WARNING with the site (``site(node
    id)``, by default ``node <id>``) and reason.
    """
    accepted: list[Message] = []
    verdicts: list[UpdateVerdict] = []
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        if msg.has_error():
            verdict = UpdateVerdict(node, False, f"site error: {msg.error.reason}")
        else:
            verdict = check_update(msg.content, reference, bounds, node)
        verdicts.append(verdict)
        if verdict.accepted:
            accepted.append(msg)
        else:
            name = site(node) if site is not None else f"node {node}"
            log.warning("dropped update from %s: %s", name, verdict.reason)
    return accepted, verdicts


def model_problem(named: ArrayRecord) -> str | None:
    """Why an aggregated global model (named arrays) must not be published, or None.

    Screening each update does not make every aggregate safe: a server optimizer
    (FedAdam, FedYogi) can step a BatchNorm variance below zero or overflow.
    """
    for key, array in named.items():
        values = array.numpy()
        if not np.isfinite(values).all():
            return f"'{key}' has non-finite values"
        if key.endswith("running_var") and (values < 0).any():
            return f"'{key}' has negative BatchNorm variances"
    return None
