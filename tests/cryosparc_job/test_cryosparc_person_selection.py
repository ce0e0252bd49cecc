"""``cryodiscovery-cryosparc --selection FILE``: both modes save a person's selection
instead of the model's decisions (the fixed selector stands in for the model, whose
scores the scores table keeps); a selection of another job is refused before anything
is saved (online: before the External job is made)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.synthetic.cryosparc_jobs import write_cryosparc_class2d
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run
from cryodiscovery.cryosparc_job.cli import main
from cryosparc.dataset import Dataset
from cryosparc_testdata import keep


def selection_csv(path: Path, kept: set[int], n: int) -> Path:
    rows = [f"{c},{int(c in kept)}" for c in range(1, n + 1)]
    path.write_text("class_number,selected\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory) -> Path:
    run = simulate_run(SimulationConfig(n_classes=8, box_sizes=(64,)), 3)
    job = tmp_path_factory.mktemp("project") / "CS-demo" / "J12"
    write_cryosparc_class2d(run.classes, job, seed=5)
    return job


def test_offline_saves_the_person_selection(job_dir, tmp_path):
    person = {2, 5, 6}
    selection = selection_csv(tmp_path / "selection.csv", person, 8)
    out = tmp_path / "J13"
    argv = ["--job-dir", str(job_dir), "--out", str(out), "--selection", str(selection)]
    assert main(argv, select=keep([1, 2])) == 0
    particles = Dataset.load(job_dir / "J12_020_particles.cs")
    chosen = Dataset.load(out / "particles_selected.cs")
    left = Dataset.load(out / "particles_excluded.cs")
    assert set(chosen["uid"]).isdisjoint(left["uid"])
    assert set(chosen["uid"]) | set(left["uid"]) == set(particles["uid"])
    assert set((np.asarray(chosen["alignments2D/class"]) + 1).tolist()) == person
    templates = Dataset.load(out / "templates_selected.cs")
    assert set((np.asarray(templates["blob/idx"]) + 1).tolist()) == person
    config = json.loads((out / "run_record.json").read_text())["config"]
    assert config["selection_source"] == "person"
    flips = config["person_selection"]["flipped_classes"]
    assert flips == sorted(person ^ {1, 2})


def test_offline_refuses_a_selection_of_another_job(job_dir, tmp_path, capsys):
    selection = selection_csv(tmp_path / "selection.csv", {1}, 5)
    out = tmp_path / "J13"
    argv = ["--job-dir", str(job_dir), "--out", str(out), "--selection", str(selection)]
    assert main(argv, select=keep([1])) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"cryodiscovery-cryosparc: error: {selection}: 5 classes but the job has 8; "
        "a selection of another job?"
    )


def test_a_malformed_selection_is_refused_before_the_server_is_asked(tmp_path, capsys):
    selection = tmp_path / "selection.csv"
    selection.write_text("class_number,selected\n1,2\n")
    argv = ["--url", "http://127.0.0.1:9", "--project", "P1", "--job", "J1"]
    assert main([*argv, "--selection", str(selection)], select=keep([1])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"cryodiscovery-cryosparc: error: {selection}: line 2: selected '2' is not "
        "1 or 0"
    ]


def test_online_saves_the_person_selection(env, fake, class2d, tmp_path):
    person = {2, 4}
    n = len(class2d.templates)
    selection = selection_csv(tmp_path / "selection.csv", person, n)
    report = tmp_path / "report"
    argv = ["--project", "P1", "--job", fake.uids["class2d"], "--out", str(report)]
    assert main([*argv, "--selection", str(selection)], select=keep([1, 3])) == 0
    job = next(j for j in fake.jobs.values() if j.spec.type == "snowflake")
    assert job.status == "completed"
    chosen = fake.datasets[("P1", job.uid, "particles_selected")]
    left = fake.datasets[("P1", job.uid, "particles_excluded")]
    assert set(chosen["uid"]) | set(left["uid"]) == set(class2d.particles["uid"])
    assert set(chosen["uid"]).isdisjoint(left["uid"])
    assert set((np.asarray(chosen["alignments2D/class"]) + 1).tolist()) == person
    templates = fake.datasets[("P1", job.uid, "templates_selected")]
    assert set((np.asarray(templates["blob/idx"]) + 1).tolist()) == person
    texts = [e["text"] for e in fake.events[("P1", job.uid)] if e["type"] == "text"]
    assert any(t.startswith("Saving a person's selection") for t in texts)
    config = json.loads((report / "run_record.json").read_text())["config"]
    assert config["selection_source"] == "person"


def test_online_refuses_a_selection_of_another_job(env, fake, class2d, tmp_path):
    n = len(class2d.templates)
    selection = selection_csv(tmp_path / "selection.csv", {1}, n + 3)
    argv = ["--project", "P1", "--job", fake.uids["class2d"]]
    jobs = set(fake.jobs)
    assert main([*argv, "--selection", str(selection)], select=keep([1])) == 2
    assert set(fake.jobs) == jobs  # refused before an External job is made
    assert not any(j.spec.type == "snowflake" for j in fake.jobs.values())
