"""``cryodiscovery-relion --selection FILE``: the External job passes a person's selection
on instead of the model's threshold decision (classes are still scored), and refuses a
selection of another job, or of only classes without particles, with
RELION_JOB_EXIT_FAILURE and no outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import starfile
from cryodiscovery.core import cli
from cryodiscovery.relion_external.cli import main
from cryodiscovery.relion_external.job_star import job_star_text

JOB = "External/job010/"
DATA = "Class2D/job001/run_it025_data.star"


def run(*extra: str) -> int:
    return main(["--o", JOB, "--in_parts", DATA, *extra, "--j", "1"])


def selection_csv(path: Path, kept: set[int], n: int = 10) -> Path:
    rows = [f"{c},{int(c in kept)},,person" for c in range(1, n + 1)]
    path.write_text("class_number,selected,score,source\n" + "\n".join(rows) + "\n")
    return path


def test_the_person_selection_is_passed_on(relion_project, monkeypatch, tmp_path):
    project = relion_project()
    monkeypatch.chdir(project)
    person = {1, 4, 7}  # whatever the model thinks of them
    selection = selection_csv(tmp_path / "selection.csv", person)
    assert run("--threshold", "0.99", "--selection", str(selection)) == 0
    out = project / JOB
    particles = starfile.read(out / "particles.star", always_dict=True)["particles"]
    assert set(particles["rlnClassNumber"]) == person
    averages = starfile.read(out / "class_averages.star")
    assert set(averages["rlnClassNumber"]) == person
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 10 and scores["score"].notna().all()  # still scored
    assert set(scores.loc[scores["selected"] == 1, "class_number"]) == person
    config = json.loads((out / "run_record.json").read_text())["config"]
    assert config["selection_source"] == "person"
    assert config["selection_file"] == str(selection)
    assert config["person_selection"]["n_selected"] == 3
    assert (out / "RELION_JOB_EXIT_SUCCESS").is_file()


def test_without_it_the_record_says_the_model_selected(relion_project, monkeypatch):
    project = relion_project()
    monkeypatch.chdir(project)
    assert run("--threshold", "0") == 0
    config = json.loads((project / JOB / "run_record.json").read_text())["config"]
    assert config["selection_source"] == "model"
    assert config["selection_file"] is None


def test_a_selection_of_another_job_fails_the_job(
    relion_project, monkeypatch, tmp_path, capsys
):
    project = relion_project()
    monkeypatch.chdir(project)
    selection = selection_csv(tmp_path / "selection.csv", {1, 2}, n=12)
    assert run("--selection", str(selection)) == 2
    out = project / JOB
    assert sorted(p.name for p in out.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"cryodiscovery-relion: error: {selection}: unknown")


def test_an_empty_value_means_no_selection(relion_project, monkeypatch):
    project = relion_project()
    monkeypatch.chdir(project)
    assert run("--selection", "--threshold", "0") == 0  # RELION drops empty values
    config = json.loads((project / JOB / "run_record.json").read_text())["config"]
    assert config["selection_source"] == "model"


def test_the_job_star_offers_the_parameter():
    assert "param7_label  selection" in job_star_text()


def test_a_selection_of_only_empty_classes_is_refused(
    relion_project, monkeypatch, tmp_path, capsys
):
    """Class 2 has no particles: keeping only it passes nothing on, refused naming the
    person's file, with --selection as with apply-selection (the folder untouched)."""
    project = relion_project()
    monkeypatch.chdir(project)
    selection = selection_csv(tmp_path / "selection.csv", {2})
    assert run("--selection", str(selection)) == 2
    out = project / JOB
    assert sorted(p.name for p in out.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"cryodiscovery-relion: error: {selection}: no particles")

    assert run("--threshold", "0") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli.main(["apply-selection", str(out), "--selection", str(selection)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"cryodiscovery apply-selection: error: {selection}: no")
    assert "0 particles" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
