"""Update screening: only well-formed, finite, bounded updates reach aggregation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from cryodiscovery.federation.validation import (
    UpdateBounds,
    check_update,
    delta_norm,
    model_problem,
    screen_replies,
)
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity
from support.loopback import stamped


def _ref() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {
            "conv.weight": Array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32)),
            "conv.bias": Array(np.zeros(4, np.float32)),
            "head.weight": Array(rng.normal(size=(1, 4)).astype(np.float32)),
        }
    )


def _update(
    arrays: dict[str, np.ndarray] | ArrayRecord, n: float = 10, **extra: object
) -> RecordDict:
    rec = (
        arrays
        if isinstance(arrays, ArrayRecord)
        else ArrayRecord({k: Array(v) for k, v in arrays.items()})
    )
    return RecordDict(
        {
            "arrays": rec,
            "metrics": MetricRecord({"num-examples": n, "loss": 0.3}),
            **extra,
        }  # type: ignore[dict-item]
    )


def _shifted(ref: ArrayRecord, step: float) -> dict[str, np.ndarray]:
    return {k: a.numpy() + np.float32(step) for k, a in ref.items()}


BOUNDS = UpdateBounds(max_delta_norm=1.0, max_examples=1000)


def test_good_update_is_accepted_with_its_delta_norm() -> None:
    ref = _ref()
    verdict = check_update(_update(_shifted(ref, 0.1)), ref, BOUNDS, node_id=7)
    n_values = sum(a.numpy().size for a in ref.values())
    assert verdict.accepted and verdict.reason == "" and verdict.node_id == 7
    assert verdict.delta_norm == pytest.approx(0.1 * math.sqrt(n_values), rel=1e-5)
    assert verdict.num_examples == 10


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    ref = _ref()
    arrays = _shifted(ref, 0.0)
    arrays["conv.bias"][2] = bad
    verdict = check_update(_update(arrays), ref, BOUNDS)
    assert not verdict.accepted and "non-finite" in verdict.reason


def test_wrong_names_shapes_order_and_dtype_are_rejected() -> None:
    ref = _ref()
    base = _shifted(ref, 0.0)
    cases = {
        "missing": {k: v for k, v in base.items() if k != "conv.bias"},
        "extra": {**base, "spy": np.zeros(1, np.float32)},
        "shape": {**base, "head.weight": np.zeros((4, 1), np.float32)},
        "dtype": {**base, "conv.bias": np.zeros(4, np.float64)},
        "order": dict(reversed(list(base.items()))),
    }
    reasons = {
        name: check_update(_update(arrays), ref, BOUNDS).reason
        for name, arrays in cases.items()
    }
    assert "missing ['conv.bias']" in reasons["missing"]
    assert "unexpected ['spy']" in reasons["extra"]
    assert "'head.weight' has shape (4, 1), expected (1, 4)" in reasons["shape"]
    assert "dtype float64, expected float32" in reasons["dtype"]
    assert "different order" in reasons["order"]


def test_forged_array_metadata_and_garbage_bytes_are_rejected() -> None:
    ref = _ref()
    base = _shifted(ref, 0.0)
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2), np.float32))
    forged = ArrayRecord({k: Array(v) for k, v in base.items()})
    forged["conv.bias"] = Array(
        dtype="float32", shape=(4,), stype="numpy.ndarray", data=buf.getvalue()
    )
    assert (
        "decodes to float32 (2, 2)" in check_update(_update(forged), ref, BOUNDS).reason
    )
    garbage = ArrayRecord({k: Array(v) for k, v in base.items()})
    garbage["conv.bias"] = Array(
        dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"\x00" * 7
    )
    assert "cannot be decoded" in check_update(_update(garbage), ref, BOUNDS).reason


def test_norm_bound_is_enforced_on_the_delta() -> None:
    ref = _ref()
    n_values = sum(a.numpy().size for a in ref.values())
    step = 1.0 / math.sqrt(n_values)
    inside = check_update(_update(_shifted(ref, 0.99 * step)), ref, BOUNDS)
    outside = check_update(_update(_shifted(ref, 1.01 * step)), ref, BOUNDS)
    assert inside.accepted
    assert not outside.accepted and "exceeds the bound 1" in outside.reason
    unbounded = check_update(
        _update(_shifted(ref, 100.0)), ref, UpdateBounds(None, 1000)
    )
    assert unbounded.accepted


@pytest.mark.parametrize(
    ("n", "reason"),
    [
        (0, "outside [1, 1000]"),
        (10**6, "outside [1, 1000]"),
        (float("nan"), "not a finite"),
    ],
)
def test_example_count_claims_are_bounded(n: float, reason: str) -> None:
    ref = _ref()
    verdict = check_update(_update(_shifted(ref, 0.0), n=n), ref, BOUNDS)
    assert not verdict.accepted and reason in verdict.reason


def test_reply_structure_must_be_weights_and_scalar_metrics_only() -> None:
    ref = _ref()
    arrays = _shifted(ref, 0.0)
    extra_config = _update(arrays, cfg=ConfigRecord({"path": "/data/x"}))
    assert "ConfigRecord" in check_update(extra_config, ref, BOUNDS).reason
    two = _update(arrays, more=ArrayRecord({k: Array(v) for k, v in arrays.items()}))
    assert "one ArrayRecord, got 2" in check_update(two, ref, BOUNDS).reason
    no_n = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"loss": 1.0}),
        }
    )
    assert "lack 'num-examples'" in check_update(no_n, ref, BOUNDS).reason
    nan_metric = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": 5, "loss": float("nan")}),
        }
    )
    assert "metric 'loss' is not finite" in check_update(nan_metric, ref, BOUNDS).reason


def test_delta_norm_matches_numpy() -> None:
    ref = _ref()
    shifted = ArrayRecord({k: Array(v) for k, v in _shifted(ref, 0.25).items()})
    flat = np.concatenate([(shifted[k].numpy() - ref[k].numpy()).ravel() for k in ref])
    assert delta_norm(shifted, ref) == pytest.approx(
        float(np.linalg.norm(flat)), rel=1e-6
    )


def test_screen_replies_drops_bad_and_error_replies(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)  # what Flower's runtime sets
    ref = _ref()
    instructions = [
        stamped(
            Message(RecordDict({"arrays": ref}), dst_node_id=nid, message_type="train"),
            message_id=f"m{nid}",
        )
        for nid in (11, 12, 13)
    ]
    bad = _shifted(ref, 0.0)
    bad["conv.weight"][0, 0, 0, 0] = np.nan
    replies = [
        Message(_update(_shifted(ref, 0.01)), reply_to=instructions[0]),
        Message(_update(bad), reply_to=instructions[1]),
        Message(Error(code=5, reason="node went away"), reply_to=instructions[2]),
    ]
    with caplog.at_level("WARNING"):
        accepted, verdicts = screen_replies(replies, ref, BOUNDS)
    assert [m.metadata.src_node_id for m in accepted] == [11]
    assert [(v.node_id, v.accepted) for v in verdicts] == [
        (11, True),
        (12, False),
        (13, False),
    ]
    assert "site error: node went away" in verdicts[2].reason
    assert "dropped update from node 12" in caplog.text


def test_model_problem_names_the_first_unusable_array() -> None:
    good = ArrayRecord(
        {
            "m0.bn.weight": Array(np.ones(3, np.float32)),
            "m0.bn.running_var": Array(np.ones(3, np.float32)),
        }
    )
    assert model_problem(good) is None
    nan = ArrayRecord(dict(good.items()))
    nan["m0.bn.weight"] = Array(np.array([1, np.nan, 1], np.float32))
    assert model_problem(nan) == "'m0.bn.weight' has non-finite values"
    negative = ArrayRecord(dict(good.items()))
    negative["m0.bn.running_var"] = Array(np.array([1, -0.1, 1], np.float32))
    assert (
        model_problem(negative)
        == "'m0.bn.running_var' has negative BatchNorm variances"
    )
