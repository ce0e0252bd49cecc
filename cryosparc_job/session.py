"""Connect to a cryoSPARC instance with the installed cryosparc-tools, and turn what the
client raises into one-line messages.

cryosparc-tools 5 (cryoSPARC v5) talks to ``<url>/api/cmd`` with a token saved by
``python -m cryosparc.tools login`` or with an email and password. cryosparc-tools 4.x
(cryoSPARC v4.x) talks to the command services at ``host:base_port+2/+3`` with the
instance's license ID, an email and a password. The client's major.minor version must
match the server's.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import cryosparc
from cryodiscovery.core.errors import InputError

log = logging.getLogger(__name__)

TOOLS_VERSION: str = cryosparc.__version__
LOGIN_HINT = "run `python -m cryosparc.tools login --url URL` or set CRYOSPARC_EMAIL and CRYOSPARC_PASSWORD"


class ServerError(RuntimeError):
    """The server could not be reached or answered an unexpected error (one line)."""


@dataclass(frozen=True)
class ServerConfig:
    """Where and how to connect. Secrets are kept out of ``repr``.

    ``url`` (cryoSPARC v5, e.g. ``http://host:39000``) or ``host`` + ``base_port``;
    ``email`` + ``password`` (both or neither: neither uses the token saved by
    ``python -m cryosparc.tools login``); ``license`` only for cryosparc-tools 4.x.
    """

    url: str | None = None
    host: str | None = None
    base_port: int | None = None
    email: str | None = None
    password: str | None = field(default=None, repr=False)
    license: str | None = field(default=None, repr=False)
    timeout: float = 300.0

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the web app (the URL a browser opens)."""
        if self.url:
            url = self.url if "://" in self.url else f"http://{self.url}"
            return url.rstrip("/")
        return f"http://{self.host or 'localhost'}:{self.base_port or 39000}"


def tools_major() -> int:
    """Major version of the installed cryosparc-tools (4 or 5)."""
    return int(TOOLS_VERSION.split(".")[0])


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None  # "develop" and the like


def _client_kwargs(config: ServerConfig) -> dict[str, Any]:
    if bool(config.email) != bool(config.password):
        raise InputError(None, "give both the cryoSPARC email and password, or neither")
    if tools_major() >= 5:
        kwargs: dict[str, Any] = {
            "base_url": config.base_url,
            "host": None,
            "base_port": None,
            "email": config.email,
            "password": config.password,
            "timeout": int(config.timeout),
        }
        return kwargs
    if config.url and not config.host:
        raise InputError(
            None,
            f"cryosparc-tools {TOOLS_VERSION} (cryoSPARC v4) needs --host and --base-port, not --url",
        )
    missing = [
        n for n, v in (("license", config.license), ("email", config.email)) if not v
    ]
    if missing:
        raise InputError(
            None,
            f"cryosparc-tools {TOOLS_VERSION} (cryoSPARC v4) needs the {' and '.join(missing)} (CRYOSPARC_LICENSE_ID, CRYOSPARC_EMAIL, CRYOSPARC_PASSWORD)",
        )
    return {
        "license": config.license,
        "host": config.host or "localhost",
        "base_port": config.base_port or 39000,
        "email": config.email,
        "password": config.password,
        "timeout": int(config.timeout),
    }


def api_detail(err: BaseException) -> str:
    """One line from a cryosparc-tools error: ``HTTP <code>: <detail>`` when there is one."""
    code = getattr(err, "code", None)
    data = getattr(err, "data", None)
    detail: Any = data.get("detail", data) if isinstance(data, dict) else data
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', d)}"
            if isinstance(d, dict)
            else str(d)
            for d in detail
        )
    elif isinstance(detail, dict):
        detail = json.dumps(detail)
    text = str(detail) if detail else str(err).strip().splitlines()[0]
    return " ".join(f"HTTP {code}: {text}".split()) if code else " ".join(text.split())


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes, outermost first."""
    out = [err]
    while out[-1].__cause__ is not None and len(out) < 10:
        out.append(out[-1].__cause__)  # type: ignore[arg-type]
    return out


def _http_failure(err: BaseException) -> tuple[bool, int | None]:
    """(the request never reached a server, HTTP status of a raw httpx error)."""
    try:
        import httpx  # cryosparc-tools 5 uses httpx; 4.x uses urllib
    except ImportError:  # pragma: no cover - only without httpx
        transport: tuple[type[BaseException], ...] = (ConnectionError,)
        status_error = None
    else:
        transport, status_error = (
            (httpx.TransportError, ConnectionError),
            httpx.HTTPStatusError,
        )
    for e in _chain(err):
        if isinstance(e, transport) or "URL Error" in str(e):  # 4.x: urllib URLError
            return True, None
        if status_error is not None and isinstance(e, status_error):
            return False, e.response.status_code
    return False, None


def _connection_error(err: Exception, url: str) -> Exception:
    """Translate what ``CryoSPARC(...)`` raised into an InputError or a ServerError."""
    cause: BaseException = err.__cause__ or err
    unreachable, status = _http_failure(cause)
    code = status or getattr(cause, "code", None)
    if unreachable:
        return ServerError(
            f"cannot reach cryoSPARC at {url}: {cause or type(cause).__name__}"
        )
    if code in (401, 403) or (tools_major() < 5 and "authentication" in str(err)):
        return InputError(
            None,
            f"cryoSPARC at {url} rejected the credentials ({api_detail(cause)}); {LOGIN_HINT}",
        )
    if status is not None or "JSON" in str(cause):
        return ServerError(
            f"{url} does not serve the cryoSPARC v5 API ({url}/api/cmd/openapi.json: "
            f"{'HTTP ' + str(code) if code else 'not JSON'}); cryosparc-tools {TOOLS_VERSION} "
            "needs cryoSPARC v5 (for cryoSPARC v4.7 install cryosparc-tools~=4.7.0 and use "
            "--host, --base-port and CRYOSPARC_LICENSE_ID)"
        )
    if isinstance(err, ValueError) and "authentication" in str(err):
        return InputError(None, f"no cryoSPARC credentials for {url}: {LOGIN_HINT}")
    if isinstance(err, AssertionError):  # cryosparc-tools 4.x argument checks
        return InputError(None, f"cryoSPARC connection settings: {err}")
    return ServerError(f"cannot connect to cryoSPARC at {url}: {api_detail(cause)}")


def check_versions(server_version: str) -> None:
    """Fail when the server's major version differs from cryosparc-tools'; warn on minor."""
    server, tools = _major_minor(server_version), _major_minor(TOOLS_VERSION)
    if server is None or tools is None or server == tools:
        return
    advice = f"pip install 'cryosparc-tools~={server[0]}.{server[1]}.0'"
    if server[0] != tools[0]:
        raise ServerError(
            f"cryoSPARC {server_version} needs cryosparc-tools {server[0]}.{server[1]}, "
            f"but {TOOLS_VERSION} is installed: {advice}"
        )
    log.warning(
        "cryoSPARC %s and cryosparc-tools %s differ in minor version; if a call fails, %s",
        server_version,
        TOOLS_VERSION,
        advice,
    )


def server_version(cs: Any) -> str:
    """The server's version string (``"v5.0.3"``), or ``""`` when it does not say."""
    try:
        if tools_major() >= 5:
            return str(cs.api.config.get_version() or "")
        return str(cs.cli.get_running_version() or "")
    except Exception as err:  # the version is advisory: never fail the run on it
        log.debug("could not read the server version: %s", err)
        return ""


def connect(config: ServerConfig) -> Any:
    """A logged-in ``cryosparc.tools.CryoSPARC`` for ``config``.

    Raises
    ------
    InputError
        Missing or rejected credentials, or options that do not fit the installed
        cryosparc-tools.
    ServerError
        Unreachable server, no cryoSPARC API at the URL, or a server version that this
        cryosparc-tools cannot talk to.
    """
    from cryosparc.tools import CryoSPARC

    kwargs = _client_kwargs(config)
    url = config.base_url
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cs = CryoSPARC(**kwargs)
        except Exception as err:  # everything the client raises is translated
            raise _connection_error(err, url) from err
    for w in caught:
        log.debug("cryosparc-tools: %s", str(w.message).strip().splitlines()[0])
    check_versions(server_version(cs))
    log.info("connected to cryoSPARC at %s with cryosparc-tools %s", url, TOOLS_VERSION)
    return cs
