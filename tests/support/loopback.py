"""An in-process Flower ``Grid`` that drives the real ServerApp and ClientApps without a
SuperLink, Ray or subprocesses: for fast tests and the benchmark.

Each message is taken apart into Flower's wire objects (``deflate``) and rebuilt
(``inflate``) in both directions, exactly as between a SuperLink and a SuperNode, so what a
ClientApp receives and what the server aggregates are the bytes that would cross the
network; every transfer is recorded in :attr:`LoopbackGrid.traffic` with its size. Each
node keeps one :class:`~flwr.app.Context` for the whole run, as a SuperNode does.

Public API (tests and benchmarks; keep it stable)::

    LoopbackGrid(nodes: Mapping[int, Handler], node_configs: Mapping[int, UserConfig],
                 *, run_config: UserConfig | None = None, run_id: int = 1,
                 workers: int = 1, keep_bytes: bool = False)
        .traffic -> list[Transfer]          # every message, both directions
        .remove_node(node_id)               # the site disconnects
        .node_context(node_id) -> Context
    Transfer(direction: "down" | "up", node_id, message_type, nbytes, message)
    run_server_app(server_app, grid, run_config) -> Context   # calls the app's main
    server_identity(run_id)   # context manager: run server code (run_federation) directly
    run_inprocess(run_config, sites, *, initial=None, validation=None) -> InProcessRun
        # the real ServerApp code and ClientApps; .result, .grid, .site_seconds
    Handler = Callable[[Message, Context], Message]            # a ClientApp is one
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryodiscovery.federation.site_app import METADATA_FIELDS
from flwr.app import Context, Error, Message, Metadata, RecordDict, UserConfig
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

if TYPE_CHECKING:
    from cryodiscovery.core.classes import ClassAverages
    from cryodiscovery.core.model.scorer import ClassScorer
    from cryodiscovery.federation.rounds import FederationResult

log = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]


@dataclass(frozen=True)
class Transfer:
    """One message crossing the (simulated) network.

    ``direction`` is ``"down"`` (server to site) or ``"up"`` (site to server);
    ``nbytes`` is the total size of its serialized Flower objects; ``message`` is the
    message as rebuilt from those bytes; ``payload`` the bytes themselves (only with
    ``keep_bytes=True``).
    """

    direction: str
    node_id: int
    message_type: str
    nbytes: int
    message: Message
    payload: bytes | None = None


def stamped(msg: Message, **fields: object) -> Message:
    """``msg`` with some metadata ``fields`` replaced (e.g. the ``message_id`` and
    ``run_id`` a SuperLink stamps on a message), through Flower's public ``Metadata``."""
    metadata = Metadata(
        **{**{f: getattr(msg.metadata, f) for f in METADATA_FIELDS}, **fields}
    )
    if msg.has_error():
        return Message(error=msg.error, metadata=metadata)
    return Message(content=msg.content, metadata=metadata)


