"""A person's selection file read and checked against a job: STAR rows for class numbers
the job lacks, who decided what (``n_person``, ``n_flipped``: only a person's decisions
make labels), classes without particles, and the run's working folder."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryodiscovery.core.correction import working_dir_of
from cryodiscovery.core.errors import InputError, NothingSelected
from cryodiscovery.core.io.star_tables import write_star
from cryodiscovery.core.person_selection import (
    apply_choice,
    choose,
    person_corrected,
    read_person_choice,
)
from cryodiscovery.core.report.selection_files import format_summary
from cryodiscovery.core.selection import Selection

#: cryoSPARC numbers classes blob/idx + 1: a Select 2D output has gaps.
GAPPED = np.array([5, 8, 11], dtype=np.int64)


def model_selection(
    numbers: np.ndarray = GAPPED, kept: tuple[bool, ...] = (True, False, True)
) -> Selection:
    n = len(numbers)
    return Selection(
        class_numbers=np.asarray(numbers, dtype=np.int64),
        scores=np.linspace(0.9, 0.1, n),
        selected=np.asarray(kept, dtype=bool),
        threshold=0.5,
        threshold_source="model",
        mode="image-only",
        model_sha256="0" * 64,
        model_name="m",
        reasons=tuple("" if k else "score" for k in kept),
    )


def page_star(path: Path, kept: set[int], max_class: int) -> Path:
    """backup_selection.star as the review page exports it: one rlnSelected per class
    number 1..max, 0 for numbers the job lacks (write_star's RELION layout)."""
    flags = [int(n in kept) for n in range(1, max_class + 1)]
    write_star(path, {"": pd.DataFrame({"rlnSelected": flags})})
    return path


def page_csv(path: Path, rows: list[tuple[int, int, str]]) -> Path:
    lines = [f"{n},{s},,{source}" for n, s, source in rows]
    path.write_text("class_number,selected,score,source\n" + "\n".join(lines) + "\n")
    return path


def test_the_pages_star_export_with_gapped_class_numbers(tmp_path):
    model = model_selection()
    star = page_star(tmp_path / "backup_selection.star", {8, 11}, max_class=11)
    choice = read_person_choice(star, n_classes=11)
    person, record = choose(model, choice)
    assert person.class_numbers.tolist() == [5, 8, 11]
    assert person.selected.tolist() == [False, True, True]
    assert record["person_selection"]["flipped_classes"] == [5, 8]
    assert record["selection_source"] == "person"


def test_a_star_row_keeping_a_class_the_job_lacks_is_refused(tmp_path):
    star = page_star(tmp_path / "backup_selection.star", {6, 8}, max_class=11)
    with pytest.raises(InputError) as err:
        apply_choice(model_selection(), read_person_choice(star, n_classes=11))
    assert str(err.value).startswith(f"{star}: keeps class 6, which the job does not")


def test_an_unedited_export_is_no_label(tmp_path, caplog):
    model = model_selection()
    rows = [(5, 1, "model"), (8, 0, "model"), (11, 1, "model")]
    with caplog.at_level(logging.WARNING):
        chosen, record = choose(
            model, read_person_choice(page_csv(tmp_path / "s.csv", rows))
        )
    assert chosen is model  # written as the model's: reasons and threshold unchanged
    assert record["selection_source"] == "model"
    done = record["person_selection"]
    assert (done["n_person"], done["n_flipped"]) == (0, 0)
    assert "no class differs from the model's selection" in caplog.text
    assert not person_corrected({"config": record})


def test_one_flip_or_one_confirmed_class_is_a_persons_label(tmp_path):
    model = model_selection()
    flip = [(5, 1, "model"), (8, 1, "person"), (11, 1, "model")]
    _, record = choose(model, read_person_choice(page_csv(tmp_path / "a.csv", flip)))
    assert record["person_selection"]["n_person"] == 1
    assert person_corrected({"config": record})
    confirm = [(5, 1, "person"), (8, 0, "model"), (11, 1, "model")]
    _, record = choose(model, read_person_choice(page_csv(tmp_path / "b.csv", confirm)))
    assert record["person_selection"] == {
        **record["person_selection"],
        "n_person": 1,
        "n_flipped": 0,
    }
    assert person_corrected({"config": record})


def test_a_star_file_counts_flips_only(tmp_path):
    model = model_selection()
    same = page_star(tmp_path / "same.star", {5, 11}, max_class=11)
    _, record = choose(model, read_person_choice(same, n_classes=11))
    assert record["selection_source"] == "model"
    assert not person_corrected({"config": record})


def test_older_records_count_flips():
    old = {"selection_source": "person", "person_selection": {"n_flipped": 0}}
    assert not person_corrected({"config": old})
    old["person_selection"] = {"n_flipped": 2}
    assert person_corrected({"config": old})


def test_the_model_decisions_are_recorded_at_full_precision():
    model = model_selection()
    _, record = choose(model, None)
    assert record["selection_source"] == "model"
    recorded = record["model_selection"]
    assert recorded["kept"] == [5, 11]
    assert [recorded["scores"][str(n)] for n in GAPPED] == model.scores.tolist()


def test_keeping_only_classes_without_particles_is_refused(tmp_path):
    model = model_selection()
    rows = [(5, 0, "person"), (8, 1, "person"), (11, 0, "person")]
    choice = read_person_choice(page_csv(tmp_path / "s.csv", rows))
    with pytest.raises(NothingSelected) as err:
        choose(model, choice, particle_counts=[10.0, 0.0, 7.0])
    assert str(err.value).startswith(f"{choice.path}: no particles kept")
    person, _ = choose(model, choice, particle_counts=[10.0, math.nan, 7.0])
    assert person.n_selected == 1  # an unknown count is not refused


def test_summary_counts_only_the_models_particle_rejections(class_factory):
    classes = class_factory(n=3)
    few = "min_particles (12 < 50)"
    selection = Selection(
        class_numbers=classes.class_numbers,
        scores=np.array([0.9, 0.8, 0.1]),
        selected=np.array([True, False, False]),
        threshold=0.5,
        threshold_source="model, overridden by a person",
        mode="image-only",
        model_sha256="0" * 64,
        model_name="m",
        reasons=("person: kept", f"person: rejected (model: {few})", few),
    )
    summary = format_summary(classes, selection, {})
    assert summary.splitlines()[0] == (
        "1 of 3 classes kept, 2 rejected (1 for too few particles)"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "in.star", "--out", "runs/cd1"],
        ["score", "in.star", "--out=runs/cd1"],
        ["cryodiscovery-relion", "--o=runs/cd1/"],
    ],
)
def test_the_working_folder_from_the_output_option(tmp_path, argv):
    job = tmp_path / "runs" / "cd1"
    job.mkdir(parents=True)
    record = {"argv": argv, "config": {}}
    assert working_dir_of(job, record) == tmp_path.resolve()
