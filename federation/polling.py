"""A Grid that collects replies with a short poll, for Flower's ``Strategy.start``.

Why: Flower 1.41's deployment Grid (``flwr/superlink/grid/http_grid.py``,
``send_and_receive``) sleeps a fixed ``time.sleep(3)`` between checks for replies, so each
train phase (and the final evaluate phase) ends on average 1.5 s, at worst 3 s, after the
last site replied. :class:`PollingGrid` wraps any Grid and does the same through its
public ``push_messages``/``pull_messages`` every :data:`REPLY_POLL_S`; each check is one
request to the SuperLink on the same host. Everything else is passed through.

Public API (rounds, tests; keep it stable)::

    REPLY_POLL_S
    DelegatingGrid(grid)                         # passes every call on
    PollingGrid(grid, poll_s=REPLY_POLL_S)       # a flwr.serverapp.Grid
    send_and_receive(grid, messages, timeout, poll_s=REPLY_POLL_S) -> list[Message]
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

#: Seconds between checks for replies.
REPLY_POLL_S = 0.2


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    poll_s: float = REPLY_POLL_S,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` s.

    Returns the replies that arrived in time (in arrival order); sites that did not
    reply are simply missing, as with Flower's own method.
    """
    if poll_s <= 0:
        raise ValueError("poll_s must be > 0")
    messages = list(messages)
    if not messages:  # e.g. a round without site evaluation: no request at all
        return []
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(
            poll_s
            if deadline is None
            else min(poll_s, max(0.0, deadline - time.monotonic()))
        )
    return replies


class DelegatingGrid(Grid):
    """A Grid that passes every call to the Grid it wraps (``self.grid``); subclasses
    override what they change."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run: Any) -> None:  # flwr's Run type is not public
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:  # the registered names (strategy.site_labels)
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.grid.send_and_receive(messages, timeout=timeout)


class PollingGrid(DelegatingGrid):
    """``grid`` with :func:`send_and_receive` polling every ``poll_s`` seconds."""

    def __init__(self, grid: Grid, poll_s: float = REPLY_POLL_S) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be > 0")
        super().__init__(grid)
        self.poll_s = poll_s

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return send_and_receive(self.grid, messages, timeout, self.poll_s)
