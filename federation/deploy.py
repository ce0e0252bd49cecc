"""Starting and stopping the Flower processes of a federation with the flags the README
gives: the SuperLink on the server (behind nginx, see :mod:`gateway`) and one SuperNode
per facility, each with its own ``flower-superexec``.

Both run in ``--isolation process`` with a shared secret (``--superexec-auth-secret-
file``): in Flower's default ``subprocess`` mode the secret is ignored and any local user
of the host could take a ServerApp/ClientApp task from the loopback Runtime API. The
SuperLink never installs app dependencies at run time
(``--disable-runtime-dependency-installation``: ``uv sync`` would pull CUDA torch), keeps
its state in ``--database`` (SuperNodes reconnect after a restart) and requires
registered SuperNode keys (``--enable-supernode-auth``). Telemetry is off everywhere.

Every process is started in its own session, so :meth:`Daemon.stop` also ends the
ClientApp/ServerApp processes its SuperExec started.

Public API (tests, benchmarks, operators)::

    APP_DIR; NODE_CONFIG_KEY
    SuperLinkSpec(ca_cert, server_cert, server_key, state_dir, host, port, task_poll_s)
    SuperNodeSpec(name, superlink, ca_cert, private_key, facility_config, state_dir,
                  runtime_port, max_wait_s, task_poll_s)
    supernode_spec(facility_yaml, state_dir, runtime_port=9094) -> SuperNodeSpec
    superlink_commands(spec) / supernode_commands(spec) -> [(name, argv), (name, argv)]
    flower_env(flwr_home, task_poll_s=1.0) -> dict; flower_script(name) -> str
    Daemon(.alive(), .stop(), .signal(sig), .log_text()); start_daemon(name, argv, log, env)
    start_superlink(spec) / start_supernode(spec) -> list[Daemon]
    start_worker(spec) -> Daemon; worker_command(facility_yaml) -> argv
    start_nginx(conf, work_dir) -> Daemon; stop_all(daemons)
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryodiscovery.federation.config import NODE_CONFIG_KEY, load_facility_config

log = logging.getLogger(__name__)

#: The Flower App folder ``flwr run`` bundles. It holds only a pyproject.toml: the
#: ServerApp and ClientApp are imported from the installed ``cryodiscovery`` package.
APP_DIR = Path(__file__).resolve().parent / "flwr_app"


@dataclass(frozen=True)
class SuperLinkSpec:
    """The server's SuperLink.

    ``state_dir`` holds its database, Flower home, SuperExec secret and logs;
    ``host``/``port`` is the loopback address nginx forwards to; ``task_poll_s`` is how
    often its SuperExec asks for a ServerApp to start (Flower's default, 1 s: every ask
    is a write to the SQLite database, and a faster pace caused "database is locked"
    errors on a loaded host, while it saves at most a second per run).
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    task_poll_s: float = 1.0


@dataclass(frozen=True)
class SuperNodeSpec:
    """One facility's SuperNode.

    ``superlink`` is the ``host:port`` of the server's nginx; ``runtime_port`` its
    loopback Runtime API (distinct per SuperNode on one host); ``max_wait_s`` bounds
    reconnection attempts (None: keep trying, e.g. through a SuperLink restart);
    ``task_poll_s`` is how often its SuperExec asks for a ClientApp to start (its state
    is in memory, so a fast pace costs little; Flower's default is 1 s per message).
    """

    name: str
    superlink: str
    ca_cert: Path
    private_key: Path
    facility_config: Path
    state_dir: Path
    runtime_port: int = 9094
    max_wait_s: float | None = None
    task_poll_s: float = 0.2


def supernode_spec(
    facility_yaml: Path,
    state_dir: Path,
    runtime_port: int = 9094,
    max_wait_s: float | None = None,
) -> SuperNodeSpec:
    """A facility's SuperNode from its ``federation.yaml`` (address, CA, key).

    Raises
    ------
    InputError
        The file is invalid; ``ValueError`` when federation is not enabled in it.
    """
    cfg = load_facility_config(facility_yaml)
    if not cfg.enabled or cfg.ca_certificate is None or cfg.node_private_key is None:
        raise ValueError(f"{cfg.source}: federation is not enabled")
    return SuperNodeSpec(
        name=cfg.source.parent.name or "supernode",
        superlink=cfg.superlink,
        ca_cert=cfg.ca_certificate,
        private_key=cfg.node_private_key,
        facility_config=cfg.source,
        state_dir=state_dir,
        runtime_port=runtime_port,
        max_wait_s=max_wait_s,
    )


