"""``cryodiscovery apply-selection``: a job's outputs written again from a person's
selection, for each tool (score, the RELION External job, the cryoSPARC job offline);
bad selections and folders refused with one line, touching nothing; the corrected
output harvested as a person's labels while the model's own stay out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from cryodiscovery.core import cli
from cryodiscovery.core.io.history import automatic_selection, find_labelled_sets
from cryodiscovery.cryosparc_job import cli as cryosparc_cli
from cryodiscovery.relion_external import cli as relion_cli
from cryosparc.dataset import Dataset
from support.models import write_generated_projects
from support.person_selections import (
    DATA_STAR,
    JOB,
    KEEP_ALL,
    apply,
    flipped,
    kept_of,
    scores,
    snapshot,
    write_selection,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_generated_projects(tmp_path_factory.mktemp("generated"), 8, 3)


@pytest.fixture
def relion(generated, tiny_model, tmp_path, monkeypatch) -> Path:
    """A RELION project with an External job run by the model (every class with
    particles kept), as RELION runs it from the project folder."""
    project = tmp_path / "project"
    shutil.copytree(generated["relion"], project)
    monkeypatch.chdir(project)
    argv = ["--o", f"{JOB}/", "--in_parts", DATA_STAR, "--model", str(tiny_model)]
    assert relion_cli.main([*argv, *KEEP_ALL, "--j", "1"]) == 0
    return project


def subsequence(lines: list[bytes], of: list[bytes]) -> bool:
    source = iter(of)
    return all(any(line == other for other in source) for line in lines)


def test_relion_job_written_again_from_a_person(relion, tmp_path, monkeypatch):
    job = relion / JOB
    before = scores(job)
    inputs = snapshot(relion / "Class2D")
    person = flipped(before)
    selection = write_selection(tmp_path / "selection.csv", before, person)
    monkeypatch.chdir(tmp_path)  # a person's terminal, not the project folder
    assert apply(relion / JOB, selection) == 0

    particles = starfile.read(job / "particles.star", always_dict=True)
    source = starfile.read(relion / DATA_STAR, always_dict=True)
    assert set(particles["particles"]["rlnClassNumber"]) == person
    expected = source["particles"]["rlnClassNumber"].isin(sorted(person)).sum()
    assert len(particles["particles"]) == expected
    out_lines = (job / "particles.star").read_bytes().splitlines(keepends=True)
    in_lines = (relion / DATA_STAR).read_bytes().splitlines(keepends=True)
    assert subsequence(out_lines, in_lines)  # lines copied as bytes, in order
    averages = starfile.read(job / "class_averages.star")
    assert sorted(averages["rlnClassNumber"]) == sorted(person)
    backup = starfile.read(job / "backup_selection.star")
    assert set(np.flatnonzero(backup["rlnSelected"].to_numpy()) + 1) == person

    after = scores(job)
    assert kept_of(after) == person
    assert after["score"].tolist() == before["score"].tolist()  # the model's scores
    assert all(r.startswith("person: ") for r in after["reason"])
    record = json.loads((job / "run_record.json").read_text())
    assert record["command"] == "cryodiscovery-relion"
    assert record["argv"][:2] == ["cryodiscovery", "apply-selection"]
    config = record["config"]
    assert config["selection_source"] == "person"
    done = config["person_selection"]
    assert done["sha256"] == hashlib.sha256(selection.read_bytes()).hexdigest()
    assert done["file"] == str(selection.resolve())
    assert done["n_flipped"] == len(person ^ kept_of(before))
    assert sorted(p.name for p in job.glob("RELION_JOB_EXIT_*")) == [
        "RELION_JOB_EXIT_SUCCESS"
    ]
    assert snapshot(relion / "Class2D") == inputs
    assert not list(job.glob(".staging-*"))

    assert "selection_file" not in config  # a --selection of the scoring run, if any
    assert config["scored_argv"][1:3] == ["--o", f"{JOB}/"]
    assert config["person_selection"]["n_person"] == done["n_flipped"]

    # Another selection later is still compared with the model's decisions: the
    # model's own selection again (the page of the model's run, exported untouched)
    # is written, but no class was a person's: no label.
    again = write_selection(tmp_path / "again.csv", before, kept_of(before))
    assert apply(relion / JOB, again) == 0
    record = json.loads((job / "run_record.json").read_text())
    assert record["config"]["person_selection"]["n_flipped"] == 0
    assert record["config"]["person_selection"]["n_person"] == 0
    assert record["config"]["selection_source"] == "model"
    assert record["config"]["scored_argv"][1:3] == ["--o", f"{JOB}/"]
    assert kept_of(scores(job)) == kept_of(before)
    assert automatic_selection(job) is not None


def test_backup_selection_star_is_accepted(relion, tmp_path):
    job = relion / JOB
    table = scores(job)
    person = flipped(table)
    n = len(table)
    flags = pd.DataFrame({"rlnSelected": [int(c in person) for c in range(1, n + 1)]})
    starfile.write({"": flags}, tmp_path / "backup_selection.star")
    assert apply(job, tmp_path / "backup_selection.star") == 0
    assert kept_of(scores(job)) == person


def test_score_output_written_again(generated, tiny_model, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(generated["relion"], project)
    monkeypatch.chdir(project)
    argv = ["score", DATA_STAR, "--out", "cd_job001", "--model", str(tiny_model)]
    assert cli.main([*argv, *KEEP_ALL]) == 0
    before = scores(project / "cd_job001")
    person = flipped(before)
    selection = write_selection(tmp_path / "selection.csv", before, person)
    monkeypatch.chdir(tmp_path)  # relative inputs resolve where score ran
    assert apply(project / "cd_job001", selection) == 0
    after = scores(project / "cd_job001")
    assert kept_of(after) == person
    assert after["score"].tolist() == before["score"].tolist()
    record = json.loads((project / "cd_job001/run_record.json").read_text())
    assert record["command"] == "score"
    assert record["config"]["selection_source"] == "person"
    assert record["config"]["n_selected"] == len(person)
    # a person-corrected score output is a person's labels; the model's own is not
    assert automatic_selection(project / "cd_job001") is None
    (found,) = [
        s
        for s in find_labelled_sets(project / "cd_job001")
        if s.provenance.format == "relion"
    ]
    assert {int(c) for c in found.class_numbers[found.labels == 1]} == person


@pytest.fixture
def cryosparc(generated, tiny_model, tmp_path, monkeypatch) -> Path:
    """A cryoSPARC project folder with an offline run into J3 (beside J1 and J2)."""
    project = tmp_path / "cryosparc"
    shutil.copytree(generated["cryosparc"], project)
    monkeypatch.chdir(project)
    argv = ["--job-dir", "J1", "--out", "J3", "--model", str(tiny_model)]
    assert cryosparc_cli.main([*argv, *KEEP_ALL]) == 0
    return project


def particle_classes(folder: Path, name: str) -> dict[int, int]:
    """uid -> 1-based class of each particle in output ``name`` (none if absent)."""
    path = folder / f"{name}.cs"
    if not path.is_file():
        return {}
    data = Dataset.load(path)
    return dict(
        zip(
            np.asarray(data["uid"]).tolist(),
            (np.asarray(data["alignments2D/class"]) + 1).tolist(),
            strict=True,
        )
    )


def test_cryosparc_offline_written_again(cryosparc, tmp_path):
    out = cryosparc / "J3"
    before = scores(out)
    person = flipped(before)
    selection = write_selection(tmp_path / "selection.csv", before, person)
    inputs = snapshot(cryosparc / "J1")
    assert apply(out, selection) == 0
    chosen = particle_classes(out, "particles_selected")
    left = particle_classes(out, "particles_excluded")
    source = Dataset.load(next((cryosparc / "J1").glob("J1_*_particles.cs")))
    uids = np.asarray(source["uid"]).tolist()
    assert not set(chosen) & set(left)
    assert sorted([*chosen, *left]) == sorted(uids)  # every particle exactly once
    assert set(chosen.values()) <= person and not set(left.values()) & person
    templates = Dataset.load(out / "templates_selected.cs")
    assert set((np.asarray(templates["blob/idx"]) + 1).tolist()) == person
    record = json.loads((out / "run_record.json").read_text())
    assert record["config"]["selection_source"] == "person"
    assert snapshot(cryosparc / "J1") == inputs
    (found,) = find_labelled_sets(cryosparc)  # J3 (the person's) over J2's labels
    assert {int(c) for c in found.class_numbers[found.labels == 1]} == person


def test_a_correction_outside_the_project_is_harvested(
    generated, tiny_model, tmp_path, monkeypatch
):
    """The run record leads back to the 2D job when the output folder is elsewhere."""
    project = tmp_path / "cryosparc"
    shutil.copytree(generated["cryosparc"], project)
    shutil.rmtree(project / "J2")  # no Select 2D labels of its own
    elsewhere = tmp_path / "home" / "selections"
    monkeypatch.chdir(project)
    argv = ["--job-dir", "J1", "--out", str(elsewhere), "--model", str(tiny_model)]
    assert cryosparc_cli.main([*argv, *KEEP_ALL]) == 0
    assert find_labelled_sets(elsewhere) == []
    person = flipped(scores(elsewhere))
    selection = write_selection(tmp_path / "s.csv", scores(elsewhere), person)
    assert apply(elsewhere, selection) == 0
    (found,) = find_labelled_sets(elsewhere)
    assert {int(c) for c in found.class_numbers[found.labels == 1]} == person


def test_the_models_own_selections_are_not_labels(relion, cryosparc):
    assert automatic_selection(relion / JOB) is not None
    assert automatic_selection(cryosparc / "J3") is not None
    truth = pd.read_csv(relion / "truth.csv")
    (found,) = find_labelled_sets(relion)  # Select/job002's, not the External job's
    kept = {int(c) for c in found.class_numbers[found.labels == 1]}
    assert kept == set(truth.loc[truth["label"] == 1, "class_number"])


def test_person_corrected_relion_job_is_harvested(relion, tmp_path):
    job = relion / JOB
    person = flipped(scores(job))
    assert apply(job, write_selection(tmp_path / "s.csv", scores(job), person)) == 0
    assert automatic_selection(job) is None
    (found,) = find_labelled_sets(relion)  # External/job010 over Select/job002
    assert {int(c) for c in found.class_numbers[found.labels == 1]} == person


# --- refusals: one line naming the file, exit 2, the job folder untouched ------------


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _unknown(job: Path, tmp: Path) -> Path:
    table = scores(job)
    table.loc[0, "class_number"] = 99
    return write_selection(tmp / "selection.csv", table, {99})


def _other_job(job: Path, tmp: Path) -> Path:
    table = scores(job).iloc[:-2]
    return write_selection(tmp / "selection.csv", table, kept_of(table))


def _nothing_kept(job: Path, tmp: Path) -> Path:
    return write_selection(tmp / "selection.csv", scores(job), set())


def _bad_value(job: Path, tmp: Path) -> Path:
    return _csv(tmp / "selection.csv", "class_number,selected\n1,yes\n")


def _bad_header(job: Path, tmp: Path) -> Path:
    return _csv(tmp / "selection.csv", "class,kept\n1,1\n")


def _other_scores(job: Path, tmp: Path) -> Path:
    table = scores(job)
    table["score"] = 1.0 - table["score"] + 0.01
    return write_selection(tmp / "selection.csv", table, kept_of(table))


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (_unknown, "unknown class 99"),
        (_other_job, "classes but the job has"),
        (_nothing_kept, "no class kept"),
        (_bad_value, "line 2: selected 'yes' is not 1 or 0"),
        (_bad_header, "no class_number or selected column"),
        (_other_scores, "a selection of another job"),
    ],
)
def test_bad_selection_is_refused_untouched(relion, tmp_path, capsys, make, text):
    job = relion / JOB
    selection = make(job, tmp_path)
    before = snapshot(job)
    capsys.readouterr()
    assert apply(job, selection) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"cryodiscovery apply-selection: error: {selection}: ")
    assert text in err[0]
    assert snapshot(job) == before


def test_a_job_aborted_in_relion_is_refused_untouched(relion, tmp_path, capsys):
    """A leftover RELION_JOB_ABORT_NOW: one line naming it, not a traceback."""
    job = relion / JOB
    selection = write_selection(tmp_path / "s.csv", scores(job), flipped(scores(job)))
    (job / "RELION_JOB_ABORT_NOW").touch()
    before = snapshot(job)
    capsys.readouterr()
    assert apply(job, selection) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"cryodiscovery apply-selection: error: {job / 'RELION_JOB_ABORT_NOW'}: "
    )
    assert "aborted" in line
    assert snapshot(job) == before


def test_a_folder_without_a_run_record_is_refused(tmp_path, capsys):
    folder = tmp_path / "Class2D"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a job output")
    selection = _csv(tmp_path / "s.csv", "class_number,selected\n1,1\n")
    assert apply(folder, selection) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"{folder}: no run_record.json" in line
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_inputs_that_are_gone_are_refused_untouched(relion, tmp_path, capsys):
    job = relion / JOB
    selection = write_selection(tmp_path / "s.csv", scores(job), flipped(scores(job)))
    shutil.move(relion / "Class2D", tmp_path / "moved")
    before = snapshot(job)
    capsys.readouterr()
    assert apply(job, selection) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "run_it025" in line and "not found" in line
    assert snapshot(job) == before


def test_an_online_report_is_refused(tmp_path, capsys):
    report = tmp_path / "report"
    report.mkdir()
    (report / "scores.csv").write_text(
        "class_number,score,selected,particle_count,resolution_A,reason\n"
        "1,0.9,1,10,,\n2,0.1,0,10,,score\n"
    )
    record = {"command": "cryodiscovery-cryosparc", "argv": [], "model_sha256": "0"}
    record["config"] = {"cryosparc_job": "P1/J1", "threshold": 0.5}
    (report / "run_record.json").write_text(json.dumps(record))
    selection = _csv(tmp_path / "s.csv", "class_number,selected\n1,1\n2,1\n")
    assert apply(report, selection) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "online run" in line and "--selection" in line
    assert sorted(os.listdir(report)) == ["run_record.json", "scores.csv"]


def test_evaluate_and_the_facility_harvest_pick_up_a_correction(
    generated, tiny_model, tmp_path, monkeypatch, capsys
):
    """A score output is no label until a person corrects it; then ``evaluate`` and a
    facility's harvest (federation) find it, as ``train`` does (find_labelled_sets)."""
    pytest.importorskip("flwr")
    from cryodiscovery.federation.config import DataRoots, FacilityConfig
    from cryodiscovery.federation.harvest import harvest

    project = tmp_path / "project"
    shutil.copytree(generated["relion"], project)
    monkeypatch.chdir(project)
    out = project / "cd_job001"
    model = ["--model", str(tiny_model)]
    assert cli.main(["score", DATA_STAR, "--out", str(out), *model, *KEEP_ALL]) == 0
    evaluate = ["evaluate", "--data", str(out), *model]
    assert cli.main(evaluate) == 2  # the model's own selection: no labels
    assert "no labelled 2D classification" in capsys.readouterr().err
    person = flipped(scores(out))
    assert apply(out, write_selection(tmp_path / "s.csv", scores(out), person)) == 0
    assert cli.main(evaluate) == 0
    facility = FacilityConfig(
        source=tmp_path / "federation.yaml",
        data=DataRoots(relion_projects=(out,)),
    )
    result = harvest(facility)
    assert result.n_train + result.n_validation == len(scores(out))
    counts = result.label_counts()
    assert counts["train_selected"] + counts["validation_selected"] == len(person)


