"""A TEST DOUBLE of a cryoSPARC v5 server's API: a small in-memory fake that the unmodified
cryosparc-tools 5 client talks to over a real socket on 127.0.0.1.

It is not cryoSPARC. It serves only the operations cryodiscovery uses (see
``fake_cryosparc_http.ROUTES``) and enforces the rules a real server is known to enforce:
a bearer token on every call but login/health (401 otherwise), 404 for unknown projects,
workspaces, jobs, outputs and files, 422 for requests that fail validation (missing query
or body fields, a body that is not the declared model, a dataset that lacks the fields its
output's slots require), a source output missing the slots an input requires, and no
saving of outputs unless the External job is running or waiting (409). Every call is
recorded in :attr:`FakeCryosparc.calls` for tests to inspect. What only a real server can
prove (its exact status codes and messages, job-register field lists, passthrough joins on
disk, the web UI) is listed in the project README.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from cryosparc.dataset import Dataset
from cryosparc.models.job import Job
from cryosparc.models.job_spec import (
    Inputs,
    JobSpec,
    Output,
    OutputResult,
    Outputs,
    Params,
    ResourceSpec,
)
from cryosparc.models.project import Project
from cryosparc.models.workspace import Workspace
from fake_cryosparc_http import (
    FakeHTTPError,
    encode_result,
    openapi_schema,
    parse_body,
    route_request,
)
from fake_cryosparc_ops import NOW, SLOT_FIELDS, TEMPLATE_BLOB, FakeOperations

STATUS_NUM = {
    "building": 5,
    "running": 20,
    "waiting": 25,
    "completed": 30,
    "failed": 40,
}


@dataclass
class Call:
    """One recorded API call."""

    summary: str
    params: dict[str, str]
    query: dict[str, Any]
    body: Any = None


@dataclass
class FakeCryosparc(FakeOperations):
    """In-memory cryoSPARC state plus the operations on it (the TEST DOUBLE).

    ``mode``: ``"v5"`` serves the API; ``"absent"`` answers 404 everywhere and ``"html"``
    answers an HTML page everywhere (what a v4 web app or another service looks like to
    a v5 client).
    """

    version: str = "v5.0.3"
    mode: str = "v5"
    users: dict[str, str] = field(default_factory=dict)  # email -> sha256(password)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> email
    projects: dict[str, Project] = field(default_factory=dict)
    workspaces: dict[tuple[str, str], Workspace] = field(default_factory=dict)
    jobs: dict[tuple[str, str], Job] = field(default_factory=dict)
    datasets: dict[tuple[str, str, str], Dataset] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    assets: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    events: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ---- seeding --------------------------------------------------------------------
    def add_user(self, email: str, password: str) -> None:
        self.users[email] = hashlib.sha256(password.encode()).hexdigest()

    def add_token(self, token: str, email: str) -> None:
        self.tokens[token] = email

    def add_project(self, puid: str, workspaces: tuple[str, ...] = ("W1",)) -> None:
        num = int(puid[1:])
        self.projects[puid] = Project(
            uid=puid,
            uid_num=num,
            title=f"Project {puid}",
            project_dir=f"/data/{puid}",
            owner_user_id="u1",
            size_last_updated=NOW,
        )
        for wuid in workspaces:
            self.workspaces[(puid, wuid)] = Workspace(
                uid=wuid,
                project_uid=puid,
                workspace_type="base",
                uid_num=int(wuid[1:]),
                project_uid_num=num,
            )

    def add_job(
        self,
        puid: str,
        wuid: str,
        jtype: str,
        *,
        status: str = "completed",
        outputs: dict[str, tuple[str, Dataset]] | None = None,
        new_slots: tuple[str, ...] = ("blob", "alignments2D"),
    ) -> str:
        """Add a finished job whose outputs hold ``outputs[name] = (type, dataset)``."""
        juid = self._next_job_uid(puid)
        spec_outputs: dict[str, Output] = {}
        for name, (otype, dset) in (outputs or {}).items():
            results = [
                OutputResult(
                    name=prefix,
                    dtype=prefix,
                    versions=[0],
                    metafiles=[f"{juid}/{name}.cs"],
                    num_items=[len(dset)],
                    passthrough=prefix not in new_slots,
                )
                for prefix in dset.prefixes()
            ]
            spec_outputs[name] = Output(
                type=otype, title=name, results=results, num_items=len(dset)
            )
            self.datasets[(puid, juid, name)] = dset
        self.jobs[(puid, juid)] = self._job(
            puid, wuid, juid, jtype, status, Outputs(spec_outputs)
        )
        return juid

    def add_file(self, puid: str, path: str, data: bytes) -> None:
        self.files[(puid, path)] = data

    # ---- HTTP entry -----------------------------------------------------------------
    def http(
        self, method: str, path: str, query: str, raw: bytes, headers: Any
    ) -> tuple[bytes, str]:
        """Answer one request; raises ``FakeHTTPError`` for error responses."""
        if self.mode == "html":
            return b"<html><body>cryoSPARC</body></html>", "text/html"
        if self.mode == "absent":
            raise FakeHTTPError(404, "Not Found")
        if path == "/api/cmd/openapi.json" and method == "get":
            return json.dumps(openapi_schema(self.version)).encode(), "application/json"
        route, params, q = route_request(method, path, query)
        if not route.public:
            self._authorize(headers.get("Authorization", ""))
        body = parse_body(route, raw, headers.get("Content-Type", ""))
        self.calls.append(Call(route.summary, params, q, body))
        handler = getattr(self, "op_" + route.summary.replace(".", "_"))
        return encode_result(route, handler(params, q, body))

    def _authorize(self, header: str) -> None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            raise FakeHTTPError(401, "Not authenticated")

    def summaries(self) -> list[str]:
        """The summaries of all recorded calls, in order."""
        return [c.summary for c in self.calls]

    # ---- lookups --------------------------------------------------------------------
    def _next_job_uid(self, puid: str) -> str:
        return f"J{sum(1 for p, _ in self.jobs if p == puid) + 1}"

    def _job(
        self, puid: str, wuid: str, juid: str, jtype: str, status: str, outputs: Outputs
    ) -> Job:
        spec = JobSpec(
            type=jtype,
            params=Params(),
            inputs=Inputs({}),
            outputs=outputs,
            ui_tile_width=1,
            ui_tile_height=1,
            resource_spec=ResourceSpec(),
        )
        return Job(
            _id=f"{next(self._ids):024x}",
            uid=juid,
            uid_num=int(juid[1:]),
            project_uid=puid,
            project_uid_num=int(puid[1:]),
            workspace_uids=[wuid],
            job_dir=juid,
            status=status,
            status_num=STATUS_NUM[status],
            spec=spec,
            build_errors=[],
            job_dir_size_last_updated=NOW,
        )

    def project(self, puid: str) -> Project:
        if puid not in self.projects:
            raise FakeHTTPError(404, f"Project {puid} not found")
        return self.projects[puid]

    def job(self, puid: str, juid: str) -> Job:
        self.project(puid)
        if (puid, juid) not in self.jobs:
            raise FakeHTTPError(404, f"Job {juid} not found in project {puid}")
        return self.jobs[(puid, juid)]

    def external(self, p: dict[str, str], statuses: tuple[str, ...]) -> Job:
        job = self.job(p["project_uid"], p["job_uid"])
        if job.spec.type != "snowflake":
            raise FakeHTTPError(422, f"Job {job.uid} is not an External job")
        if job.status not in statuses:
            raise FakeHTTPError(
                409,
                f"Job {job.uid} is {job.status}; this needs {' or '.join(statuses)}",
            )
        return job

    def _set_status(self, job: Job, status: str) -> Job:
        job.status = status  # type: ignore[assignment]
        job.status_num = STATUS_NUM[status]
        return job

    def _log(self, p: dict[str, str], kind: str, **event: Any) -> dict[str, Any]:
        entry = {"id": f"{next(self._ids):024x}", "type": kind, **event}
        self.events.setdefault((p["project_uid"], p["job_uid"]), []).append(entry)
        return entry


__all__ = ["SLOT_FIELDS", "TEMPLATE_BLOB", "Call", "FakeCryosparc"]
