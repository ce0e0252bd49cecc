"""The External job run in-process through ``main(argv)``, from the project folder as RELION
runs it: outputs per RELION version, reruns, and every failure ending with the right
marker, a one-line message and no outputs."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from cryodiscovery.relion_external import selection_job
from cryodiscovery.relion_external.cli import main, sigterm_aborts
from cryodiscovery.relion_external.job import ABORT_NOW, EXIT_MARKERS, JobAborted

JOB = "External/job010/"
DATA = "Class2D/job001/run_it025_data.star"
STACK = "Class2D/job001/run_it025_classes.mrcs"
MODEL = "Class2D/job001/run_it025_model.star"
# A score threshold of 0 keeps every class on score; the particle rule then makes the
# selection independent of the model: classes with >= 50 particles.
DETERMINISTIC = ["--threshold", "0", "--min_particles", "50"]


def run(*extra: str) -> int:
    return main(["--o", JOB, "--in_parts", DATA, *extra, "--j", "1"])


def markers(folder: Path) -> set[str]:
    return {m for m in EXIT_MARKERS if (folder / m).exists()}


def digests(project: Path) -> dict[str, str]:
    return {
        str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((project / "Class2D").rglob("*"))
        if p.is_file()
    }


def expected_classes(project: Path) -> list[int]:
    parts = starfile.read(project / DATA, always_dict=True)["particles"]
    counts = parts["rlnClassNumber"].value_counts()
    return sorted(int(c) for c, n in counts.items() if n >= 50)


@pytest.mark.parametrize("version", ["3.1", "4.0"])
def test_outputs_for_older_relion_versions(relion_project, monkeypatch, version):
    project = relion_project(version=version)
    monkeypatch.chdir(project)
    before = digests(project)
    assert run(*DETERMINISTIC) == 0
    out = project / JOB
    assert markers(out) == {"RELION_JOB_EXIT_SUCCESS"}
    nodes = starfile.read(out / "RELION_OUTPUT_NODES.star", always_dict=True)[
        "output_nodes"
    ]
    column = "rlnPipeLineNodeType" if version == "3.1" else "rlnPipeLineNodeTypeLabel"
    assert list(nodes[column]) == (
        [3, 5]
        if version == "3.1"
        else ["ParticlesData.star.relion", "ImagesData.star.relion.classaverages"]
    )
    chosen = expected_classes(project)
    assert list(starfile.read(out / "class_averages.star")["rlnClassNumber"]) == chosen
    kept = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert set(kept["rlnClassNumber"]) == set(chosen)
    assert digests(project) == before  # inputs untouched
    assert not list(out.glob(".staging-*"))


@pytest.mark.parametrize(("version", "star"), [("4.0", 30001), ("5.0", 50001)])
def test_review_page_exports_the_jobs_star_version(
    relion_project, monkeypatch, version, star
):
    """The page's backup_selection.star export carries the version line the job's own
    backup_selection.star has (RELION 5.0 writes 50001)."""
    project = relion_project(version=version)
    monkeypatch.chdir(project)
    assert run(*DETERMINISTIC) == 0
    out = project / JOB
    assert f"# version {star}" in (out / "backup_selection.star").read_text()
    assert f"# version {star}" in (out / "review.html").read_text()


def test_rerun_replaces_outputs_and_a_failed_rerun_keeps_them(
    relion_project, monkeypatch, capsys
):
    project = relion_project()
    monkeypatch.chdir(project)
    out = project / JOB
    assert run(*DETERMINISTIC, "--explain") == 0
    assert (out / "explain").is_dir()
    assert run("--threshold", "0", "--min_particles", "70") == 0
    selected = starfile.read(out / "backup_selection.star")["rlnSelected"]
    parts = starfile.read(project / DATA, always_dict=True)["particles"][
        "rlnClassNumber"
    ]
    assert list(np.flatnonzero(selected) + 1) == sorted(
        int(c) for c, n in parts.value_counts().items() if n >= 70
    )
    assert not (out / "explain").exists()  # overlays of the first run are gone
    good = {
        p.name: p.read_bytes()
        for p in out.iterdir()
        if p.is_file() and "RELION_JOB" not in p.name
    }
    capsys.readouterr()

    assert run("--threshold", "2") == 2  # a rerun that fails (bad input)
    assert markers(out) == {"RELION_JOB_EXIT_FAILURE"}
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in good} == good
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "cryodiscovery-relion: error: threshold must be in [0, 1], got 2.0"
    )


def test_nothing_kept_fails_with_the_best_score_and_writes_nothing(
    relion_project, monkeypatch, capsys
):
    project = relion_project()
    monkeypatch.chdir(project)
    assert run("--threshold", "1") != 0
    out = project / JOB
    assert sorted(p.name for p in out.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cryodiscovery-relion: error: no class kept: best score ")
    assert "threshold 1.000 (user): nothing to pass on" in err[-1]
    assert any("WARNING: no class kept" in line for line in err[:-1])


def test_empty_classes_are_never_selected(relion_project, monkeypatch):
    project = relion_project()  # class 2 has no particles
    monkeypatch.chdir(project)
    assert run("--threshold", "0") == 0
    chosen = starfile.read(project / JOB / "class_averages.star")["rlnClassNumber"]
    assert list(chosen) == [1, *range(3, 11)]


def test_unknown_options_warn_and_go_on(relion_project, monkeypatch, capsys):
    monkeypatch.chdir(relion_project())
    assert run(*DETERMINISTIC, "--in_mics", "CtfFind/job003/micrographs_ctf.star") == 0
    captured = capsys.readouterr()
    assert "ignoring arguments not understood: --in_mics" in captured.err
    assert "Written" in captured.out and "particles.star" in captured.out


def _no_stack(project: Path) -> None:
    (project / STACK).unlink()


def _corrupt_stack(project: Path) -> None:
    (project / STACK).write_bytes(b"this is not an MRC file" * 10)


def _short_stack(project: Path) -> None:
    with mrcfile.open(project / STACK) as mrc:
        images = mrc.data[:-1].copy()
    with mrcfile.new(project / STACK, overwrite=True) as mrc:
        mrc.set_data(images)


def _bad_class_in_data(project: Path) -> None:
    path = project / DATA
    lines = path.read_text().splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if "@Extract" in line)
    words = lines[row].split()
    words[2] = "11"  # rlnClassNumber, one more than the model has
    lines[row] = " ".join(words) + "\n"
    path.write_text("".join(lines))


def _wrong_box(project: Path) -> None:  # STAR files say 32 px; a 48 px stack
    with mrcfile.new(project / STACK, overwrite=True) as mrc:
        mrc.set_data(np.zeros((10, 48, 48), np.float32))


def _garbled_model(project: Path) -> None:
    (project / MODEL).write_text("data_model_general\n_rlnNrClasses\nloop_\n#?!\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_stack, "not found"),
        (_corrupt_stack, STACK),
        (_short_stack, "10 classes but the stack"),
        (_bad_class_in_data, "11"),
        (_wrong_box, "rlnOriginalImageSize is 32 px but the stack"),
        (_garbled_model, MODEL),
    ],
)
def test_bad_inputs_fail_cleanly(relion_project, monkeypatch, capsys, damage, message):
    project = relion_project()
    damage(project)
    monkeypatch.chdir(project)
    assert run(*DETERMINISTIC) == 2
    out = project / JOB
    assert sorted(p.name for p in out.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryodiscovery-relion: error: ")
    assert message in err[0]


def test_missing_in_parts_fails_with_the_marker(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--o", JOB, "--threshold", "0.5", "--j", "1"]) == 2
    assert sorted(p.name for p in (tmp_path / JOB).iterdir()) == [
        "RELION_JOB_EXIT_FAILURE"
    ]
    assert "--in_parts is missing" in capsys.readouterr().err


def test_missing_o_has_nowhere_to_write(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--in_parts", DATA]) == 2
    assert list(tmp_path.iterdir()) == []
    assert "--o is missing" in capsys.readouterr().err


def test_abort_while_writing_particles(relion_project, monkeypatch, capsys):
    project = relion_project()
    monkeypatch.chdir(project)
    real = selection_job.filter_particles

    def abort_midway(*args, **kwargs):  # the GUI's Abort button, mid-run
        (project / JOB / ABORT_NOW).touch()
        return real(*args, **kwargs)

    monkeypatch.setattr(selection_job, "filter_particles", abort_midway)
    assert run(*DETERMINISTIC) == 130
    out = project / JOB
    assert sorted(p.name for p in out.iterdir()) == [
        ABORT_NOW,
        "RELION_JOB_EXIT_ABORTED",
    ]
    assert "aborted (RELION_JOB_ABORT_NOW found" in capsys.readouterr().err


def test_abort_before_start(relion_project, monkeypatch):
    project = relion_project()
    monkeypatch.chdir(project)
    (project / JOB).mkdir(parents=True)
    (project / JOB / ABORT_NOW).touch()
    assert run(*DETERMINISTIC) == 130
    assert markers(project / JOB) == {"RELION_JOB_EXIT_ABORTED"}
    assert not (project / JOB / "particles.star").exists()


def test_write_job_star(tmp_path, capsys):
    assert main(["--write_job_star", str(tmp_path / "Schemes/auto/select")]) == 0
    values = starfile.read(tmp_path / "Schemes/auto/select/job.star", always_dict=True)
    options = dict(
        zip(
            values["joboptions_values"]["rlnJobOptionVariable"],
            values["joboptions_values"]["rlnJobOptionValue"],
            strict=True,
        )
    )
    assert Path(options["fn_exe"]).name == "cryodiscovery-relion"
    assert "Load job.star" in capsys.readouterr().out


def test_sigterm_becomes_an_abort_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobAborted, match="SIGTERM"), sigterm_aborts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) is before


def test_o_naming_another_jobs_folder_is_refused_untouched(
    relion_project, monkeypatch, capsys
):
    project = relion_project()
    monkeypatch.chdir(project)
    (project / "Class2D/job001/RELION_JOB_EXIT_SUCCESS").touch()
    before = digests(project)
    code = main(["--o", "Class2D/job001/", "--in_parts", DATA, *DETERMINISTIC])
    assert code == 2
    assert digests(project) == before  # its success marker kept, no failure marker
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not this External job's folder" in err[0]
    assert err[0].startswith("cryodiscovery-relion: error: Class2D/job001")


def test_o_under_a_file_is_one_line(relion_project, monkeypatch, capsys):
    project = relion_project()
    monkeypatch.chdir(project)
    Path("External").write_text("a file where the folder should be")
    assert run(*DETERMINISTIC) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryodiscovery-relion: error: ")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into a 0o555 folder (see the test above)"
)
def test_read_only_job_folder_is_one_line(relion_project, monkeypatch, capsys):
    project = relion_project()
    monkeypatch.chdir(project)
    (project / JOB).mkdir(parents=True)
    (project / JOB).chmod(0o555)
    try:
        assert run(*DETERMINISTIC) == 2
    finally:
        (project / JOB).chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write here" in err[0]