def test_a_failure_while_writing_changes_nothing(relion, tmp_path, monkeypatch, capsys):
    """All or nothing, markers included: a full disk half-way leaves the job as it was."""
    import errno

    from cryodiscovery.core.report import selection_files

    job = relion / JOB
    selection = write_selection(tmp_path / "s.csv", scores(job), flipped(scores(job)))
    before = snapshot(job)

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", "score_histogram.png")

    monkeypatch.setattr(selection_files, "render_score_histogram", full_disk)
    assert apply(job, selection) == 1
    err = capsys.readouterr().err.strip().splitlines()
    [line] = [text for text in err if "error" in text.lower()]
    assert line.endswith("score_histogram.png: No space left on device")
    assert snapshot(job) == before
    assert not list(job.glob(".staging-*"))


def test_a_copied_project_reads_its_own_inputs(relion, tmp_path, monkeypatch):
    """The record names the project folder it ran in; a copy of the project (moved
    disk, a colleague's copy) must read the copy's Class2D, never the original's."""
    copy = tmp_path / "elsewhere" / "project"
    shutil.copytree(relion, copy)
    shutil.move(relion / "Class2D", tmp_path / "original_class2d")  # out of reach
    original = snapshot(relion)
    monkeypatch.chdir(tmp_path)
    job = copy / JOB
    table = scores(job)
    selection = write_selection(tmp_path / "s.csv", table, flipped(table))
    assert apply(job, selection) == 0
    assert kept_of(scores(job)) == flipped(table)
    assert snapshot(relion) == original


