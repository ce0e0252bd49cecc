"""The Grid that ``Strategy.start`` gets: replies collected with a short poll (Flower's
deployment Grid checks every 3 s), everything else passed through."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from cryodiscovery.federation.polling import REPLY_POLL_S, PollingGrid
from cryodiscovery.federation.strategy import site_labels
from flwr.app import Context, Message, MessageType, RecordDict
from support.loopback import LoopbackGrid, server_identity


class _Sites(LoopbackGrid):
    """Two sites that answer after ``delays`` seconds; named at registration; its own
    ``send_and_receive`` must not be used."""

    def get_nodes(self) -> list[SimpleNamespace]:  # type: ignore[override]
        return [
            SimpleNamespace(node_id=1, name="facility-a"),
            SimpleNamespace(node_id=2, name=""),
        ]

    def send_and_receive(  # type: ignore[override]
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        raise AssertionError("the wrapped Grid's send_and_receive was used")


def _sites(delays: dict[int, float]) -> _Sites:
    def reply_after(seconds: float):  # type: ignore[no-untyped-def]
        def handler(msg: Message, _context: Context) -> Message:
            time.sleep(seconds)
            return Message(RecordDict(), reply_to=msg)

        return handler

    return _Sites({n: reply_after(s) for n, s in delays.items()}, workers=2)


def _ask(grid: PollingGrid, timeout: float) -> tuple[list[int], float]:
    with server_identity(1):
        messages = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.EVALUATE)
            for n in grid.get_node_ids()
        ]
        t0 = time.monotonic()
        replies = list(grid.send_and_receive(messages, timeout=timeout))
    return sorted(m.metadata.src_node_id for m in replies), time.monotonic() - t0


def test_replies_are_collected_within_a_poll_of_the_last_one() -> None:
    sites = _sites({1: 0.1, 2: 0.4})
    try:
        got, seconds = _ask(PollingGrid(sites), timeout=30)
    finally:
        sites.close()
    assert got == [1, 2]
    assert 0.4 <= seconds < 0.4 + REPLY_POLL_S + 1.0  # Flower's own: >= 3 s


def test_a_late_site_is_missing_after_the_timeout() -> None:
    sites = _sites({1: 0.1, 2: 2.0})
    try:
        got, seconds = _ask(PollingGrid(sites), timeout=0.5)
    finally:
        sites.close()
    assert got == [1]
    assert 0.5 <= seconds < 1.5


def test_names_and_nodes_pass_through() -> None:
    sites = _sites({1: 0.0, 2: 0.0})
    try:
        grid = PollingGrid(sites)
        assert sorted(grid.get_node_ids()) == [1, 2]
        assert site_labels(grid) == {1: "facility-a", 2: "node 2"}
        assert grid.run.run_id == sites.run.run_id
    finally:
        sites.close()
    with pytest.raises(ValueError, match="poll_s"):
        PollingGrid(sites, poll_s=0)
