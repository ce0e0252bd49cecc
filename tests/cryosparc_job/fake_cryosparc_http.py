"""HTTP layer of the cryoSPARC v5 API TEST DOUBLE: the route table, the ``openapi.json``
built from it, and a threaded server on 127.0.0.1.

cryosparc-tools 5 builds its client from ``/api/cmd/openapi.json``: every operation's
``summary`` is the Python name (``"jobs.save_output"``), parameters are path, query or
header, and the body is JSON, a form or a binary stream (datasets as
``application/x-cryosparc-dataset``). Only the operations cryodiscovery uses are served;
the URL paths are this double's own (the client takes them from ``openapi.json``, so any
consistent paths work). Errors are JSON ``{"detail": ...}`` like FastAPI's, with 422 for
request validation failures.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryosparc.dataset import Dataset
from cryosparc.models.asset import GridFSAsset
from cryosparc.models.job_spec import InputSpec, OutputSpec
from pydantic import BaseModel, ValidationError

API_PREFIX = "/api/cmd"
DATASET_MIME = "application/x-cryosparc-dataset"
STREAM_MIME = "application/octet-stream"


class FakeHTTPError(Exception):
    """An error response: ``status`` and a JSON-able ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Query:
    name: str
    kind: str = "string"  # "string" | "integer" | "boolean" | "array" | "slots"
    required: bool = False


@dataclass(frozen=True)
class Body:
    kind: str  # "json" | "form" | "dataset" | "stream"
    title: str
    model: type[BaseModel] | None = None
    many: bool = False  # a JSON list of ``model``
    required: bool = True
    form_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    summary: str
    method: str
    path: str
    query: tuple[Query, ...] = ()
    body: Body | None = None
    response: str = "Job"  # a model name, "string", "fields", "dataset" or "stream"
    public: bool = False  # no token needed
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)
        object.__setattr__(self, "regex", re.compile(f"^{pattern}$"))

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


J = "/jobs/{project_uid}/{job_uid}"
ROUTES: tuple[Route, ...] = (
    Route("health", "get", "/health", response="string", public=True),
    Route(
        "login",
        "post",
        "/login",
        body=Body(
            "form",
            "Body_login",
            form_fields=("grant_type", "username", "password", "expires_in"),
        ),
        response="Token",
        public=True,
    ),
    Route("users.me", "get", "/users/me", response="User"),
    Route("config.get_version", "get", "/config/version", response="string"),
    Route("projects.find_one", "get", "/projects/{project_uid}", response="Project"),
    Route(
        "projects.download_file",
        "get",
        "/projects/{project_uid}/file",
        query=(Query("path", required=True),),
        response="stream",
    ),
    Route(
        "workspaces.find_one",
        "get",
        "/workspaces/{project_uid}/{workspace_uid}",
        response="Workspace",
    ),
    Route("jobs.find_one", "get", J),
    Route(
        "jobs.create",
        "post",
        "/jobs/{project_uid}/{workspace_uid}",
        query=(Query("type", required=True), Query("title"), Query("description")),
        body=Body("json", "Params", required=False),
    ),
    Route(
        "jobs.add_external_input",
        "post",
        J + "/external/inputs/{input_name}",
        body=Body("json", "Body", InputSpec),
    ),
    Route(
        "jobs.add_external_output",
        "post",
        J + "/external/outputs/{output_name}",
        body=Body("json", "Body", OutputSpec),
    ),
    Route(
        "jobs.connect",
        "post",
        J + "/connect/{input_name}",
        query=(
            Query("source_job_uid", required=True),
            Query("source_output_name", required=True),
        ),
    ),
    Route(
        "jobs.get_output_fields",
        "post",
        J + "/outputs/{output_name}/fields",
        body=Body("json", "Dtype Params", required=False),
        response="fields",
    ),
    Route(
        "jobs.load_output",
        "get",
        J + "/outputs/{output_name}/dataset",
        query=(Query("version"), Query("slots", "slots")),
        response="dataset",
    ),
    Route(
        "jobs.save_output",
        "post",
        J + "/outputs/{output_name}/dataset",
        query=(Query("filename"), Query("version", "integer")),
        body=Body("dataset", "Dataset"),
    ),
    Route(
        "jobs.mark_running",
        "post",
        J + "/status/running",
        query=(Query("status"),),
    ),
    Route("jobs.mark_completed", "post", J + "/status/completed"),
    Route("jobs.mark_failed", "post", J + "/status/failed", query=(Query("error"),)),
    Route(
        "jobs.add_event_log",
        "post",
        J + "/events/text",
        query=(Query("type"),),
        body=Body("json", "Text"),
        response="TextEvent",
    ),
    Route(
        "jobs.add_image_log",
        "post",
        J + "/events/image",
        query=(Query("text", required=True), Query("flags", "array")),
        body=Body("json", "Images", GridFSAsset, many=True),
        response="ImageEvent",
    ),
    Route(
        "assets.upload",
        "post",
        "/assets/{project_uid}/{job_uid}",
        query=(Query("filename"), Query("format")),
        body=Body("stream", "Stream"),
        response="GridFSAsset",
    ),
    Route(
        "jobs.set_output_image",
        "post",
        J + "/outputs/{output_name}/image",
        body=Body("json", "Body", GridFSAsset),
    ),
    Route(
        "jobs.set_tile_image",
        "post",
        J + "/tile_image",
        body=Body("json", "Body", GridFSAsset),
    ),
)