def test_wrong_arguments_are_named_for_what_they_are(relion, tmp_path, capsys):
    job = relion / JOB
    selection = write_selection(tmp_path / "s.csv", scores(job), flipped(scores(job)))
    simulated = tmp_path / "sim"
    simulated.mkdir()
    (simulated / "run_record.json").write_text('{"command": "simulate", "config": {}}')
    cases = [
        ([str(job), "--selection", str(tmp_path)], "is a folder"),
        ([str(selection), "--selection", str(selection)], "is a file"),
        ([str(simulated), "--selection", str(selection)], "written by simulate"),
    ]
    before = snapshot(job)
    for argv, says in cases:
        capsys.readouterr()
        assert cli.main(["apply-selection", *argv]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert says in line
    assert snapshot(job) == before


def test_an_output_folder_copied_alone_reads_the_original_inputs(
    generated, tiny_model, tmp_path, monkeypatch
):
    """Only the results folder copied elsewhere (the project stays): its relative
    inputs are where the run was started, not beside the copy."""
    project = tmp_path / "project"
    shutil.copytree(generated["relion"], project)
    monkeypatch.chdir(project)
    argv = ["score", DATA_STAR, "--out", "res", "--model", str(tiny_model)]
    assert cli.main([*argv, *KEEP_ALL]) == 0
    copy = tmp_path / "elsewhere" / "res"
    shutil.copytree(project / "res", copy)
    monkeypatch.chdir(tmp_path)
    table = scores(copy)
    selection = write_selection(tmp_path / "s.csv", table, flipped(table))
    assert apply(copy, selection) == 0
    assert kept_of(scores(copy)) == flipped(table)


def test_scoring_again_over_a_persons_selection_warns(
    generated, tiny_model, tmp_path, monkeypatch, capsys
):
    project = tmp_path / "project"
    shutil.copytree(generated["relion"], project)
    monkeypatch.chdir(project)
    argv = ["score", DATA_STAR, "--out", "cd", "--model", str(tiny_model), *KEEP_ALL]
    assert cli.main(argv) == 0
    table = scores(project / "cd")
    selection = write_selection(tmp_path / "s.csv", table, flipped(table))
    assert apply(project / "cd", selection) == 0
    capsys.readouterr()
    assert cli.main(argv) == 0
    warned = [m for m in capsys.readouterr().err.splitlines() if "WARNING" in m]
    assert any("held a person's selection" in m and "s.csv" in m for m in warned)
