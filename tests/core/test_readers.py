"""read_class_averages dispatch and find_labelled_sets harvesting over mixed project trees."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.history import automatic_selection, find_labelled_sets
from cryodiscovery.core.io.readers import read_class_averages
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.synthetic.cryosparc_jobs import (
    write_cryosparc_class2d,
    write_cryosparc_selection,
)
from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
from cryodiscovery.core.synthetic.relion_pipeline import (
    write_default_pipeline,
    write_relion_selection,
)

Factory = Callable[..., ClassAverages]


def test_dispatch_by_kind(tmp_path: Path, class_factory: Factory) -> None:
    classes = class_factory()
    write_relion_class2d(classes, tmp_path / "relion", "Class2D/job002")
    write_cryosparc_class2d(classes, tmp_path / "cs" / "J3")
    write_stack(tmp_path / "bare.mrcs", classes.images, None)
    inputs = {
        "relion": [
            tmp_path / "relion/Class2D/job002/run_it025_data.star",
            tmp_path / "relion/Class2D/job002",
        ],
        "cryosparc": [tmp_path / "cs/J3", tmp_path / "cs/J3/J3_020_class_averages.cs"],
        "mrcs": [tmp_path / "bare.mrcs"],
    }
    for fmt, paths in inputs.items():
        for path in paths:
            got = read_class_averages(path)
            assert got.provenance.format == fmt
            np.testing.assert_array_equal(got.images, classes.images)
    assert read_class_averages(tmp_path / "bare.mrcs").pixel_size is None
    assert read_class_averages(
        tmp_path / "bare.mrcs", angpix=1.2
    ).pixel_size == pytest.approx(1.2)
    relion = read_class_averages(tmp_path / "relion/Class2D/job002", angpix=5.0)
    assert relion.pixel_size == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.star", "file not found"),
        ("notes.txt", "not a RELION Class2D"),
        ("empty", "not a RELION"),
    ],
)
def test_dispatch_errors(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    if name == "notes.txt":
        path.write_text("hello")
    elif name == "empty":
        path.mkdir()
    with pytest.raises(InputError, match=message):
        read_class_averages(path)
    with pytest.raises(InputError, match="angpix"):
        read_class_averages(path, angpix=-1.0)


def _relion_project(
    root: Path, factory: Factory, version: str = "5.0"
) -> ClassAverages:
    classes = factory(seed=7)
    job = write_relion_class2d(classes, root, "Class2D/job003", version=version)
    write_relion_selection(job, classes.labels, "Select/job004")
    write_default_pipeline(
        root,
        version,
        [
            ("Class2D/job003", "relion.class2d"),
            ("Select/job004", "relion.select.interactive"),
        ],
    )
    return classes


def test_find_labelled_sets_in_a_mixed_tree(
    tmp_path: Path, class_factory: Factory, relion31_project: Path
) -> None:
    relion = _relion_project(tmp_path / "a" / "relion5", class_factory)
    cs_classes = class_factory(n=9, seed=2)
    job = write_cryosparc_class2d(cs_classes, tmp_path / "b" / "CS-x" / "J10")
    write_cryosparc_selection(job, cs_classes.labels, tmp_path / "b" / "CS-x" / "J11")
    sets = find_labelled_sets(tmp_path)
    by_job = {(s.provenance.format, s.provenance.job): s for s in sets}
    assert set(by_job) == {
        ("relion", "Class2D/job003"),
        ("cryosparc", "CS-x/J10"),
        ("relion", "Class2D/job008"),
        ("relion", "Class2D/job013"),
    }
    np.testing.assert_array_equal(
        by_job["relion", "Class2D/job003"].labels, relion.labels
    )
    np.testing.assert_array_equal(
        by_job["cryosparc", "CS-x/J10"].labels, cs_classes.labels
    )
    real = by_job["relion", "Class2D/job013"]
    assert (real.class_numbers[real.labels == 1]).tolist() == [
        16,
        26,
        29,
        37,
        64,
        79,
        91,
        96,
    ]
    assert int(real.field("particle_count").sum()) == 9482
    assert (by_job["relion", "Class2D/job008"].labels == 1).sum() == 4


def test_source_found_from_the_pipeline_alone(
    tmp_path: Path, class_factory: Factory
) -> None:
    classes = _relion_project(tmp_path, class_factory, version="4.0")
    for name in ("note.txt", "job.star", "class_averages.star"):
        (tmp_path / "Select/job004" / name).unlink()
    (sets,) = find_labelled_sets(tmp_path)
    np.testing.assert_array_equal(sets.labels, classes.labels)
    (tmp_path / "default_pipeline.star").unlink()
    assert find_labelled_sets(tmp_path) == []


def test_same_class2d_selected_twice_is_returned_once(
    tmp_path: Path, class_factory: Factory
) -> None:
    classes = class_factory()
    job = write_relion_class2d(classes, tmp_path, "Class2D/job003", version="3.1")
    write_relion_selection(job, classes.labels, "Select/job004")
    write_relion_selection(job, 1 - classes.labels, "Select/job009")
    (only,) = find_labelled_sets(tmp_path)
    np.testing.assert_array_equal(
        only.labels, 1 - classes.labels
    )  # the later Select job


def test_generated_folder_with_ground_truth_beside_the_run(
    tmp_path: Path, class_factory: Factory
) -> None:
    classes = class_factory()
    job = write_relion_class2d(classes, tmp_path, "Class2D/job001")
    backup = write_relion_selection(job, classes.labels, "Select/job002")
    backup.rename(tmp_path / "Class2D/job001/backup_selection.star")
    (only,) = find_labelled_sets(tmp_path)
    np.testing.assert_array_equal(only.labels, classes.labels)


def test_unreadable_sets_are_skipped_with_a_warning(
    tmp_path: Path, class_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    _relion_project(tmp_path, class_factory)
    (tmp_path / "Class2D/job003/run_it025_classes.mrcs").unlink()
    with caplog.at_level(logging.WARNING):
        assert find_labelled_sets(tmp_path) == []
    assert "class-average stack not found" in caplog.text


def test_automatic_selections_are_not_labels(
    tmp_path: Path, class_factory: Factory
) -> None:
    _relion_project(tmp_path, class_factory)
    note = tmp_path / "Select/job004/note.txt"
    note.write_text(note.read_text().replace("relion_display", "relion_class_ranker"))
    assert find_labelled_sets(tmp_path) == []


def test_selection_of_job_1000_is_later_than_job_999(
    tmp_path: Path, class_factory: Factory
) -> None:
    classes = class_factory()
    job = write_relion_class2d(classes, tmp_path, "Class2D/job003", version="3.1")
    write_relion_selection(job, 1 - classes.labels, "Select/job999")
    write_relion_selection(job, classes.labels, "Select/job1000")
    (only,) = find_labelled_sets(tmp_path)
    np.testing.assert_array_equal(only.labels, classes.labels)


def test_cryodiscovery_relion_job_outputs_are_not_labels(
    tmp_path: Path, class_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The External job's own selection (run in-process, as RELION runs it) must never
    come back as training labels: only the person's Select job is harvested."""
    from cryodiscovery.relion_external.cli import main as relion_main
    from cryodiscovery.relion_external.job_star import write_job_star

    classes = _relion_project(tmp_path, class_factory)
    monkeypatch.chdir(tmp_path)
    argv = [
        "--o",
        "External/job005/",
        "--in_parts",
        "Class2D/job003/run_it025_data.star",
    ]
    # Threshold 0 keeps every class: labels unlike the person's alternating ones.
    assert relion_main([*argv, "--threshold", "0", "--j", "1"]) == 0
    out = tmp_path / "External/job005"
    written = {p.name for p in out.iterdir()}
    assert {"backup_selection.star", "class_averages.star", "particles.star"} <= written
    assert "cryodiscovery" in (out / "run_record.json").read_text()

    (only,) = find_labelled_sets(tmp_path)
    assert only.provenance.job == "Class2D/job003"
    np.testing.assert_array_equal(only.labels, classes.labels)

    shutil.rmtree(tmp_path / "Select")
    assert find_labelled_sets(tmp_path) == []
    # Without its run record the folder is still known: RELION's job.star names the
    # executable, and a folder under External/ is a program's output anyway.
    (out / "run_record.json").unlink()
    write_job_star(out, "/opt/env/bin/cryodiscovery-relion")
    assert find_labelled_sets(tmp_path) == []
    moved = tmp_path / "Select/job006"
    moved.parent.mkdir()
    out.rename(moved)
    assert find_labelled_sets(tmp_path) == []
    (moved / "job.star").unlink()
    (moved / "note.txt").write_text(
        " ++++ with the following command(s): \n`which cryodiscovery-relion` "
        "--o External/job005/ --in_parts Class2D/job003/run_it025_data.star\n"
    )
    assert find_labelled_sets(tmp_path) == []
    (moved / "note.txt").write_text("`which relion_display` --gui\n")
    assert len(find_labelled_sets(tmp_path)) == 1  # the guard is not a blanket refusal