def flower_script(name: str) -> str:
    """Path of a Flower console script beside the running interpreter, else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install flwr in this environment")
    return found


def flower_env(flwr_home: Path, task_poll_s: float = 1.0) -> dict[str, str]:
    """Environment of a Flower process: telemetry off, its own Flower home, this
    interpreter's scripts first on PATH (a SuperExec starts ``flwr-clientapp`` and
    ``flwr-serverapp`` by name) and the SuperExec task poll interval."""
    env = dict(os.environ)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_HOME=str(flwr_home),
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL=str(task_poll_s),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


def _secret(state_dir: Path) -> Path:
    """The SuperExec secret shared by a SuperLink/SuperNode and its SuperExec."""
    path = state_dir / "superexec.secret"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(secrets.token_bytes(32))
    return path


def superlink_commands(spec: SuperLinkSpec) -> list[tuple[str, list[str]]]:
    """``[("superlink", argv), ("superlink-exec", argv)]``, started in this order."""
    secret = str(_secret(spec.state_dir))
    # fmt: off
    link = [flower_script("flower-superlink"),
            "--ssl-ca-certfile", str(spec.ca_cert),
            "--ssl-certfile", str(spec.server_cert),
            "--ssl-keyfile", str(spec.server_key),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(spec.state_dir / "superlink.db"),
            "--host", spec.host, "--port", str(spec.port),
            "--isolation", "process", "--superexec-auth-secret-file", secret]
    exe = [flower_script("flower-superexec"),
           "--runtime-api-address", f"{spec.host}:{spec.port}",
           "--root-certificates", str(spec.ca_cert),
           "--superexec-auth-secret-file", secret]
    # fmt: on
    return [("superlink", link), ("superlink-exec", exe)]


def supernode_commands(spec: SuperNodeSpec) -> list[tuple[str, list[str]]]:
    """``[(name, flower-supernode argv), (name-exec, flower-superexec argv)]``."""
    secret = str(_secret(spec.state_dir))
    # fmt: off
    node = [flower_script("flower-supernode"),
            "--superlink", spec.superlink,
            "--root-certificates", str(spec.ca_cert),
            "--auth-supernode-private-key", str(spec.private_key),
            "--node-config", f'{NODE_CONFIG_KEY}="{spec.facility_config}"',
            "--isolation", "process", "--superexec-auth-secret-file", secret,
            "--host", "127.0.0.1", "--port", str(spec.runtime_port)]
    if spec.max_wait_s is not None:
        node += ["--max-wait-time", str(spec.max_wait_s)]
    exe = [flower_script("flower-superexec"),
           "--runtime-api-address", f"127.0.0.1:{spec.runtime_port}", "--insecure",
           "--superexec-auth-secret-file", secret]
    # fmt: on
    return [(spec.name, node), (f"{spec.name}-exec", exe)]


class Daemon:
    """A long-running process in its own session (process group)."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path):
        self.name, self.proc, self.log_path = name, proc, log_path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def signal(self, sig: int) -> None:
        """Send ``sig`` to its whole process group (nothing if the group is gone)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM to the group, SIGKILL after ``timeout_s``; the exit code.

        The group is killed in any case, so no ClientApp/ServerApp process started
        by it outlives it.
        """
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s: killed", self.name, timeout_s)
        self.signal(signal.SIGKILL)
        return self.proc.wait(timeout=timeout_s)


def start_daemon(
    name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Daemon:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env if env is not None else os.environ),
            start_new_session=True,
        )
    log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
    return Daemon(name, proc, log_path)


def wait_for_http(
    url: str, daemon: Daemon, timeout_s: float = 60.0, ca_file: Path | None = None
) -> None:
    """Poll ``url`` until it answers.

    Raises
    ------
    RuntimeError
        ``daemon`` exited (with the end of its log) or ``timeout_s`` passed.
    """
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"{daemon.name} exited: {daemon.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5, context=ctx):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{daemon.name}: {url} not answering after {timeout_s:.0f} s")


def _start_pair(
    commands: list[tuple[str, list[str]]],
    state_dir: Path,
    env: Mapping[str, str],
    ready_url: str,
    ca_file: Path | None,
    timeout_s: float,
) -> list[Daemon]:
    """Start the server process, wait until ``ready_url`` answers, then its SuperExec
    (started earlier it backs off for up to a minute) under a restart loop: flwr 1.41's
    SuperExec exits on the first HTTP 500 from the Runtime API (e.g. SQLite "database
    is locked" on a busy SuperLink), after which no run would ever start."""
    (name, argv), (exe_name, exe_argv) = commands
    daemons = [start_daemon(name, argv, state_dir / f"{name}.log", env)]
    try:
        wait_for_http(ready_url, daemons[0], timeout_s, ca_file)
        log_path = state_dir / f"{exe_name}.log"
        daemons.append(start_daemon(exe_name, _restarting(exe_argv), log_path, env))
    except BaseException:
        stop_all(daemons)
        raise
    return daemons


