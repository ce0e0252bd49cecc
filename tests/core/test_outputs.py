"""Outputs appear whole or not at all; every output folder gets a record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import (
    atomic_path,
    check_output_folder,
    replace_output_set,
    sha256_file,
    staged_outputs,
    write_run_record,
)


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_staged_outputs_leave_nothing_on_failure(tmp_path):
    out = tmp_path / "job"
    with pytest.raises(ValueError), staged_outputs(out) as stage:
        (stage / "a.star").write_text("a")
        raise ValueError("bad input")
    assert list(out.iterdir()) == []
    with staged_outputs(out) as stage:
        (stage / "a.star").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.png").write_bytes(b"png")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a.star",
        "sub",
        "sub/b.png",
    ]


def test_run_record_names_version_argv_and_checksum(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    path = write_run_record(
        tmp_path,
        command="score",
        argv=["cryodiscovery", "score", "x.star"],
        config={"threshold": 0.4},
        model_checksum=sha256_file(model),
    )
    record = json.loads(path.read_text())
    assert record["argv"] == ["cryodiscovery", "score", "x.star"]
    assert record["config"] == {"threshold": 0.4}
    assert len(record["model_sha256"]) == 64
    assert record["cryodiscovery_version"]


def test_atomic_outputs_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.star") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.star").stat().st_mode & 0o777 == 0o644


SET = ("a.star", "gallery*.png", "explain/*.png")


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_replace_output_set_is_all_or_nothing_and_drops_stale_files(tmp_path):
    out = tmp_path / "job"
    with pytest.raises(RuntimeError), replace_output_set(out, SET) as stage:
        (stage / "a.star").write_text("first")
        raise RuntimeError("crash before the end")
    assert _tree(out) == []  # a failed first run leaves no outputs
    with replace_output_set(out, SET) as stage:
        (stage / "a.star").write_text("1")
        (stage / "gallery_2.png").write_text("page 2")
        (stage / "explain").mkdir()
        (stage / "explain" / "c1.png").write_text("c1")
    (out / "run.out").write_text("RELION's log")  # not in the set: never touched
    before = {p: (out / p).read_bytes() for p in _tree(out) if (out / p).is_file()}
    with pytest.raises(RuntimeError), replace_output_set(out, SET) as stage:
        (stage / "a.star").write_text("2")
        raise RuntimeError("a failed rerun")
    assert {p: (out / p).read_bytes() for p in before} == before
    assert _tree(out) == sorted([*before, "explain"])
    with replace_output_set(out, SET) as stage:
        (stage / "a.star").write_text("3")
    assert _tree(out) == ["a.star", "run.out"]  # stale page and overlays gone
    assert (out / "a.star").read_text() == "3"
    assert oct((out / "a.star").stat().st_mode & 0o777) != oct(0o600)


def test_replace_output_set_refuses_undeclared_outputs(tmp_path):
    with (
        pytest.raises(ValueError, match="outside"),
        replace_output_set(tmp_path, SET) as stage,
    ):
        (stage / "other.txt").write_text("x")
    assert _tree(tmp_path) == []


def test_unusable_output_folders_are_input_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        check_output_folder(afile)
    with pytest.raises(InputError, match="is a file"):  # a path under a file
        check_output_folder(afile / "out")
    with pytest.raises(InputError, match="is a file"):
        with replace_output_set(afile / "out", SET):
            pass


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a 0o555 folder; see the test above"
)
def test_read_only_output_folder_is_an_input_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match="cannot write here"):
            check_output_folder(folder / "out")
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    ("name", "text", "refused"),
    [
        (
            "job.star",
            "\n# version 50001\n\ndata_job\n\n_rlnJobTypeLabel relion.select\n",
            True,
        ),
        ("job.star", "my own job list\n", False),
        ("note.txt", "\n ++++ Executing new job on Mon Jan  1 2024\n", True),
        ("note.txt", "to do: check class 7\n", False),
        ("job.json", '{"project_uid": "P3", "uid": "J42", "type": "select_2D"}', True),
        ("job.json", '{"mine": true}', False),
        ("default_pipeline.star", "", True),
        ("RELION_JOB_EXIT_FAILURE", "", True),
    ],
)
def test_another_programs_job_folder_is_refused_by_its_content(
    tmp_path: Path, name: str, text: str, refused: bool
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / name).write_text(text)
    if refused:
        with pytest.raises(InputError, match=f"it holds {name}"):
            check_output_folder(folder, "score")
    else:
        assert check_output_folder(folder, "score") == folder
    assert check_output_folder(folder) == folder  # without a command: no such check
    # this command's own earlier outputs there: allowed
    (folder / "run_record.json").write_text('{"command": "score"}')
    assert check_output_folder(folder, "score") == folder


def test_sigterm_during_the_renames_waits_for_the_whole_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGTERM arriving between two renames: every output of the new set is in
    place before the interruption is raised (never half old, half new)."""
    import signal

    from cryodiscovery.core import cli
    from cryodiscovery.core import outputs as outputs_module

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (out / name).write_text("old")
    real_replace = os.replace
    calls = []

    def replace_then_signal(src: object, dest: object) -> None:
        real_replace(src, dest)  # type: ignore[arg-type]
        calls.append(dest)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(outputs_module.os, "replace", replace_then_signal)
    with pytest.raises(KeyboardInterrupt), cli.sigterm_interrupts():
        with replace_output_set(out, ["*.txt"]) as stage:
            for name in ("a.txt", "b.txt", "c.txt"):
                (stage / name).write_text("new")
    assert len(calls) == 3
    assert {p.name: p.read_text() for p in out.glob("*.txt")} == {
        "a.txt": "new",
        "b.txt": "new",
        "c.txt": "new",
    }
    assert not list(out.glob(".staging-*"))