def test_cryodiscovery_cryosparc_outputs_are_not_labels(
    tmp_path: Path, class_factory: Factory
) -> None:
    """Offline outputs of cryodiscovery-cryosparc (templates_selected.cs + run record)
    and an External (snowflake) job's outputs are not labels; Select 2D's are."""
    from cryodiscovery.cryosparc_job.cli import main as cryosparc_main

    classes = class_factory(n=9, seed=2)
    project = tmp_path / "CS-x"
    job = write_cryosparc_class2d(classes, project / "J10")
    write_cryosparc_selection(job, classes.labels, project / "J11")
    out = project / "J12"
    argv = ["--job-dir", str(project / "J10"), "--out", str(out), "--threshold", "0"]
    assert cryosparc_main(argv) == 0
    assert (out / "templates_selected.cs").is_file()
    assert "cryodiscovery-cryosparc" in (out / "run_record.json").read_text()

    (only,) = find_labelled_sets(tmp_path)
    assert only.provenance.job == "CS-x/J10"
    np.testing.assert_array_equal(only.labels, classes.labels)

    shutil.rmtree(project / "J11")
    assert find_labelled_sets(tmp_path) == []
    # The online mode's outputs live in a cryoSPARC External job (type "snowflake").
    (out / "run_record.json").unlink()
    (out / "job.json").write_text('{"uid": "J12", "type": "snowflake"}\n')
    assert find_labelled_sets(tmp_path) == []
    (out / "job.json").write_text('{"uid": "J12", "type": "select_2D"}\n')
    assert len(find_labelled_sets(tmp_path)) == 1


