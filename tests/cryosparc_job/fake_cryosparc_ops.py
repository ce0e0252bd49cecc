"""Operations of the cryoSPARC v5 API TEST DOUBLE (see fake_cryosparc.py): one method
per served operation, ``op_<summary with dots as underscores>(path_params, query, body)``,
each enforcing what the real server is known to enforce for it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import numpy as np
from cryosparc.dataset import Dataset
from cryosparc.models.asset import GridFSAsset
from cryosparc.models.auth import Token
from cryosparc.models.event import ImageEvent, TextEvent
from cryosparc.models.job import Job, RunError, UiTileImage
from cryosparc.models.job_spec import (
    Connection,
    Input,
    InputResult,
    InputSlot,
    Output,
    OutputResult,
    Outputs,
    OutputSlot,
)
from cryosparc.models.project import Project
from cryosparc.models.user import Email, User
from cryosparc.models.workspace import Workspace
from fake_cryosparc_http import FakeHTTPError

NOW = datetime(2025, 1, 1, tzinfo=UTC)
NAME_RE = re.compile(r"^[A-Za-z][0-9A-Za-z_]*$")

#: Fields per result dtype that get_output_fields reports (cryoSPARC's slot layouts for
#: the dtypes the 2D selection outputs use).
SLOT_FIELDS: dict[str, list[tuple[str, str]]] = {
    "blob": [
        ("path", "O"),
        ("idx", "u4"),
        ("shape", "2u4"),
        ("psize_A", "f4"),
        ("sign", "f4"),
        ("import_sig", "u8"),
    ],
    "alignments2D": [
        ("split", "u4"),
        ("shift", "2f4"),
        ("pose", "f4"),
        ("psize_A", "f4"),
        ("error", "f4"),
        ("error_min", "f4"),
        ("resid_pow", "f4"),
        ("slice_pow", "f4"),
        ("image_pow", "f4"),
        ("cross_cor", "f4"),
        ("alpha", "f4"),
        ("alpha_min", "f4"),
        ("weight", "f4"),
        ("pose_ess", "f4"),
        ("shift_ess", "f4"),
        ("class_posterior", "f4"),
        ("class", "u4"),
        ("class_ess", "f4"),
    ],
}
#: Template blobs carry the class resolution as well.
TEMPLATE_BLOB = [
    ("path", "O"),
    ("idx", "u4"),
    ("shape", "2u4"),
    ("psize_A", "f4"),
    ("res_A", "f4"),
]


class FakeOperations:
    """The served operations; state and lookups come from :class:`FakeCryosparc`."""

    # provided by FakeCryosparc
    users: dict[str, str]
    tokens: dict[str, str]
    version: str
    jobs: dict[tuple[str, str], Job]
    datasets: dict[tuple[str, str, str], Dataset]
    files: dict[tuple[str, str], bytes]
    assets: dict[str, tuple[str, bytes]]

    def op_health(self, p: dict[str, str], q: dict[str, Any], body: Any) -> str:
        return "OK"

    def op_login(self, p: dict[str, str], q: dict[str, Any], body: Any) -> Token:
        form = body or {}
        for key in ("username", "password"):
            if not form.get(key):
                raise FakeHTTPError(
                    422,
                    [
                        {
                            "type": "missing",
                            "loc": ["body", key],
                            "msg": "Field required",
                        }
                    ],
                )
        if self.users.get(form["username"]) != form["password"]:
            raise FakeHTTPError(401, "Invalid email or password")
        token = f"token-{next(self._ids)}"
        self.tokens[token] = form["username"]
        return Token(access_token=token, token_type="bearer")

    def op_users_me(self, p: dict[str, str], q: dict[str, Any], body: Any) -> User:
        return User(
            _id="6372a35e821ed2b71d9fe4e3",
            name="tester",
            first_name="Testy",
            last_name="Tester",
            emails=[Email(address="test@example.com", verified=True)],
            created_at=NOW,
        )

    def op_config_get_version(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> str:
        return self.version

    def op_projects_find_one(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Project:
        return self.project(p["project_uid"])

    def op_projects_download_file(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> bytes:
        key = (self.project(p["project_uid"]).uid, q["path"].lstrip("/"))
        if key not in self.files:
            raise FakeHTTPError(404, f"File {q['path']} not found")
        return self.files[key]

    def op_workspaces_find_one(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Workspace:
        self.project(p["project_uid"])
        key = (p["project_uid"], p["workspace_uid"])
        if key not in self.workspaces:
            raise FakeHTTPError(
                404, f"Workspace {key[1]} not found in project {key[0]}"
            )
        return self.workspaces[key]

    def op_jobs_find_one(self, p: dict[str, str], q: dict[str, Any], body: Any) -> Job:
        return self.job(p["project_uid"], p["job_uid"])

    def op_jobs_create(self, p: dict[str, str], q: dict[str, Any], body: Any) -> Job:
        self.op_workspaces_find_one(p, q, body)
        if q["type"] != "snowflake":
            raise FakeHTTPError(
                422, f"the test double only creates External jobs, not {q['type']}"
            )
        puid = p["project_uid"]
        job = self._job(
            puid,
            p["workspace_uid"],
            self._next_job_uid(puid),
            "snowflake",
            "building",
            Outputs({}),
        )
        job.title = q.get("title", "")
        job.description = q.get("description", "")
        self.jobs[(puid, job.uid)] = job
        return job

    def op_jobs_add_external_input(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Job:
        job = self.external(p, ("building", "running", "waiting"))
        if not NAME_RE.match(p["input_name"]):
            raise FakeHTTPError(422, f"invalid input name {p['input_name']!r}")
        slots = [
            s if isinstance(s, InputSlot) else InputSlot(name=s, dtype=s, required=True)
            for s in body.slots
        ]
        job.spec.inputs.root[p["input_name"]] = Input(
            type=body.type,
            title=body.title,
            slots=slots,
            count_min=body.count_min,
            count_max=body.count_max,
        )
        return job

    def op_jobs_connect(self, p: dict[str, str], q: dict[str, Any], body: Any) -> Job:
        job = self.external(p, ("building", "running", "waiting"))
        target = job.spec.inputs.root.get(p["input_name"])
        if target is None:
            raise FakeHTTPError(404, f"Job {job.uid} has no input {p['input_name']}")
        source = self.job(p["project_uid"], q["source_job_uid"])
        output = source.spec.outputs.root.get(q["source_output_name"])
        if output is None:
            raise FakeHTTPError(
                404, f"Job {source.uid} has no output {q['source_output_name']}"
            )
        if output.type != target.type:
            raise FakeHTTPError(
                422, f"cannot connect {output.type} output to {target.type} input"
            )
        have = {r.name for r in output.results}
        missing = [s.name for s in target.slots if s.required and s.name not in have]
        if missing:
            raise FakeHTTPError(
                422, {"slots": missing, "message": "source output lacks required slots"}
            )
        results = [
            InputResult(
                name=r.name,
                dtype=r.dtype,
                job_uid=source.uid,
                output=q["source_output_name"],
                result=r.name,
            )
            for r in output.results
        ]
        target.connections.append(
            Connection(
                job_uid=source.uid, output=q["source_output_name"], results=results
            )
        )
        return job

    def op_jobs_add_external_output(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Job:
        job = self.external(p, ("building", "running", "waiting"))
        name = p["output_name"]
        if not NAME_RE.match(name):
            raise FakeHTTPError(422, f"invalid output name {name!r}")
        slots = [
            s if isinstance(s, OutputSlot) else OutputSlot(name=s, dtype=s)
            for s in body.slots
        ]
        results = [OutputResult(name=s.name, dtype=s.dtype) for s in slots]
        if body.passthrough:
            source = job.spec.inputs.root.get(body.passthrough)
            if source is None:
                raise FakeHTTPError(
                    422, f"passthrough input {body.passthrough} does not exist"
                )
            own = {s.name for s in slots}
            for conn in source.connections:
                results += [
                    OutputResult(name=r.result, dtype=r.dtype, passthrough=True)
                    for r in conn.results
                    if r.result not in own
                ]
        job.spec.outputs.root[name] = Output(
            type=body.type,
            title=body.title,
            slots=slots,
            passthrough=body.passthrough,
            results=results,
        )
        return job

    def _expected_fields(self, job: Job, name: str) -> list[tuple[str, str]]:
        output = job.spec.outputs.root.get(name)
        if output is None:
            raise FakeHTTPError(404, f"Job {job.uid} has no output {name}")
        fields: list[tuple[str, str]] = []
        for slot in output.slots:
            layout = (
                TEMPLATE_BLOB
                if (output.type, slot.dtype) == ("template", "blob")
                else SLOT_FIELDS.get(slot.dtype)
            )
            if layout is None:
                raise FakeHTTPError(
                    422,
                    f"the test double has no field layout for slot dtype {slot.dtype}",
                )
            fields += [(f"{slot.name}/{f}", dt) for f, dt in layout]
        return fields

    def op_jobs_get_output_fields(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> list[tuple[str, str]]:
        return self._expected_fields(
            self.job(p["project_uid"], p["job_uid"]), p["output_name"]
        )

    def op_jobs_load_output(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Dataset:
        job = self.job(p["project_uid"], p["job_uid"])
        key = (p["project_uid"], p["job_uid"], p["output_name"])
        if p["output_name"] not in job.spec.outputs.root or key not in self.datasets:
            raise FakeHTTPError(
                404, f"Job {job.uid} has no results for output {p['output_name']}"
            )
        dset = self.datasets[key]
        slots = q.get("slots", "default")
        return (
            dset if isinstance(slots, str) else dset.filter_prefixes(slots, copy=True)
        )

    def op_jobs_save_output(
        self, p: dict[str, str], q: dict[str, Any], body: Dataset
    ) -> Job:
        job = self.external(p, ("running", "waiting"))
        name = p["output_name"]
        expected = self._expected_fields(job, name)
        have = set(body.fields())
        missing = [f for f, _ in expected if f not in have]
        if missing:
            raise FakeHTTPError(
                422,
                {
                    "message": f"dataset for {name} is missing required fields",
                    "fields": missing,
                },
            )
        output = job.spec.outputs.root[name]
        if output.passthrough:
            source = job.spec.inputs.root[output.passthrough]
            known = np.concatenate(
                [
                    self.datasets[(p["project_uid"], c.job_uid, c.output)]["uid"]
                    for c in source.connections
                ]
            )
            if not np.isin(body["uid"], known).all():
                raise FakeHTTPError(
                    422,
                    f"dataset for {name} has rows that are not in input {output.passthrough}",
                )
        for result in output.results:
            if not result.passthrough:
                result.versions, result.metafiles, result.num_items = (
                    [0],
                    [f"{job.uid}/{name}.cs"],
                    [len(body)],
                )
        output.num_items = len(body)
        self.datasets[(p["project_uid"], job.uid, name)] = body
        return job

    def op_jobs_mark_running(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Job:
        return self._set_status(
            self.external(p, ("building", "waiting", "running")),
            q.get("status", "running"),
        )

    def op_jobs_mark_completed(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Job:
        return self._set_status(
            self.external(p, ("running", "waiting", "failed")), "completed"
        )

    def op_jobs_mark_failed(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> Job:
        job = self.job(p["project_uid"], p["job_uid"])
        message = q.get("error") or "failed"
        job.errors_run.append(RunError(message=message))
        self._log(p, "error", text=message)
        return self._set_status(job, "failed")

    def op_jobs_add_event_log(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> TextEvent:
        self.job(p["project_uid"], p["job_uid"])
        kind = q.get("type", "text")
        entry = self._log(p, kind, text=str(body))
        return TextEvent(
            _id=entry["id"],
            project_uid=p["project_uid"],
            job_uid=p["job_uid"],
            type=kind,
            text=str(body),
        )

    def op_jobs_add_image_log(
        self, p: dict[str, str], q: dict[str, Any], body: Any
    ) -> ImageEvent:
        self.job(p["project_uid"], p["job_uid"])
        for asset in body:
            if asset.fileid not in self.assets:
                raise FakeHTTPError(404, f"asset {asset.fileid} not found")
        entry = self._log(p, "image", text=q["text"], images=[a.fileid for a in body])
        return ImageEvent(
            _id=entry["id"],
            project_uid=p["project_uid"],
            job_uid=p["job_uid"],
            type="image",
            text=q["text"],
        )

    def op_assets_upload(
        self, p: dict[str, str], q: dict[str, Any], body: bytes
    ) -> GridFSAsset:
        self.job(p["project_uid"], p["job_uid"])
        fmt = q.get("format") or (q.get("filename") or "").rpartition(".")[2]
        if not fmt:
            raise FakeHTTPError(422, "one of filename or format is required")
        fileid = f"{next(self._ids):024x}"
        name = q.get("filename") or f"{fileid}.{fmt}"
        self.assets[fileid] = (name, body)
        return GridFSAsset(fileid=fileid, filename=name, filetype=fmt)

    def op_jobs_set_output_image(
        self, p: dict[str, str], q: dict[str, Any], body: GridFSAsset
    ) -> Job:
        job = self.external(p, ("building", "running", "waiting", "completed"))
        output = job.spec.outputs.root.get(p["output_name"])
        if output is None or body.fileid not in self.assets:
            raise FakeHTTPError(404, "output or asset not found")
        output.image = body.fileid
        return job

    def op_jobs_set_tile_image(
        self, p: dict[str, str], q: dict[str, Any], body: GridFSAsset
    ) -> Job:
        job = self.external(p, ("building", "running", "waiting", "completed"))
        if body.fileid not in self.assets:
            raise FakeHTTPError(404, "asset not found")
        job.ui_tile_images = [UiTileImage(name="tile0", fileid=body.fileid)]
        return job