def test_outputs_of_another_command_or_inside_a_job_are_refused(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "run_record.json").write_text('{"command": "cryodiscovery-cryosparc"}')
    with pytest.raises(
        InputError, match="holds the outputs of cryodiscovery-cryosparc"
    ):
        check_output_folder(offline, "score")
    job = tmp_path / "Class2D" / "job001"
    job.mkdir(parents=True)
    (job / "job.star").write_text("data_job\n")
    with pytest.raises(InputError, match="is inside a RELION job's folder"):
        check_output_folder(job / "sub" / "deeper", "score")
    # RELION's job-type folder (Class2D/ of the project): refused, it holds job001,
    # and so is a new folder made inside it
    with pytest.raises(
        InputError, match=r"is a job-type folder \(it holds job001, a RELION job\)"
    ):
        check_output_folder(tmp_path / "Class2D", "score")
    with pytest.raises(
        InputError,
        match=r"is inside the job-type folder .*Class2D \(it holds job001, a RELION job\)",
    ):
        check_output_folder(tmp_path / "Class2D" / "mine", "score")
    assert check_output_folder(tmp_path, "score") == tmp_path  # no job directly in it
    project = tmp_path / "CS-proj"
    project.mkdir()
    (project / "project.json").write_text('{"uid": "P3", "title": "x"}')
    with pytest.raises(InputError, match="a cryoSPARC project's folder"):
        check_output_folder(project, "cryodiscovery-cryosparc")
    # a new folder in a cryoSPARC or RELION project (not in a job) is where outputs go
    assert check_output_folder(project / "J43", "cryodiscovery-cryosparc")


def test_folders_only_named_like_jobs_are_not_job_type_folders(tmp_path: Path) -> None:
    """A user's folder holding job-like names is no job-type folder: a plain job001/
    without a job's marks, job003_notes/ with RELION's note text (not a job's name),
    and a job-type folder holding this command's own earlier outputs is reused."""
    out = tmp_path / "results"
    (out / "job001").mkdir(parents=True)
    notes = out / "job003_notes"
    notes.mkdir()
    (notes / "note.txt").write_text("++++ Executing new job on Mon\n")
    assert check_output_folder(out, "score") == out
    assert check_output_folder(out / "new", "score") == out / "new"
    classes = tmp_path / "Class2D"
    (classes / "job001").mkdir(parents=True)
    (classes / "job001" / "RELION_JOB_EXIT_SUCCESS").touch()
    (classes / "run_record.json").write_text('{"command": "score"}')
    assert check_output_folder(classes, "score") == classes
    cryosparc = tmp_path / "cs"
    (cryosparc / "job012").mkdir(parents=True)
    (cryosparc / "job012" / "job.json").write_text('{"project_uid": "P3"}')
    with pytest.raises(
        InputError, match=r"is a job-type folder \(it holds job012, a cryoSPARC job\)"
    ):
        check_output_folder(cryosparc, "score")
