"""The API test double enforces the rules it claims to (so that passing online tests mean
something): tokens, request validation, required dataset fields, no saving after
completion, rows from the passthrough input only."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from cryodiscovery.cryosparc_job.session import connect
from cryosparc.dataset import Dataset
from cryosparc.errors import APIError
from fake_cryosparc_http import ROUTES


def test_openapi_lists_every_route_by_python_name(server):
    schema = httpx.get(f"{server}/api/cmd/openapi.json").json()
    summaries = {
        op["summary"] for path in schema["paths"].values() for op in path.values()
    }
    assert summaries == {r.summary for r in ROUTES}
    assert {"info", "paths", "components"} <= set(schema)


def test_calls_without_a_valid_token_are_refused(server, fake):
    for headers in ({}, {"Authorization": "Bearer not-issued"}):
        res = httpx.get(f"{server}/api/cmd/users/me", headers=headers)
        assert res.status_code == 401 and res.json() == {"detail": "Not authenticated"}
    assert httpx.get(f"{server}/api/cmd/health").json() == "OK"


def test_request_validation_is_422(server, fake):
    fake.add_token("t", "x@y")
    auth = {"Authorization": "Bearer t"}
    res = httpx.post(f"{server}/api/cmd/jobs/P1/W1", headers=auth)  # no ?type=
    assert res.status_code == 422
    assert res.json()["detail"][0]["loc"] == ["query", "type"]
    res = httpx.post(
        f"{server}/api/cmd/jobs/P1/J1/external/outputs/x",
        headers=auth,
        json={"title": "no type"},
    )
    assert res.status_code == 422
    assert any(d["loc"] == ["type"] for d in res.json()["detail"])


@pytest.fixture
def external(config, fake):
    """A connected External job with a particles_selected output, and the client."""
    cs = connect(config)
    juid = fake.uids["class2d"]
    ext = cs.create_external_job("P1", "W1", title="t")
    ext.connect(
        "particles", juid, "particles", slots=["blob", "alignments2D"], title="P"
    )
    ext.add_output(
        "particle",
        "particles_selected",
        slots=["blob", "alignments2D"],
        passthrough="particles",
    )
    particles = cs.find_job("P1", juid).load_output(
        "particles", slots=["blob", "alignments2D"]
    )
    return ext, particles


def test_missing_required_fields_are_422(external):
    ext, particles = external
    ext.start("running")
    partial = particles.filter_prefixes(["blob"], copy=True)
    with pytest.raises(APIError) as info:
        ext.save_output("particles_selected", partial)
    assert info.value.code == 422
    assert "alignments2D/class" in info.value.data["detail"]["fields"]


def test_no_saving_unless_running_and_none_after_completion(external, fake):
    ext, particles = external
    full = ext.alloc_output("particles_selected", particles)
    with pytest.raises(APIError) as info:  # still building
        ext.save_output("particles_selected", full)
    assert info.value.code == 409
    with ext.run():
        ext.save_output("particles_selected", full)
    assert ext.refresh().status == "completed"
    with pytest.raises(APIError) as info:
        ext.save_output("particles_selected", full)
    assert info.value.code == 409 and "completed" in info.value.data["detail"]


def test_rows_must_come_from_the_passthrough_input(external):
    ext, particles = external
    foreign = Dataset.allocate(3, [(f, particles[f].dtype.str) for f in ["blob/idx"]])
    allocated = ext.alloc_output("particles_selected", foreign)
    with pytest.raises(APIError) as info, ext.run():
        ext.save_output("particles_selected", allocated)
    assert (
        info.value.code == 422 and "not in input particles" in info.value.data["detail"]
    )
    assert ext.refresh().status == "failed"  # job.run() saw the error


def test_connect_checks_required_slots(config, fake):
    cs = connect(config)
    ext = cs.create_external_job("P1", "W1")
    with pytest.raises(APIError) as info:
        ext.connect(
            "templates", fake.uids["class2d"], "class_averages", slots=["alignments2D"]
        )
    assert info.value.code == 422 and info.value.data["detail"]["slots"] == [
        "alignments2D"
    ]


def test_calls_are_recorded_with_their_arguments(external, fake):
    ext, particles = external
    with ext.run():
        ext.log("hello", level="warning")
    call = [c for c in fake.calls if c.summary == "jobs.add_event_log"][-1]
    assert call.body == "hello" and call.query == {"type": "warning"}
    load = [c for c in fake.calls if c.summary == "jobs.load_output"][-1]
    assert load.query["slots"] == ["blob", "alignments2D"]
    assert np.asarray(particles["alignments2D/class"]).size == 90