def wire_copy(msg: Message) -> tuple[Message, bytes]:
    """Serialize ``msg`` to Flower's wire objects and rebuild it; returns the copy and
    the serialized objects concatenated (what would cross the network)."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    payload = b"".join(contents.values())
    copy = inflate_object_from_contents(msg.object_id, contents)
    if not isinstance(copy, Message):
        raise TypeError(f"wire copy produced {type(copy).__name__}, not a Message")
    # the message id is not part of the wire body
    return stamped(copy, message_id=msg.metadata.message_id), payload


class LoopbackGrid(Grid):
    """A Grid whose nodes are handlers (ClientApps) called in this process."""

    def __init__(
        self,
        nodes: Mapping[int, Handler],
        node_configs: Mapping[int, UserConfig] | None = None,
        *,
        run_config: UserConfig | None = None,
        run_id: int = 1,
        workers: int = 1,
        keep_bytes: bool = False,
    ) -> None:
        self._handlers = dict(nodes)
        self._contexts = {
            nid: Context(
                run_id=run_id,
                node_id=nid,
                node_config=dict((node_configs or {}).get(nid, {})),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for nid in self._handlers
        }
        self._run = Run.create_empty(run_id)
        self._workers = max(1, workers)
        self._replies: dict[str, Future[Message]] = {}
        self._targets: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self.traffic: list[Transfer] = []
        self._keep_bytes = keep_bytes

    # -- Grid API -----------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._handlers)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for sent in messages:
            msg = stamped(
                sent,
                message_id=uuid.uuid4().hex,
                run_id=self._run.run_id,
                src_node_id=SUPERLINK_NODE_ID,
            )
            node = msg.metadata.dst_node_id
            copy, payload = wire_copy(msg)
            self._record("down", node, copy, payload)
            self._targets[msg.metadata.message_id] = node
            self._replies[msg.metadata.message_id] = self._pool.submit(
                self._deliver, node, copy
            )
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        out = []
        for mid in list(message_ids):
            future = self._replies.get(mid)
            if future is not None and future.done():
                del self._replies[mid]
                out.append(self._receive(self._targets.pop(mid), future.result()))
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        ids = self.push_messages(messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {self._replies[i] for i in ids}
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            if not done:
                break
        replies = self.pull_messages(ids)
        for mid in ids:  # replies that missed the deadline are never delivered
            if self._replies.pop(mid, None) is not None:
                log.warning("no reply from node %d in time", self._targets.pop(mid))
        return replies

    # -- test controls ------------------------------------------------------------
    def remove_node(self, node_id: int) -> None:
        """Disconnect a site: it is no longer listed and gets no further messages."""
        self._handlers.pop(node_id, None)

    def node_context(self, node_id: int) -> Context:
        """The persistent context of one node (its ``state`` survives across rounds)."""
        return self._contexts[node_id]

    def close(self) -> None:
        """Stop the worker threads (waits for running handlers)."""
        self._pool.shutdown(wait=True)

    # -- internals ----------------------------------------------------------------
    def _deliver(self, node_id: int, msg: Message) -> Message:
        handler = self._handlers.get(node_id)
        if handler is None:
            return Message(
                Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node disconnected"),
                reply_to=msg,
            )
        try:
            return handler(msg, self._contexts[node_id])
        except (
            Exception
        ) as err:  # a ClientApp crash becomes an error reply, as in Flower
            log.debug("node %d raised:\n%s", node_id, traceback.format_exc())
            return Message(
                Error(
                    code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                    reason=f"{type(err).__name__}: {err}",
                ),
                reply_to=msg,
            )

    def _receive(self, node_id: int, reply: Message) -> Message:
        copy, payload = wire_copy(stamped(reply, message_id=uuid.uuid4().hex))
        self._record("up", node_id, copy, payload)
        return copy

    def _record(self, direction: str, node: int, msg: Message, payload: bytes) -> None:
        kept = payload if self._keep_bytes else None
        self.traffic.append(
            Transfer(
                direction, node, msg.metadata.message_type, len(payload), msg, kept
            )
        )


@contextlib.contextmanager
def server_identity(run_id: int) -> Iterator[None]:
    """Stamp messages created in this block as the ServerApp's (Flower's runtime sets
    this process-wide identity in a real deployment)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def run_server_app(
    server_app: ServerApp, grid: LoopbackGrid, run_config: UserConfig
) -> Context:
    """Run ``server_app``'s main on ``grid`` with ``run_config``; returns its context."""
    context = Context(
        run_id=grid.run.run_id,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config=dict(run_config),
    )
    with server_identity(grid.run.run_id):
        server_app(grid, context)
    return context


@dataclass
class InProcessRun:
    """A federation run on a :class:`LoopbackGrid` (see :func:`run_inprocess`)."""

    result: FederationResult
    grid: LoopbackGrid
    site_seconds: dict[int, float]  # node id -> seconds its ClientApp spent on messages


def run_inprocess(
    run_config: UserConfig,
    sites: Mapping[int, Path],
    *,
    initial: ClassScorer | None = None,
    validation: Sequence[ClassAverages] | None = None,
) -> InProcessRun:
    """:func:`~.server_app.run_federation` with the real ClientApp at every site
    (``sites``: node id -> federation.yaml), timing each site's message handling."""
    from cryodiscovery.federation import client_app
    from cryodiscovery.federation.config import NODE_CONFIG_KEY
    from cryodiscovery.federation.server_app import (
        run_federation,
        settings_from_run_config,
    )

    seconds: dict[int, float] = dict.fromkeys(sites, 0.0)

    def timed(msg: Message, context: Context) -> Message:
        start = time.perf_counter()
        try:
            return client_app.app(msg, context)
        finally:
            seconds[context.node_id] += time.perf_counter() - start

    grid = LoopbackGrid(
        dict.fromkeys(sites, timed),
        {n: {NODE_CONFIG_KEY: str(p)} for n, p in sites.items()},
    )
    try:
        with server_identity(grid.run.run_id):
            result = run_federation(
                grid,
                settings_from_run_config(run_config),
                validation=validation,
                initial=initial,
            )
    finally:
        grid.close()
    return InProcessRun(result, grid, seconds)
