"""The sites' evaluation metrics: what a reply holds and how the server combines them."""

from __future__ import annotations

import math

import pytest
from cryodiscovery.federation.evaluation import (
    EVALUATE_METRICS,
    RECEIVED_PREFIX,
    received_metrics,
    site_metrics,
)
from cryodiscovery.federation.task import Evaluation
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity


def _reply(metrics: dict[str, float] | None) -> Message:
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = 1, 1, 0
    try:
        asked = Message(RecordDict(), dst_node_id=1, message_type="train")
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    if metrics is None:
        return Message(Error(code=0, reason="site failed"), reply_to=asked)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=asked)


def test_site_metrics_leave_out_what_is_not_finite() -> None:
    ev = Evaluation(
        n=8,
        n_good=8,
        auc=math.nan,
        balanced_accuracy=0.5,
        fnr=0.25,
        loss=0.4,
        threshold=0.5,
    )
    assert site_metrics(ev) == {
        "num-examples": 8.0,
        "loss": 0.4,
        "balanced-accuracy": 0.5,
        "fnr": 0.25,
    }
    prefixed = site_metrics(ev, RECEIVED_PREFIX)
    assert set(prefixed) == {RECEIVED_PREFIX + k for k in site_metrics(ev)}
    assert set(site_metrics(ev)) < set(EVALUATE_METRICS)


def test_received_metrics_are_weighted_by_validation_size() -> None:
    def received(n: float, auc: float) -> dict[str, float]:
        return {
            "num-examples": 100.0,  # the training count: not the weight
            "loss": 9.0,
            "received-num-examples": n,
            "received-auc": auc,
        }

    replies = [
        _reply(received(10, 0.9)),
        _reply(received(30, 0.5)),
        _reply({"num-examples": 50.0, "loss": 1.0}),  # not asked / sent none
        _reply(None),  # an error reply
    ]
    out = received_metrics(replies)
    assert out is not None
    assert out["num-examples"] == 40.0
    assert out["auc"] == pytest.approx((10 * 0.9 + 30 * 0.5) / 40)
    assert "loss" not in out  # only received-* values count
    assert received_metrics(replies[2:]) is None
