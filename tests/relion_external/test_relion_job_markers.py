"""The job context writes exactly one RELION exit marker and honours the abort file."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryodiscovery.core.errors import InputError
from cryodiscovery.relion_external.job import (
    ABORT_NOW,
    EXIT_ABORTED,
    EXIT_FAILURE,
    EXIT_MARKERS,
    EXIT_SUCCESS,
    ExternalJob,
    JobAborted,
    check_job_folder,
)
from cryodiscovery.relion_external.job_star import write_job_star


def markers(folder: Path) -> set[str]:
    return {name for name in EXIT_MARKERS if (folder / name).exists()}


def test_names_are_relions():
    # src/pipeline_control.h; RELION's own python helper misspells the abort file
    assert EXIT_MARKERS == (
        "RELION_JOB_EXIT_SUCCESS",
        "RELION_JOB_EXIT_FAILURE",
        "RELION_JOB_EXIT_ABORTED",
    )
    assert ABORT_NOW == "RELION_JOB_ABORT_NOW"


def test_success_writes_only_the_success_marker(tmp_path):
    job = ExternalJob(tmp_path / "External/job010")
    with job:
        assert markers(job.control_dir) == set()
    assert markers(job.control_dir) == {EXIT_SUCCESS}
    assert job.outcome == "success" and job.exit_code == 0


@pytest.mark.parametrize(
    ("error", "marker", "code"),
    [
        (InputError("x.star", "bad"), EXIT_FAILURE, 2),
        (RuntimeError("bug"), EXIT_FAILURE, 1),
        (JobAborted("abort"), EXIT_ABORTED, 130),
        (KeyboardInterrupt(), EXIT_ABORTED, 130),
    ],
)
def test_an_exception_writes_one_marker_and_propagates(tmp_path, error, marker, code):
    job = ExternalJob(tmp_path)
    with pytest.raises(type(error)), job:
        raise error
    assert markers(tmp_path) == {marker}
    assert job.exit_code == code


def test_a_failed_rerun_leaves_no_stale_success(tmp_path):
    with ExternalJob(tmp_path):
        pass
    with pytest.raises(InputError), ExternalJob(tmp_path):
        assert markers(tmp_path) == set()  # removed at start, as RELION does
        raise InputError(None, "second run fails")
    assert markers(tmp_path) == {EXIT_FAILURE}


def test_abort_file_is_polled_and_kept(tmp_path):
    job = ExternalJob(tmp_path)
    with pytest.raises(JobAborted), job:
        job.check_abort()  # nothing to see yet
        (tmp_path / ABORT_NOW).touch()
        assert job.abort_requested()
        job.check_abort()
    assert markers(tmp_path) == {EXIT_ABORTED}
    # the GUI, not the job, removes the request (before it starts the next run)
    assert (tmp_path / ABORT_NOW).exists()


def test_exit_code_before_the_end_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not finished"):
        _ = ExternalJob(tmp_path).exit_code


def test_job_folder_ownership(tmp_path):
    check_job_folder(tmp_path / "new", "cryodiscovery-relion")  # not there yet
    mine = tmp_path / "mine"
    mine.mkdir()
    check_job_folder(mine, "cryodiscovery-relion")  # empty
    for name in ("run.out", "run.err", "note.txt", EXIT_FAILURE, ABORT_NOW):
        (mine / name).touch()
    check_job_folder(mine, "cryodiscovery-relion")  # RELION's own files only
    (mine / "particles.star").touch()
    with pytest.raises(InputError, match="not this External job's folder"):
        check_job_folder(mine, "cryodiscovery-relion")
    (mine / "run_record.json").write_text('{"command": "cryodiscovery-relion"}')
    check_job_folder(mine, "cryodiscovery-relion")  # an earlier run of this job
    (mine / "run_record.json").write_text('{"command": "score"}')
    with pytest.raises(InputError):
        check_job_folder(mine, "cryodiscovery-relion")
    write_job_star(mine)  # RELION wrote the External job's job.star here
    check_job_folder(mine, "cryodiscovery-relion")
    other = tmp_path / "Class2D" / "job013"
    other.mkdir(parents=True)
    (other / "job.star").write_text("data_job\n_rlnJobTypeLabel relion.class2d\n")
    (other / EXIT_SUCCESS).touch()
    with pytest.raises(InputError, match=r"job\.star"):
        check_job_folder(other, "cryodiscovery-relion")
    with pytest.raises(InputError, match="not a folder"):
        check_job_folder(other / "job.star", "cryodiscovery-relion")
