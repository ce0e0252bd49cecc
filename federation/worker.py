"""The facility's long-running site worker: the ClientApp's work without a new process
(and a new torch import) per Flower message.

``cryodiscovery federation worker --config /etc/cryodiscovery/federation.yaml`` listens on
the config's ``worker_socket``, a Unix socket in a folder only the facility's service user
can enter (created 0700; the socket itself 0600), and handles one message at a time with
the real ClientApp (:data:`client_app.app`: the same mods, privacy, gate and error
replies as in-process). At start it harvests once (filling the cache) and runs one
optimizer step on a throw-away copy of the model, so the first message already finds
torch, the data and the optimizer code loaded. Messages whose node config names another
facility file are refused. SIGTERM/SIGINT stop it and remove the socket.

The SuperNode's ClientApp (:mod:`site_app`) connects once per message; see there for the
frame protocol.

Public API: ``serve(config_path, ready=None, stop=None)``, ``handle_connection(sock,
config_path)``, ``prepare_socket(path) -> socket``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from types import FrameType

import torch
from cryodiscovery.core.errors import InputError
from cryodiscovery.federation import client_app
from cryodiscovery.federation.config import FacilityConfig, load_facility_config
from cryodiscovery.federation.harvest_cache import cached_harvest
from cryodiscovery.federation.site_app import (
    NODE_CONFIG_KEY,
    decode_context,
    decode_message,
    encode_context,
    encode_message,
    read_frames,
    send_frames,
)

log = logging.getLogger(__name__)


def prepare_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``: its folder is created 0700 (an existing
    folder must not be writable by others), a stale socket file is replaced, the socket
    is made 0600.

    Raises
    ------
    InputError
        The folder is unsafe, or ``path`` exists and is not a socket, or a worker is
        already listening there.
    """
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(
            folder, "socket folder must belong to this user, not writable by others"
        )
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise InputError(path, "exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(str(path)) == 0:
                raise InputError(path, "another worker is already listening here")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(8)
    return sock


def _refuse(conn: socket.socket, reason: str) -> None:
    send_frames(conn, [json.dumps({"ok": False, "error": reason}).encode()])


def handle_connection(conn: socket.socket, config_path: Path) -> None:
    """Serve one message on ``conn`` with the in-process ClientApp."""
    try:
        ctx_bytes, index, blob = read_frames(conn, 3)
        context = decode_context(ctx_bytes)
        message = decode_message(index, blob)
    except (ConnectionError, ValueError) as err:
        log.warning("malformed request from the SuperNode's ClientApp: %s", err)
        try:
            _refuse(conn, "malformed request")
        except OSError:
            pass
        return
    named = context.node_config.get(NODE_CONFIG_KEY)
    if not isinstance(named, str) or Path(named).resolve() != config_path:
        log.error(
            "message for facility config %r refused: this worker serves %s",
            named,
            config_path,
        )
        _refuse(conn, "this worker serves another facility configuration")
        return
    start = time.perf_counter()
    try:
        reply = client_app.app(message, context)
    except Exception:  # e.g. a message type the ClientApp does not handle
        log.exception("%s message failed", message.metadata.message_type)
        _refuse(conn, "site failed (see the site's log)")
        return
    log.info(
        "%s message served in %.2f s",
        message.metadata.message_type,
        time.perf_counter() - start,
    )
    index, blob = encode_message(reply)
    send_frames(
        conn, [json.dumps({"ok": True}).encode(), encode_context(context), index, blob]
    )


def _warm_up(cfg: FacilityConfig) -> None:
    """Harvest once (fills the cache) and take one optimizer step on a copy of the
    current model, so the first message pays neither."""
    client_app.apply_caps(cfg)
    data = cached_harvest(cfg)
    model = client_app.current_model(cfg)
    if model is None:
        return
    net = model.members[0]  # a throw-away copy loaded from disk
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.0)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    log.info(
        "worker ready: %d training / %d validation classes; model %s",
        data.n_train,
        data.n_validation,
        model.name,
    )


def serve(
    config_path: Path,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve messages until SIGTERM/SIGINT (or ``stop`` is set); returns an exit status.

    Raises
    ------
    InputError
        The configuration has no ``worker_socket`` or is not enabled, or the socket
        cannot be made safely.
    """
    config_path = config_path.resolve()
    cfg = load_facility_config(config_path)
    if cfg.worker_socket is None:
        raise InputError(config_path, "has no worker_socket")
    if not cfg.enabled:
        raise InputError(config_path, "federation is not enabled (enabled: false)")
    _warm_up(cfg)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    server = prepare_socket(cfg.worker_socket)
    server.settimeout(0.5)
    log.info("site worker listening on %s", cfg.worker_socket)
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    handle_connection(conn, config_path)
                except Exception:  # one bad exchange never stops the worker
                    log.exception("request failed")
    finally:
        server.close()
        cfg.worker_socket.unlink(missing_ok=True)
        log.info("site worker stopped")
    return 0
