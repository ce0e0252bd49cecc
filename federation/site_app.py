"""The ClientApp a SuperNode starts for each message: a thin front for the site worker.

Flower 1.41 starts a new ClientApp process for every message, and the facility's work
(importing torch, reading the harvest, the first optimizer step, which imports
``torch._dynamo``) would otherwise be paid again in each of them: about 4 s of a train
message on an idle 2-core host before any learning happens. When federation.yaml names a
``worker_socket``, this app imports neither torch nor the data code: it passes the
message and the node's context, built from Flower's public record types, to the facility's
long-running worker (``cryodiscovery federation worker``, :mod:`worker`), which runs the
real ClientApp (:mod:`client_app`) and answers with the reply and the updated context.
Without ``worker_socket``, or when the worker cannot be reached (logged as a warning),
the message is handled in this process by the same ClientApp.

Protocol (one connection per message, over a Unix socket that only the facility's
service user can open; no pickle, nothing executable crosses it): the client sends
frames [context, index, arrays]; the worker answers [status, context, index, arrays]
or [status] with ``ok: false``. A frame is an 8-byte big-endian length and the bytes;
``index`` is JSON with the message's metadata and its records (config and metric values
as JSON, bytes in base64, each array's dtype, shape and size); ``arrays`` the arrays'
bytes in that order; ``context`` the same for the node's context (its state's arrays
after the JSON header).

Public API: ``app`` (the Flower component), ``encode_message``, ``decode_message``,
``send_frames``, ``read_frames``, ``forward(socket_path, message, context)``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any

from cryodiscovery.federation.config import NODE_CONFIG_KEY, load_facility_config
from cryodiscovery.federation.logsetup import ensure_logging, process_age_s
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">Q")
#: Largest frame accepted (a model update of the shipped size is ~1.3 MB).
MAX_FRAME = 2**31


#: The Message metadata a frame carries (also what test scaffolding copies).
METADATA_FIELDS = (
    "run_id",
    "message_id",
    "src_node_id",
    "dst_node_id",
    "reply_to_message_id",
    "group_id",
    "created_at",
    "ttl",
    "message_type",
    "src_task_id",
    "dst_task_id",
)


def _value_to_json(value: Any) -> Any:
    """A record or user-config value as JSON (bytes as ``{"b64": ...}``)."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_value_to_json(v) for v in value]
    return value


def _value_from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, list):
        return [_value_from_json(v) for v in value]
    return value


def _records_to_json(records: RecordDict, blob: list[bytes]) -> list[Any]:
    """``records`` as JSON; the arrays' bytes are appended to ``blob`` in order."""
    out: list[Any] = []
    for name, record in records.items():
        if isinstance(record, ArrayRecord):
            entries = []
            for key, arr in record.items():
                blob.append(arr.data)
                entries.append(
                    [key, arr.dtype, list(arr.shape), arr.stype, len(arr.data)]
                )
            out.append([name, "arrays", entries])
        else:
            kind = "metrics" if isinstance(record, MetricRecord) else "config"
            out.append(
                [name, kind, [[k, _value_to_json(v)] for k, v in record.items()]]
            )
    return out


def _records_from_json(
    items: list[Any], blob: bytes, offset: int
) -> tuple[RecordDict, int]:
    """The RecordDict :func:`_records_to_json` wrote; the offset after its arrays."""
    records = RecordDict()
    for name, kind, entries in items:
        if kind == "arrays":
            arrays = ArrayRecord()
            for key, dtype, shape, stype, size in entries:
                data = blob[offset : offset + int(size)]
                arrays[str(key)] = Array(str(dtype), tuple(shape), str(stype), data)
                offset += int(size)
            records[str(name)] = arrays
        else:
            values = {str(k): _value_from_json(v) for k, v in entries}
            record = MetricRecord(values) if kind == "metrics" else ConfigRecord(values)
            records[str(name)] = record
    return records, offset


def _decoded(what: str, decode: Any, *args: Any) -> Any:
    """``decode(*args)``, any malformation raised as ``ValueError`` naming ``what``."""
    try:
        return decode(*args)
    except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as err:
        raise ValueError(f"malformed {what}: {err}") from err


def encode_message(msg: Message) -> tuple[bytes, bytes]:
    """(index JSON, array bytes) of ``msg``: its metadata, content or error."""
    blob: list[bytes] = []
    index = {
        "metadata": {f: getattr(msg.metadata, f) for f in METADATA_FIELDS},
        "content": _records_to_json(msg.content, blob) if msg.has_content() else None,
        "error": [msg.error.code, msg.error.reason] if msg.has_error() else None,
    }
    return json.dumps(index).encode(), b"".join(blob)


def _decode_message(index_bytes: bytes, blob: bytes) -> Message:
    index = json.loads(index_bytes)
    metadata = Metadata(**{f: index["metadata"][f] for f in METADATA_FIELDS})
    if index["error"] is not None:
        code, reason = index["error"]
        return Message(error=Error(int(code), reason), metadata=metadata)
    content, offset = _records_from_json(index["content"], blob, 0)
    if offset != len(blob):
        raise ValueError("array sizes do not add up")
    return Message(content=content, metadata=metadata)


def decode_message(index_bytes: bytes, blob: bytes) -> Message:
    """The message :func:`encode_message` encoded (``ValueError`` when malformed)."""
    msg: Message = _decoded("message", _decode_message, index_bytes, blob)
    return msg


def encode_context(context: Context) -> bytes:
    """``context`` as one frame: header length, JSON header, its state's array bytes."""
    blob: list[bytes] = []
    header = json.dumps(
        {
            "run_id": context.run_id,
            "node_id": context.node_id,
            "node_config": _value_to_json(list(context.node_config.items())),
            "run_config": _value_to_json(list(context.run_config.items())),
            "state": _records_to_json(context.state, blob),
        }
    ).encode()
    return _LENGTH.pack(len(header)) + header + b"".join(blob)


def _decode_context(data: bytes) -> Context:
    (size,) = _LENGTH.unpack(data[: _LENGTH.size])
    header = json.loads(data[_LENGTH.size : _LENGTH.size + size])
    blob = data[_LENGTH.size + size :]
    state, offset = _records_from_json(header["state"], blob, 0)
    if offset != len(blob):
        raise ValueError("array sizes do not add up")
    return Context(
        run_id=int(header["run_id"]),
        node_id=int(header["node_id"]),
        node_config=dict(_value_from_json(header["node_config"])),
        state=state,
        run_config=dict(_value_from_json(header["run_config"])),
    )


def decode_context(data: bytes) -> Context:
    """The context :func:`encode_context` encoded (``ValueError`` when malformed)."""
    context: Context = _decoded("context", _decode_context, data)
    return context


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
