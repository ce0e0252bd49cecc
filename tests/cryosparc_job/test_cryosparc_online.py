"""The online protocol, run with the unmodified cryosparc-tools client against the API test
double on 127.0.0.1 (see fake_cryosparc.py), with a fixed selector in place of the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.errors import InputError
from cryodiscovery.cryosparc_job.online import (
    JobInterrupted,
    OnlineRequest,
    run_online,
)
from cryodiscovery.cryosparc_job.session import ServerConfig, connect
from cryosparc_testdata import (
    EMAIL,
    PASSWORD,
    Class2DData,
    keep,
    make_class2d,
    seed_project,
)
from fake_cryosparc import FakeCryosparc
from fake_cryosparc_http import serve


def _new_job(fake):
    """The External job the run created (the only snowflake job)."""
    (job,) = [j for j in fake.jobs.values() if j.spec.type == "snowflake"]
    return job


def _run(fake, config, select, **kw):
    cs = connect(config)
    request = OnlineRequest("P1", fake.uids["class2d"], **kw)
    return run_online(cs, request, select)


@dataclass
class Finished:
    fake: FakeCryosparc
    data: Class2DData
    result: object
    report: Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One successful run (classes 1 and 3 kept), inspected by several tests."""
    data = make_class2d()
    fake = FakeCryosparc()
    fake.uids = seed_project(fake, data)
    report = tmp_path_factory.mktemp("online") / "report"
    with serve(fake) as url:
        config = ServerConfig(url=url, email=EMAIL, password=PASSWORD, timeout=10)
        result = _run(fake, config, keep([1, 3]), out_dir=report)
    return Finished(fake, data, result, report)


def test_saves_the_four_select_2d_outputs(finished):
    fake, class2d, result = finished.fake, finished.data, finished.result
    job = _new_job(fake)
    assert result.job == job.uid and job.status == "completed"
    assert job.workspace_uids == ["W1"]
    saved = {name: fake.datasets[("P1", job.uid, name)] for name in result.saved}
    assert set(saved) == {
        "particles_selected",
        "particles_excluded",
        "templates_selected",
        "templates_excluded",
    }
    sel, exc = saved["particles_selected"], saved["particles_excluded"]
    assert set(sel["uid"]) | set(exc["uid"]) == set(class2d.particles["uid"])
    assert set(sel["uid"]).isdisjoint(exc["uid"])
    assert set(np.unique(sel["alignments2D/class"])) == {0, 2}
    assert list(saved["templates_selected"]["blob/idx"]) == [0, 2]
    # values were copied row for row from the 2D job's particles
    rows = {int(u): i for i, u in enumerate(class2d.particles["uid"])}
    src = [rows[int(u)] for u in sel["uid"]]
    assert list(sel["blob/path"]) == list(class2d.particles["blob/path"][src])
    assert np.allclose(
        sel["alignments2D/pose"], class2d.particles["alignments2D/pose"][src]
    )
    assert (finished.report / "scores.csv").is_file()


def test_outputs_have_select_2d_slots_and_passthrough(finished):
    job = _new_job(finished.fake)
    out = job.spec.outputs.root
    assert [s.name for s in out["particles_selected"].slots] == ["blob", "alignments2D"]
    assert out["particles_selected"].passthrough == "particles"
    passed = {r.name for r in out["particles_selected"].results if r.passthrough}
    assert passed == {"ctf", "location"}
    assert [s.name for s in out["templates_excluded"].slots] == ["blob"]
    assert out["templates_excluded"].passthrough == "templates"
    connected = {c.output for i in job.spec.inputs.root.values() for c in i.connections}
    assert connected == {"particles", "class_averages"}


def test_logs_summary_table_gallery_and_images(finished):
    fake = finished.fake
    job = _new_job(fake)
    events = fake.events[("P1", job.uid)]
    texts = [e["text"] for e in events if e["type"] == "text"]
    assert any(t.startswith("Kept 2 of 6 classes") for t in texts)
    assert any("Scores per class" in t and "\n    3   0.900   yes" in t for t in texts)
    images = [e for e in events if e["type"] == "image"]
    assert [e["text"] for e in images] == [
        "Classes kept (blue) and rejected (vermillion)",
        "Score histogram",
    ]
    names = [fake.assets[f][0] for e in images for f in e["images"]]
    assert any(n.endswith(".png") for n in names) and any(
        n.endswith(".csv") for n in names
    )
    review = next(
        f for e in images for f in e["images"] if fake.assets[f][0] == "review.html"
    )
    assert b'data-class="' in fake.assets[review][1]
    assert any(t.startswith("Review page: download review.html") for t in texts)
    assert fake.assets[images[0]["images"][0]][1][:8] == b"\x89PNG\r\n\x1a\n"
    assert job.ui_tile_images and job.spec.outputs.root["templates_selected"].image