@pytest.mark.parametrize(
    ("name", "text", "maker"),
    [
        ("run_record.json", '{"command": "score"}', "cryodiscovery (score)"),
        ("run_record.json", "{not json", "cryodiscovery (run_record.json)"),
        ("run_record.json", '{"command": "simulate"}', None),
        ("note.txt", "`which relion_class_ranker` --opt x", "relion_class_ranker"),
        ("note.txt", "`which relion_display` --gui --i run_it025_model.star", None),
        ("job.star", "data_job\n_rlnJobType 99\n", "a RELION External job (job.star)"),
        ("job.star", "data_job\n_rlnJobType 30\n", None),
        ("job.star", "loop_\n fn_exe /x/bin/cryodiscovery-relion\n", "cryodiscovery"),
        ("job.star", "loop_\n fn_exe /x/cryodiscovery_data/my_tool\n", None),
        ("job.json", '{"type": "select_2D_auto"}', "automatic cryoSPARC"),
        ("job.json", '{"type": "select_2D"}', None),
    ],
)
def test_automatic_selection_markers(
    tmp_path: Path, name: str, text: str, maker: str | None
) -> None:
    folder = tmp_path / "Select/job004"
    folder.mkdir(parents=True)
    (folder / name).write_text(text)
    found = automatic_selection(folder)
    if maker is None:
        assert found is None
    else:
        assert found is not None and maker in found
