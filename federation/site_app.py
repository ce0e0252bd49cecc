"""The ClientApp a SuperNode starts for each message: a thin front for the site worker.

Flower 1.41 starts a new ClientApp process for every message, and the facility's work
(importing torch, reading the harvest, the first optimizer step, which imports
``torch._dynamo``) would otherwise be paid again in each of them: about 4 s of a train
message on an idle 2-core host before any learning happens. When federation.yaml names a
``worker_socket``, this app imports neither torch nor the data code: it passes the
message and the node's context, as Flower's own wire objects, to the facility's
long-running worker (``cryodiscovery federation worker``, :mod:`worker`), which runs the
real ClientApp (:mod:`client_app`) and answers with the reply and the updated context.
Without ``worker_socket``, or when the worker cannot be reached (logged as a warning),
the message is handled in this process by the same ClientApp.

Protocol (one connection per message, over a Unix socket that only the facility's
service user can open; no pickle, nothing executable crosses it): the client sends
frames [context, index, objects]; the worker answers [status, context, index, objects]
or [status] with ``ok: false``. A frame is an 8-byte big-endian length and the bytes;
``context`` is Flower's Context protobuf; ``index`` is JSON naming the message's root
object, its message id and each object's id and size; ``objects`` the objects' bytes.

Public API: ``app`` (the Flower component), ``encode_message``, ``decode_message``,
``send_frames``, ``read_frames``, ``forward(socket_path, message, context)``.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any

from cryodiscovery.federation.config import NODE_CONFIG_KEY, load_facility_config
from cryodiscovery.federation.logsetup import ensure_logging, process_age_s
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.serde import context_from_proto, context_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext  # type: ignore[attr-defined]
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">Q")
#: Largest frame accepted (a model update of the shipped size is ~1.3 MB).
MAX_FRAME = 2**31


def encode_message(msg: Message) -> tuple[bytes, bytes]:
    """(index JSON, objects) of ``msg`` as Flower's wire objects."""
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    index = {
        "root": msg.object_id,
        "message_id": msg.metadata.message_id,
        "objects": [[oid, len(data)] for oid, data in objects.items()],
    }
    return json.dumps(index).encode(), b"".join(objects.values())


def decode_message(index_bytes: bytes, blob: bytes) -> Message:
    """The message :func:`encode_message` encoded (``ValueError`` when malformed)."""
    try:
        index = json.loads(index_bytes)
        contents, offset = {}, 0
        for oid, size in index["objects"]:
            contents[str(oid)] = blob[offset : offset + int(size)]
            offset += int(size)
        if offset != len(blob):
            raise ValueError("object sizes do not add up")
        msg = inflate_object_from_contents(str(index["root"]), contents)
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed message: {err}") from err
    if not isinstance(msg, Message):
        raise ValueError(f"decoded a {type(msg).__name__}, not a Message")
    msg.metadata.__dict__["_message_id"] = str(index.get("message_id", ""))
    return msg


def encode_context(context: Context) -> bytes:
    """``context`` as Flower's Context protobuf bytes."""
    return bytes(context_to_proto(context).SerializeToString())


def decode_context(data: bytes) -> Context:
    """The context :func:`encode_context` encoded (``ValueError`` when malformed)."""
    proto = ProtoContext()
    try:
        proto.ParseFromString(data)
    except DecodeError as err:
        raise ValueError(f"malformed context: {err}") from err
    return context_from_proto(proto)


def send_frames(sock: socket.socket, frames: list[bytes]) -> None:
    """Send ``frames`` (each length-prefixed)."""
    for frame in frames:
        sock.sendall(_LENGTH.pack(len(frame)) + frame)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` frames (``ConnectionError`` on EOF, ``ValueError`` if too big)."""
    out = []
    for _ in range(count):
        (size,) = _LENGTH.unpack(_read_exact(sock, _LENGTH.size))
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes refused")
        out.append(_read_exact(sock, size))
    return out


class WorkerError(RuntimeError):
    """The worker answered with an error (its text names no file and holds no data)."""


def forward(socket_path: Path, message: Message, context: Context) -> Message:
    """Have the worker at ``socket_path`` handle ``message``; ``context`` is updated in
    place (its ``state`` is what the worker's ClientApp left)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        index, blob = encode_message(message)
        send_frames(sock, [encode_context(context), index, blob])
        (status_bytes,) = read_frames(sock, 1)
        status: dict[str, Any] = json.loads(status_bytes)
        if not status.get("ok"):
            raise WorkerError(str(status.get("error", "worker failed")))
        ctx_bytes, index, blob = read_frames(sock, 3)
    returned = decode_context(ctx_bytes)
    context.state = returned.state
    return decode_message(index, blob)


def _socket_of(context: Context) -> Path | None:
    path = context.node_config.get(NODE_CONFIG_KEY)
    if not isinstance(path, str) or not path:
        return None  # the in-process ClientApp refuses with the reason
    try:
        return load_facility_config(Path(path)).worker_socket
    except Exception:  # the in-process ClientApp reports configuration errors
        return None


def _handle(message: Message, context: Context) -> Message:
    age, start = process_age_s(), time.perf_counter()
    ensure_logging()
    path = _socket_of(context)
    if path is not None:
        try:
            reply = forward(path, message, context)
            log.info(
                "%s message forwarded to the site worker, reply in %.2f s (process "
                "started %.2f s before it arrived)",
                message.metadata.message_type,
                time.perf_counter() - start,
                age,
            )
            return reply
        except (OSError, ConnectionError) as err:
            log.warning(
                "site worker at %s not reachable (%s): handling the message in "
                "this process",
                path,
                err,
            )
    from cryodiscovery.federation import client_app

    reply: Message = client_app.app(message, context)
    return reply


app = ClientApp()


@app.train()
def train(message: Message, context: Context) -> Message:
    """Forward a train message (also SecAgg+ stages) to the worker."""
    return _handle(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Forward an evaluate message to the worker."""
    return _handle(message, context)