def test_empty_outputs_are_skipped_workspace_and_title_honoured(fake, config):
    result = _run(fake, config, keep([1, 2, 3, 4, 5, 6]), workspace="W2", title="auto")
    assert set(result.saved) == {"particles_selected", "templates_selected"}
    job = _new_job(fake)
    assert job.workspace_uids == ["W2"] and job.title == "auto"
    assert "particles_excluded" not in job.spec.outputs.root
    saves = [
        c.params["output_name"] for c in fake.calls if c.summary == "jobs.save_output"
    ]
    assert saves == ["particles_selected", "templates_selected"]


@pytest.mark.parametrize(
    ("project", "job_key", "workspace", "message"),
    [
        ("P9", "class2d", None, "project P9 not found"),
        ("P1", None, None, "job P1/J99 not found"),
        ("P1", "refine", None, "homo_refine_new job, not a 2D classification"),
        ("P1", "running", None, "is running"),
        ("P1", "class2d", "W7", "workspace P1/W7 not found"),
    ],
)
def test_bad_targets_create_no_job(fake, config, project, job_key, workspace, message):
    cs = connect(config)
    job = fake.uids[job_key] if job_key else "J99"
    with pytest.raises(InputError, match=message):
        run_online(cs, OnlineRequest(project, job, workspace), keep([1]))
    assert not [j for j in fake.jobs.values() if j.spec.type == "snowflake"]


def test_error_while_scoring_fails_the_job_and_saves_nothing(fake, config):
    def broken(classes):
        raise RuntimeError("model exploded\nsecond line")

    with pytest.raises(RuntimeError, match="model exploded"):
        _run(fake, config, broken)
    job = _new_job(fake)
    assert job.status == "failed"
    assert "jobs.save_output" not in fake.summaries()
    errors = [e["text"] for e in fake.events[("P1", job.uid)] if e["type"] == "error"]
    assert "cryodiscovery failed: RuntimeError: model exploded" in errors


def test_required_field_missing_fails_before_any_save(fake, config, monkeypatch):
    """The server asks for a field the 2D job's output lacks: no output is saved."""
    import fake_cryosparc

    layout = [*fake_cryosparc.SLOT_FIELDS["alignments2D"], ("new_in_v9", "f4")]
    monkeypatch.setitem(fake_cryosparc.SLOT_FIELDS, "alignments2D", layout)
    with pytest.raises(InputError, match="alignments2D/new_in_v9"):
        _run(fake, config, keep([1]))
    job = _new_job(fake)
    assert job.status == "failed" and "jobs.save_output" not in fake.summaries()


def test_server_rejection_mid_save_marks_the_job_failed(fake, config, monkeypatch):
    """A 422 from the server on the second save: the job fails, it is not completed."""
    original = fake.op_jobs_save_output
    count = {"n": 0}

    def flaky(p, q, body):
        count["n"] += 1
        if count["n"] == 2:
            from fake_cryosparc_http import FakeHTTPError

            raise FakeHTTPError(422, [{"loc": ["body", "dataset"], "msg": "bad rows"}])
        return original(p, q, body)

    monkeypatch.setattr(fake, "op_jobs_save_output", flaky)
    with pytest.raises(Exception, match="422"):
        _run(fake, config, keep([1]))
    job = _new_job(fake)
    assert job.status == "failed"
    errors = [e["text"] for e in fake.events[("P1", job.uid)] if e["type"] == "error"]
    assert any("HTTP 422: body.dataset: bad rows" in e for e in errors)


def test_corrupt_data_from_the_server_fails_the_job_with_one_line(
    fake, config, class2d
):
    fake.add_file("P1", class2d.stack_path, b"not an MRC file")
    with pytest.raises(
        InputError, match=r"J1_020_class_averages\.mrc: unreadable"
    ) as info:
        _run(fake, config, keep([1]))
    assert "\n" not in str(info.value)
    job = _new_job(fake)
    assert job.status == "failed" and "jobs.save_output" not in fake.summaries()


def test_interrupt_marks_the_job_failed(fake, config):
    def interrupted(classes):
        raise KeyboardInterrupt

    with pytest.raises(JobInterrupted):
        _run(fake, config, interrupted)
    assert _new_job(fake).status == "failed"


def test_nothing_kept_fails_the_job_with_the_best_score(fake, config):
    from cryodiscovery.core.errors import NothingSelected

    with pytest.raises(NothingSelected, match=r"no class kept: best score 0\.100"):
        _run(fake, config, keep([]))
    job = _new_job(fake)
    assert job.status == "failed"
    assert "jobs.save_output" not in fake.summaries()
    errors = [e["text"] for e in fake.events[("P1", job.uid)] if e["type"] == "error"]
    assert any(e.startswith("cryodiscovery failed: no class kept") for e in errors)