def _json_response(kind: str) -> dict[str, Any]:
    if kind == "string":
        schema: dict[str, Any] = {"type": "string"}
    elif kind == "fields":
        pair = {"type": "array", "prefixItems": [{"type": "string"}] * 2}
        schema = {"type": "array", "items": pair}
    else:
        schema = {"$ref": f"#/components/schemas/{kind}"}
    return {
        "description": "Successful Response",
        "content": {"application/json": {"schema": schema}},
    }


def _operation(route: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
        for p in route.path_params
    ]
    for q in route.query:
        params.append(
            {"name": q.name, "in": "query", "required": q.required, "schema": {}}
        )
    op: dict[str, Any] = {"summary": route.summary, "parameters": params}
    if route.body is not None:
        b = route.body
        mime = {
            "json": "application/json",
            "form": "application/x-www-form-urlencoded",
            "dataset": DATASET_MIME,
            "stream": STREAM_MIME,
        }[b.kind]
        op["requestBody"] = {
            "required": b.required,
            "content": {mime: {"schema": {"title": b.title}}},
        }
    if route.response == "dataset":
        ok: dict[str, Any] = {
            "content": {DATASET_MIME: {"schema": {"title": "Dataset"}}}
        }
    elif route.response == "stream":
        ok = {"content": {STREAM_MIME: {"schema": {"title": "Stream"}}}}
    else:
        ok = _json_response(route.response)
    invalid = {
        "description": "Validation Error",
        "content": {"application/json": {"schema": {"title": "HTTPValidationError"}}},
    }
    op["responses"] = {"200": ok, "422": invalid}
    return op


def openapi_schema(version: str) -> dict[str, Any]:
    """The ``openapi.json`` document for :data:`ROUTES`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "cryoSPARC API (test double)", "version": version},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _convert(q: Query, values: list[str]) -> Any:
    if q.kind == "array":
        return values
    if q.kind == "slots":
        keywords = {"default", "passthrough", "all"}
        return values[0] if len(values) == 1 and values[0] in keywords else values
    value = values[-1]
    if q.kind == "integer":
        try:
            return int(value)
        except ValueError:
            raise FakeHTTPError(422, _missing("query", q.name, "int_parsing")) from None
    return value


def _missing(where: str, name: str, kind: str = "missing") -> list[dict[str, Any]]:
    return [{"type": kind, "loc": [where, name], "msg": "Field required"}]


def parse_body(route: Route, raw: bytes, content_type: str) -> Any:
    """Decode and validate a request body; 422 like FastAPI when it does not fit."""
    b = route.body
    if b is None:
        return None
    if not raw:
        if b.required:
            raise FakeHTTPError(422, _missing("body", b.title))
        return None
    if b.kind == "dataset":
        try:
            return Dataset.load(io.BytesIO(raw))
        except Exception as err:
            raise FakeHTTPError(422, f"body is not a dataset: {err}") from err
    if b.kind == "stream":
        return raw
    if b.kind == "form":
        form = urllib.parse.parse_qs(raw.decode(), keep_blank_values=True)
        return {k: v[-1] for k, v in form.items()}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise FakeHTTPError(422, f"invalid JSON body: {err}") from err
    if b.model is None:
        return data
    try:
        if b.many:
            return [b.model.model_validate(item) for item in data]
        return b.model.model_validate(data)
    except ValidationError as err:
        errors = json.loads(err.json(include_url=False))
        raise FakeHTTPError(422, errors) from err


def _encode(route: Route, result: Any) -> tuple[bytes, str]:
    if route.response == "dataset":
        return b"".join(result.stream()), DATASET_MIME
    if route.response == "stream":
        return bytes(result), STREAM_MIME
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json", by_alias=True)
    return json.dumps(result).encode(), "application/json"


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


Dispatch = Callable[[Route, dict[str, str], dict[str, Any], Any, str | None], Any]


def make_handler(app: Any) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``app`` (a :class:`FakeCryosparc`)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 1 << 16  # one send per response: no delayed-ACK stall on localhost
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _reply(self, status: int, payload: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                return _read_chunked(self.rfile)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self, method: str) -> None:
            raw = self._body()
            url = urllib.parse.urlsplit(self.path)
            try:
                payload, ctype = app.http(
                    method, url.path, url.query, raw, self.headers
                )
                self._reply(200, payload, ctype)
            except FakeHTTPError as err:
                body = json.dumps({"detail": err.detail}, default=str).encode()
                self._reply(err.status, body, "application/json")

        def do_GET(self) -> None:
            self._handle("get")

        def do_POST(self) -> None:
            self._handle("post")

    return Handler


def route_request(
    method: str, path: str, query_string: str
) -> tuple[Route, dict[str, str], dict[str, Any]]:
    """Find the route for ``method path`` and decode its path and query parameters."""
    if not path.startswith(API_PREFIX):
        raise FakeHTTPError(404, "Not Found")
    sub = path[len(API_PREFIX) :]
    for route in ROUTES:
        match = route.regex.match(sub)
        if match and route.method == method:
            params = {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
            given = urllib.parse.parse_qs(query_string, keep_blank_values=True)
            query: dict[str, Any] = {}
            for q in route.query:
                if q.name in given:
                    query[q.name] = _convert(q, given[q.name])
                elif q.required:
                    raise FakeHTTPError(422, _missing("query", q.name))
            return route, params, query
    raise FakeHTTPError(404, "Not Found")


def encode_result(route: Route, result: Any) -> tuple[bytes, str]:
    """Serialise a handler's result for ``route``."""
    return _encode(route, result)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(app))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
