"""Sending messages to sites and collecting their replies with a short poll.

Flower's ``Grid.send_and_receive`` (flwr 1.41) sleeps 3 s between checks for replies, so
every train and evaluate phase of a round ends on average 1.5 s after the last site
replied. :func:`send_and_receive` does the same through the Grid's public
``push_messages``/``pull_messages`` with a short interval; each check is one request to
the SuperLink on the same host.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
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