def _restarting(argv: Sequence[str], pause_s: float = 2.0) -> list[str]:
    """``argv`` run again whenever it exits (what systemd's ``Restart=always`` does);
    the arguments are passed to the shell as ``$@``, never parsed from a string."""
    loop = f'while :; do "$@"; echo "restarting $1 in {pause_s:g} s" >&2; sleep {pause_s:g}; done'
    return ["/bin/sh", "-c", loop, "restart-loop", *argv]


def start_superlink(spec: SuperLinkSpec, timeout_s: float = 120.0) -> list[Daemon]:
    """Start the SuperLink and its SuperExec; returns both (stop with :func:`stop_all`)."""
    env = flower_env(spec.state_dir / "flwr-home", spec.task_poll_s)
    url = f"https://{spec.host}:{spec.port}/health"
    return _start_pair(
        superlink_commands(spec), spec.state_dir, env, url, spec.ca_cert, timeout_s
    )


def start_supernode(spec: SuperNodeSpec, timeout_s: float = 120.0) -> list[Daemon]:
    """Start the facility's site worker (when its federation.yaml names a
    ``worker_socket``), then a SuperNode and its SuperExec; returns [SuperNode,
    SuperExec(, worker)] (stop with :func:`stop_all`).

    Whether the SuperLink accepted the node shows in the Control API
    (:func:`~cryodiscovery.federation.control.wait_for_nodes`); a refused node exits.
    """
    env = flower_env(spec.state_dir / "flwr-home", spec.task_poll_s)
    url = f"http://127.0.0.1:{spec.runtime_port}/health"
    workers: list[Daemon] = []
    if load_facility_config(spec.facility_config).worker_socket is not None:
        workers.append(start_worker(spec, timeout_s))
    try:
        pair = _start_pair(
            supernode_commands(spec), spec.state_dir, env, url, None, timeout_s
        )
    except BaseException:
        stop_all(workers)
        raise
    return [*pair, *workers]


def worker_command(facility_config: Path) -> list[str]:
    """``cryodiscovery federation worker --config FILE`` (the installed script)."""
    return [
        flower_script("cryodiscovery"),
        "federation",
        "worker",
        "--config",
        str(facility_config),
    ]


def start_worker(spec: SuperNodeSpec, timeout_s: float = 120.0) -> Daemon:
    """Start the facility's site worker and wait until it listens (it harvests and
    loads torch first)."""
    name = f"{spec.name}-worker"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    daemon = start_daemon(
        name, worker_command(spec.facility_config), spec.state_dir / f"{name}.log", env
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"{name} exited: {daemon.log_text()[-3000:]}")
        if "site worker listening on" in daemon.log_text():
            return daemon
        time.sleep(0.2)
    daemon.stop()
    raise RuntimeError(f"{name} not listening after {timeout_s:.0f} s")


def start_nginx(conf: Path, work_dir: Path, timeout_s: float = 30.0) -> Daemon:
    """Run ``nginx -c conf`` in the foreground and wait until it accepts connections
    (on the first ``listen`` address of ``conf``)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        nginx,
        "-c",
        str(conf),
        "-p",
        str(work_dir),
        "-e",
        str(work_dir / "error.log"),
    ]
    daemon = start_daemon("nginx", argv, work_dir / "nginx.out")
    listen = next(
        line.split()[1]
        for line in conf.read_text().splitlines()
        if line.strip().startswith("listen ")
    )
    host, port = listen.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not daemon.alive():
            error_log = (work_dir / "error.log").read_text(errors="replace")
            raise RuntimeError(f"nginx exited: {daemon.log_text()} {error_log}")
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return daemon
        except OSError:
            time.sleep(0.1)
    daemon.stop()
    raise RuntimeError(f"nginx not listening on {listen} after {timeout_s:.0f} s")


def stop_all(daemons: Sequence[Daemon], timeout_s: float = 10.0) -> None:
    """Stop ``daemons`` in reverse start order; a failure to stop one is logged and the
    others are still stopped."""
    for daemon in reversed(daemons):
        try:
            daemon.stop(timeout_s)
        except Exception:
            log.exception("stopping %s failed", daemon.name)
