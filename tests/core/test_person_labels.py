"""Which corrected outputs training harvests as a person's labels: only those in which a
person decided a class (an untouched export of the review page is none), wherever the
output was written, the model's decisions kept exactly across corrections, and the
latest of several labelled selections of one Class2D job."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cryodiscovery.core import cli
from cryodiscovery.core.io.history import find_labelled_sets
from cryodiscovery.core.synthetic.export import write_relion_project
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run
from cryodiscovery.relion_external import cli as relion_cli
from support.person_selections import (
    DATA_STAR,
    KEEP_ALL,
    apply,
    flipped,
    kept_of,
    scores,
    write_selection,
)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A generated RELION project (Class2D/job001, its Select/job002), as the cwd."""
    run = simulate_run(SimulationConfig(n_classes=8, box_sizes=(64,)), 3)
    folder = tmp_path / "project"
    write_relion_project(run, folder)
    monkeypatch.chdir(folder)
    return folder


def score(out: Path | str, model: Path, *extra: str) -> Path:
    argv = ["score", DATA_STAR, "--out", str(out), "--model", str(model), *extra]
    assert cli.main(argv) == 0
    return Path(out).resolve()


def labels(found) -> set[int]:
    return {int(c) for c in found.class_numbers[found.labels == 1]}


def config_of(folder: Path) -> dict:
    return json.loads((folder / "run_record.json").read_text())["config"]


def test_an_unedited_export_is_written_but_no_label(
    project, tiny_model, tmp_path, capsys
):
    out = score(tmp_path / "cd_job001", tiny_model, *KEEP_ALL)
    model = scores(out)
    untouched = write_selection(tmp_path / "untouched.csv", model, kept_of(model))
    capsys.readouterr()
    assert apply(out, untouched) == 0
    printed = capsys.readouterr()
    assert "no class differs from the model's selection" in printed.err
    assert "no label" in printed.out
    assert config_of(out)["selection_source"] == "model"
    assert find_labelled_sets(out) == []

    one = {int(model["class_number"].iloc[0])}
    person = kept_of(model) ^ one
    assert apply(out, write_selection(tmp_path / "one.csv", model, person)) == 0
    done = config_of(out)["person_selection"]
    assert (done["n_person"], done["n_flipped"]) == (1, 1)
    (found,) = find_labelled_sets(out)
    assert labels(found) == person


def test_a_relion_job_outside_the_project_is_harvested(project, tiny_model, tmp_path):
    """An External job written elsewhere leads back to the Class2D job through its
    run record (relative to the recorded working folder)."""
    shutil.rmtree(project / "Select")  # no labels of its own
    elsewhere = tmp_path / "home" / "selections" / "job010"
    argv = ["--o", f"{elsewhere}/", "--in_parts", DATA_STAR, "--model", str(tiny_model)]
    assert relion_cli.main([*argv, *KEEP_ALL, "--j", "1"]) == 0
    assert find_labelled_sets(elsewhere) == []
    person = flipped(scores(elsewhere))
    selection = write_selection(tmp_path / "s.csv", scores(elsewhere), person)
    os.chdir(tmp_path)  # apply-selection and the harvest run from elsewhere
    assert apply(elsewhere, selection) == 0
    (found,) = find_labelled_sets(elsewhere)
    assert labels(found) == person


def test_the_models_decisions_survive_corrections_exactly(
    project, tiny_model, tmp_path
):
    """scores.csv rounds scores to 6 decimals; a threshold within 1e-7 of a score must
    not change the model's decision when the folder is corrected, again and again."""
    first = score("cd_first", tiny_model, *KEEP_ALL)
    exact = {
        int(c): s for c, s in config_of(first)["model_selection"]["scores"].items()
    }
    ranked = sorted(exact, key=exact.get)
    near = next(c for c in ranked[:-1] if round(exact[c], 6) != exact[c])
    s = exact[near]
    threshold = math.nextafter(s, round(s, 6))  # the rounded score is past it
    assert abs(threshold - s) < 1e-7
    out = score("cd_job001", tiny_model, "--threshold", repr(threshold))
    original = config_of(out)["model_selection"]
    assert (near in original["kept"]) == (s >= threshold)

    model = scores(out)
    untouched = write_selection(tmp_path / "same.csv", model, kept_of(model))
    assert apply(out, untouched) == 0
    assert config_of(out)["person_selection"]["n_flipped"] == 0
    other = next(c for c in ranked if c != near)
    person = kept_of(model) ^ {other}
    assert apply(out, write_selection(tmp_path / "one.csv", model, person)) == 0
    assert apply(out, write_selection(tmp_path / "two.csv", model, person)) == 0
    config = config_of(out)
    assert config["model_selection"] == original
    assert config["person_selection"]["flipped_classes"] == [other]
    assert kept_of(scores(out)) == person


def test_the_latest_labelled_selection_of_a_class2d_job_wins(
    project, tiny_model, tmp_path
):
    """A corrected ``cd_job001`` and ``Select/job002`` label the same Class2D job: the
    label file written last wins, whatever the digits of the folder names."""
    out = score(project / "cd_job001", tiny_model, *KEEP_ALL)
    person = flipped(scores(out))
    assert apply(out, write_selection(tmp_path / "s.csv", scores(out), person)) == 0
    (found,) = find_labelled_sets(project)
    assert labels(found) == person

    select = project / "Select/job002/backup_selection.star"
    later = (out / "scores.csv").stat().st_mtime + 10
    os.utime(select, (later, later))  # the person selected again in RELION
    (found,) = find_labelled_sets(project)
    truth = pd.read_csv(project / "truth.csv")
    assert labels(found) == set(truth.loc[truth["label"] == 1, "class_number"])
    assert labels(found) != person
