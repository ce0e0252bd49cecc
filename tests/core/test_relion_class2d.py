"""RELION Class2D: write-then-read round trips, the real RELION 3.1 files, selections,
default_pipeline.star and every bad-input case."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.relion_class2d import (
    read_relion_class2d,
    read_relion_selection,
)
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.io.star_tables import read_loop_column, read_star, write_star
from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
from cryodiscovery.core.synthetic.relion_pipeline import (
    write_default_pipeline,
    write_relion_selection,
)

Factory = Callable[..., ClassAverages]
REAL_SELECTED_014 = [16, 26, 29, 37, 64, 79, 91, 96]


def _set_value(path: Path, key: str, value: str) -> None:
    """Set ``_key value`` in a key-value block of a STAR file."""
    text, count = re.subn(
        rf"^_{key}\s+\S+", f"_{key} {value}", path.read_text(), flags=re.M
    )
    assert count == 1, f"_{key} not in {path}"
    path.write_text(text)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_round_trip(tmp_path: Path, class_factory: Factory, version: str) -> None:
    classes = class_factory()
    job = write_relion_class2d(
        classes, tmp_path, "Class2D/job007", iteration=25, version=version
    )
    back = read_relion_class2d(tmp_path / "Class2D/job007/run_it025_data.star")
    np.testing.assert_array_equal(back.classes.images, classes.images)
    np.testing.assert_array_equal(back.classes.class_numbers, np.arange(1, 13))
    relion_fields = [0, 1, 2, 3, 4, 5]  # everything but cryoSPARC's eca/mean_posterior
    np.testing.assert_allclose(
        back.classes.metadata[:, relion_fields],
        classes.metadata[:, relion_fields],
        rtol=1e-5,
        atol=1e-6,
    )
    assert np.isnan(back.classes.metadata[:, 6:]).all()
    assert back.classes.pixel_size == pytest.approx(2.5)
    assert (back.version, back.algorithm, back.iteration) == (version, "EM", 25)
    assert back.project_dir == tmp_path.absolute()
    assert back.job == "Class2D/job007"
    assert (
        job.classes.kinds == classes.kinds
        and (job.classes.labels == classes.labels).all()
    )
    folder = tmp_path / "Class2D/job007"
    assert (folder / "job.star").is_file() == (version != "3.1")
    assert (folder / "RELION_JOB_EXIT_SUCCESS").is_file()
    star_version = "50001" if version == "5.0" else "30001"
    assert f"# version {star_version}" in (folder / "run_it025_model.star").read_text()
    parts = starfile.read(folder / "run_it025_data.star", always_dict=True)["particles"]
    assert len(parts) == int(classes.field("particle_count").sum())
    assert (
        parts["rlnImageName"]
        .str.match(r"^\d{6}@Extract/job005/Movies/mic_\d{4}\.mrcs$")
        .all()
    )
    for col in (
        "rlnMicrographName",
        "rlnDefocusU",
        "rlnGroupNumber",
        "rlnOriginXAngst",
    ):
        assert col in parts.columns


def test_every_run_file_and_the_folder_read_the_same(
    tmp_path: Path, class_factory: Factory
) -> None:
    write_relion_class2d(class_factory(), tmp_path, "Class2D/job002", iteration=3)
    folder = tmp_path / "Class2D/job002"
    reads = [
        read_relion_class2d(folder / f"run_it003_{kind}.star")
        for kind in ("data", "model", "optimiser")
    ]
    reads.append(read_relion_class2d(folder))
    for job in reads[1:]:
        np.testing.assert_array_equal(job.classes.metadata, reads[0].classes.metadata)
        assert job.model_star == reads[0].model_star and job.iteration == 3


def test_latest_iteration_of_a_folder_is_read(
    tmp_path: Path, class_factory: Factory
) -> None:
    write_relion_class2d(class_factory(n=6), tmp_path, "Class2D/job002", iteration=24)
    write_relion_class2d(
        class_factory(n=6, seed=3), tmp_path, "Class2D/job002", iteration=25
    )
    assert read_relion_class2d(tmp_path / "Class2D/job002").iteration == 25


def test_project_dir_from_cwd_and_stack_beside_star(
    tmp_path: Path, class_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_relion_class2d(class_factory(), tmp_path / "proj", "Class2D/job004")
    monkeypatch.chdir(tmp_path / "proj")
    job = read_relion_class2d(Path("Class2D/job004/run_it025_model.star"))
    assert job.project_dir == (tmp_path / "proj").absolute()
    # A copied job folder outside any project: the stack is found beside the star.
    moved = tmp_path / "elsewhere"
    (tmp_path / "proj/Class2D/job004").rename(moved)
    assert len(read_relion_class2d(moved / "run_it025_model.star").classes) == 12


def test_vdam_run_is_recognised(tmp_path: Path, class_factory: Factory) -> None:
    write_relion_class2d(
        class_factory(), tmp_path, "Class2D/job003", iteration=200, version="4.0"
    )
    folder = tmp_path / "Class2D/job003"
    _set_value(
        folder / "run_it200_optimiser.star", "rlnDoStochasticGradientDescent", "1"
    )
    job = read_relion_class2d(folder / "run_it200_data.star")
    assert (job.algorithm, job.version, job.iteration) == ("VDAM", "4.0", 200)
    # Without an optimiser.star, the gradient-moment columns of model.star tell it.
    (folder / "run_it200_optimiser.star").unlink()
    blocks = read_star(folder / "run_it200_model.star")
    table = blocks["model_classes"]
    assert isinstance(table, pd.DataFrame)
    table["rlnGradMoment1"] = [
        f"{k:06d}@Class2D/job003/run_it200_1moment.mrcs" for k in range(1, 13)
    ]
    write_star(folder / "run_it200_model.star", blocks)
    job = read_relion_class2d(folder / "run_it200_model.star")
    assert (job.algorithm, job.version, job.optimiser_star) == ("VDAM", "4.0", None)


def test_relion30_model_without_version_line(
    tmp_path: Path, class_factory: Factory
) -> None:
    write_relion_class2d(class_factory(), tmp_path, "Class2D/job003", version="3.1")
    model = tmp_path / "Class2D/job003/run_it025_model.star"
    (tmp_path / "Class2D/job003/run_it025_optimiser.star").unlink()
    blocks = read_star(model)
    table = blocks["model_classes"]
    assert isinstance(table, pd.DataFrame)
    angst = table.pop("rlnAccuracyTranslationsAngst")
    table["rlnAccuracyTranslations"] = angst / 2.5  # RELION 3.0 wrote pixels
    write_star(model, blocks, version=None)
    job = read_relion_class2d(model)
    assert job.version == "3.0"
    np.testing.assert_allclose(
        job.classes.field("accuracy_translation_A"), angst, rtol=1e-5
    )


def test_real_relion31_job013(relion31_project: Path) -> None:
    job = read_relion_class2d(relion31_project / "Class2D/job013/run_it025_data.star")
    counts = job.classes.field("particle_count")
    assert len(job.classes) == 100 and counts.sum() == 9482
    assert (job.version, job.algorithm, job.iteration) == ("3.1", "EM", 25)
    assert job.classes.pixel_size == pytest.approx(3.54)
    assert job.project_dir == relion31_project.absolute()
    # RELION writes inf resolution and -nan completeness for empty classes: NaN here.
    assert np.isnan(job.classes.field("resolution_A")[98])
    assert np.isnan(job.classes.field("fourier_completeness")[99])
    assert job.classes.field("accuracy_rotation_deg")[1] == 999.0
    parts = starfile.read(job.data_star, always_dict=True)["particles"]
    expected = np.bincount(parts["rlnClassNumber"].to_numpy(), minlength=101)[1:]
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(
        read_loop_column(job.data_star, "particles", "rlnClassNumber"),
        parts["rlnClassNumber"],
    )


def test_real_relion31_job008_without_data_star(relion31_project: Path) -> None:
    job = read_relion_class2d(relion31_project / "Class2D/job008/run_it025_model.star")
    assert len(job.classes) == 50 and not job.data_star.exists()
    assert np.isnan(job.classes.field("particle_count")).all()
    assert np.isfinite(job.classes.field("class_distribution")).all()


def test_real_selections(relion31_project: Path) -> None:
    select = relion31_project / "Select/job014"
    for name in ("backup_selection.star", "class_averages.star"):
        labels = read_relion_selection(select / name, n_classes=100)
        assert (np.flatnonzero(labels) + 1).tolist() == REAL_SELECTED_014
    # job009 was saved with --recenter: class_averages.star points at its own stack,
    # so the class numbers come from rlnClassNumber.
    for name in ("backup_selection.star", "class_averages.star"):
        labels = read_relion_selection(
            relion31_project / "Select/job009" / name, n_classes=50
        )
        assert (np.flatnonzero(labels) + 1).tolist() == [4, 24, 28, 34]


@pytest.mark.parametrize("version", ["3.1", "5.0"])
def test_selection_round_trip(
    tmp_path: Path, class_factory: Factory, version: str
) -> None:
    classes = class_factory()
    job = write_relion_class2d(classes, tmp_path, "Class2D/job003", version=version)
    backup = write_relion_selection(job, classes.labels, "Select/job004")
    folder = backup.parent
    assert backup == tmp_path / "Select/job004/backup_selection.star"
    for name in ("backup_selection.star", "class_averages.star", "particles.star"):
        np.testing.assert_array_equal(
            read_relion_selection(folder / name, 12), classes.labels
        )
    kept = starfile.read(folder / "particles.star", always_dict=True)["particles"]
    selected = classes.labels == 1
    assert len(kept) == int(classes.field("particle_count")[selected].sum())
    expected_input = (
        "run_it025_model.star" if version == "3.1" else "run_it025_optimiser.star"
    )
    assert f"--i Class2D/job003/{expected_input}" in (folder / "note.txt").read_text()


def test_gui_colours_count_as_selected(tmp_path: Path) -> None:
    path = tmp_path / "backup_selection.star"
    write_star(path, {"": pd.DataFrame({"rlnSelected": [0, 1, 2, 3, 4, 5, 6, 0]})})
    np.testing.assert_array_equal(read_relion_selection(path), [0, 1, 1, 1, 1, 1, 1, 0])
    with pytest.raises(InputError, match="8 rows but the Class2D job has 9 classes"):
        read_relion_selection(path, n_classes=9)


def test_selection_errors(tmp_path: Path) -> None:
    path = tmp_path / "class_averages.star"
    write_star(path, {"": pd.DataFrame({"rlnClassNumber": [2, 5]})})
    with pytest.raises(InputError, match="needs the number of classes"):
        read_relion_selection(path)
    with pytest.raises(InputError, match="outside 1-4"):
        read_relion_selection(path, n_classes=4)
    np.testing.assert_array_equal(read_relion_selection(path, 5), [0, 1, 0, 0, 1])


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_default_pipeline(tmp_path: Path, class_factory: Factory, version: str) -> None:
    job = write_relion_class2d(
        class_factory(), tmp_path, "Class2D/job003", version=version
    )
    write_relion_selection(job, class_factory().labels, "Select/job004")
    path = write_default_pipeline(
        tmp_path,
        version,
        [
            ("Class2D/job003", "relion.class2d"),
            ("Select/job004", "relion.select.interactive"),
        ],
    )
    blocks = starfile.read(path, always_dict=True)
    nodes = blocks["pipeline_nodes"].set_index("rlnPipeLineNodeName")
    edges = blocks["pipeline_input_edges"]
    assert blocks["pipeline_general"]["rlnPipeLineJobCounter"] == 5
    if version == "3.1":
        assert (
            nodes.loc["Class2D/job003/run_it025_model.star", "rlnPipeLineNodeType"] == 8
        )
        assert (
            "Class2D/job003/run_it025_model.star"
            in edges["rlnPipeLineEdgeFromNode"].tolist()
        )
        return
    labels = nodes["rlnPipeLineNodeTypeLabel"]
    data_label = {
        "4.0": "ParticlesData.star.relion.class2d",
        "5.0": "ParticleGroupMetadata.star.relion.class2d",
    }
    assert labels["Class2D/job003/run_it025_data.star"] == data_label[version]
    assert ("rlnPipeLineNodeTypeLabelDepth" in nodes.columns) == (version == "5.0")
    assert ("# version 50001" in path.read_text()) == (version == "5.0")
    row = edges[edges["rlnPipeLineEdgeProcess"] == "Select/job004/"]
    assert row["rlnPipeLineEdgeFromNode"].tolist() == [
        "Class2D/job003/run_it025_optimiser.star"
    ]


def test_star_write_read_round_trip(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "rlnA": [1.5, -2.25e-5, np.inf],
            "rlnB": [1, 2, 3],
            "rlnC": ["x@y.mrcs", "a b", ""],
        }
    )
    path = tmp_path / "t.star"
    write_star(path, {"general": {"rlnPixelSize": 1.25, "rlnName": "z"}, "rows": table})
    back = starfile.read(path, always_dict=True)
    assert back["general"] == {"rlnPixelSize": 1.25, "rlnName": "z"}
    np.testing.assert_allclose(back["rows"]["rlnA"][:2], [1.5, -2.25e-5])
    assert back["rows"]["rlnC"].tolist()[:2] == ["x@y.mrcs", "a b"]


def _reference_field(value: object, tiny_column: bool) -> str:
    """One field as RELION prints it, formatted on its own (the writer's contract)."""
    if isinstance(value, float):
        if not np.isfinite(value):
            return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        return f"{value:.6e}" if tiny_column else f"{value:.6f}"
    if isinstance(value, str):
        quote = not value or any(c in value for c in " \t\n")
        return '"' + value.replace('"', "'") + '"' if quote else value
    return str(int(value))  # type: ignore[call-overload]


def test_large_loop_text_is_exact_and_reads_back(tmp_path: Path) -> None:
    """Columns formatted per value and per distinct value (repeats) give the text of
    formatting every field on its own; starfile reads back the same values."""
    rng = np.random.default_rng(3)
    n = 3000
    spread = rng.normal(0.0, 2000.0, n)
    spread[[5, 6, 7, 8]] = [np.nan, np.inf, -np.inf, -0.0]
    spread[9] = 0.0078125  # a tie at the 7th decimal (%.6f rounds it to even)
    repeated = rng.choice([0.0, -0.0, 1.5, 31000.25, np.nan], n)
    tiny = rng.choice([2.5e-5, -1e-9, 0.0, 3.0], n)
    table = pd.DataFrame(
        {
            "rlnSpread": spread,
            "rlnRepeated": repeated,
            "rlnTiny": tiny,
            "rlnFlag": rng.random(n) < 0.5,
            "rlnNumber": rng.integers(-(10**12), 10**12, n),
            "rlnName": [f"{i:06d}@Extract/a.mrcs" for i in range(n)],
            "rlnMixed": rng.choice(["mic 1.mrc", "", "x", 'say "hi"'], n),
        }
    )
    path = tmp_path / "loop.star"
    write_star(path, {"rows": table})
    lines = path.read_text().splitlines()
    rows = lines[lines.index("_rlnMixed #7 ") + 1 :][:n]
    records = table.astype(object).to_numpy()
    expected = [
        " ".join(_reference_field(v, c == 2) for c, v in enumerate(rec)) + " "
        for rec in records
    ]
    assert rows == expected
    assert rows[9].startswith("0.007812 ") and rows[8].startswith("-0.000000 ")
    back = starfile.read(path)
    np.testing.assert_allclose(
        back["rlnSpread"], spread, rtol=0, atol=5e-7, equal_nan=True
    )
    assert back["rlnNumber"].tolist() == table["rlnNumber"].tolist()
    assert back["rlnName"].tolist() == table["rlnName"].tolist()


def _written(tmp_path: Path, class_factory: Factory) -> Path:
    write_relion_class2d(class_factory(), tmp_path, "Class2D/job003", version="5.0")
    return tmp_path / "Class2D/job003"


def _drop_column(folder: Path) -> None:
    blocks = read_star(folder / "run_it025_model.star")
    table = blocks["model_classes"]
    assert isinstance(table, pd.DataFrame)
    write_star(
        folder / "run_it025_model.star",
        {**blocks, "model_classes": table.drop(columns="rlnReferenceImage")},
    )


def _add_particle_of_class_99(folder: Path) -> None:
    header_end = "_rlnNrOfSignificantSamples #25 \n"
    row = "1 1 99 0 0 1@a.mrcs m.mrc 1 4 0.1 1 1 0 0 1 0 1 0 0 0 0 0.8 1 0.5 1 \n"
    _edit(folder / "run_it025_data.star", header_end, header_end + row)


BAD_CASES = {
    "missing model": (
        lambda f: (f / "run_it025_model.star").unlink(),
        "file not found",
    ),
    "missing column": (
        _drop_column,
        "data_model_classes has no column _rlnReferenceImage",
    ),
    "class count": (
        lambda f: write_stack(f / "run_it025_classes.mrcs", np.ones((11, 32, 32)), 2.5),
        "12 classes but the stack .* has 11 images",
    ),
    "stack missing": (
        lambda f: (f / "run_it025_classes.mrcs").unlink(),
        "class-average stack not found",
    ),
    "unknown version": (
        lambda f: _edit(
            f / "run_it025_model.star", "# version 50001", "# version 90001"
        ),
        "unsupported STAR version 90001",
    ),
    "unreadable": (
        lambda f: (f / "run_it025_model.star").write_text("garbage\n\x00\x01"),
        "no data_model_general|unreadable|no data block",
    ),
    "3D model": (
        lambda f: _set_value(
            f / "run_it025_model.star", "rlnReferenceDimensionality", "3"
        ),
        "dimensionality 3",
    ),
    "bad reference": (
        lambda f: _edit(f / "run_it025_model.star", "000003@Class2D", "3:Class2D"),
        "not of the form NNNNNN@file.mrcs",
    ),
    "class beyond": (_add_particle_of_class_99, "rlnClassNumber 99 outside 1-12"),
    "newer RELION": (
        lambda f: _edit(
            f / "run_it025_optimiser.star", "version 5.0.0", "version 9.1.0"
        ),
        "unsupported RELION version 9.1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, class_factory: Factory, case: str
) -> None:
    folder = _written(tmp_path, class_factory)
    damage, message = BAD_CASES[case]
    damage(folder)
    with pytest.raises(InputError, match=message) as err:
        read_relion_class2d(folder / "run_it025_data.star")
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_not_a_run_file(tmp_path: Path) -> None:
    path = tmp_path / "particles.star"
    path.write_text("data_\nloop_\n_rlnImageName\n1@a.mrcs\n")
    with pytest.raises(InputError, match="not a RELION Class2D output"):
        read_relion_class2d(path)
    with pytest.raises(InputError, match=r"no run_itNNN_model\.star"):
        read_relion_class2d(tmp_path)


def test_writer_checks_arguments(tmp_path: Path, class_factory: Factory) -> None:
    with pytest.raises(ValueError, match="version"):
        write_relion_class2d(class_factory(), tmp_path, version="2.1")
    with pytest.raises(ValueError, match="job must look like"):
        write_relion_class2d(class_factory(), tmp_path, job="Class2D")
    with pytest.raises(ValueError, match="pixel size"):
        write_relion_class2d(class_factory(pixel_size=None), tmp_path)
    assert not (tmp_path / "Class2D").exists()


def test_box_of_the_star_files_must_be_the_stacks(
    tmp_path: Path, class_factory: Factory
) -> None:
    job = write_relion_class2d(class_factory(n=4, box=64), tmp_path, "Class2D/job007")
    write_stack(job.classes_mrcs, np.zeros((4, 96, 96)), 2.5)
    with pytest.raises(InputError, match="rlnOriginalImageSize is 64 px") as info:
        read_relion_class2d(job.data_star)
    assert str(job.model_star) in str(info.value)
    # without the model's statement, data_optics rlnImageSize says the same
    _edit(job.model_star, "_rlnOriginalImageSize", "_rlnUnusedImageSize")
    with pytest.raises(InputError, match="data_optics rlnImageSize is 64 px") as info:
        read_relion_class2d(job.data_star)
    assert str(job.data_star) in str(info.value)
