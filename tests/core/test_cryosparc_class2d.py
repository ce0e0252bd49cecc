"""cryoSPARC 2D classification and Select 2D: round trips through cryosparc.dataset,
the folder layout and field dtypes, and bad inputs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import (
    ALIGNMENTS2D,
    class_averages_from_datasets,
    read_cryosparc_class2d,
    read_cryosparc_selection,
    selection_source,
)
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.synthetic.cryosparc_jobs import (
    write_cryosparc_class2d,
    write_cryosparc_selection,
)
from cryosparc.dataset import Dataset

Factory = Callable[..., ClassAverages]
FIELDS = ["particle_count", "resolution_A", "eca", "mean_posterior"]


def _col(classes: ClassAverages, name: str) -> np.ndarray:
    return classes.field(name)


def test_round_trip(tmp_path: Path, class_factory: Factory) -> None:
    classes = class_factory()
    job = write_cryosparc_class2d(classes, tmp_path / "P3" / "J42", seed=4)
    back = read_cryosparc_class2d(tmp_path / "P3" / "J42")
    np.testing.assert_array_equal(back.classes.images, classes.images)
    np.testing.assert_array_equal(back.classes.class_numbers, np.arange(1, 13))
    for name in FIELDS:
        np.testing.assert_allclose(
            _col(back.classes, name), _col(classes, name), rtol=2e-6
        )
    counts = _col(classes, "particle_count")
    np.testing.assert_allclose(
        _col(back.classes, "class_distribution"), counts / counts.sum()
    )
    assert np.isnan(_col(back.classes, "accuracy_rotation_deg")).all()
    assert back.classes.pixel_size == pytest.approx(2.5)
    assert back.classes.provenance.format == "cryosparc"
    assert back.classes.provenance.job == "P3/J42"
    assert (
        job.classes.kinds == classes.kinds
        and (job.classes.labels == classes.labels).all()
    )
    assert len(back.particles) == counts.sum()


def test_datasets_builder_is_what_the_reader_uses(
    tmp_path: Path, class_factory: Factory
) -> None:
    """Datasets as a server hands them out give the classes read from the folder."""
    classes = class_factory(n=7, seed=3)
    write_cryosparc_class2d(classes, tmp_path / "P3" / "J42", seed=1)
    read = read_cryosparc_class2d(tmp_path / "P3" / "J42")
    order = np.argsort(read.classes.class_numbers)[::-1]  # rows in any order
    built = class_averages_from_datasets(
        read.class_averages.take(order),
        read.particles,
        classes.images,
        provenance=read.classes.provenance,
    )
    np.testing.assert_array_equal(
        built.class_numbers, read.classes.class_numbers[order]
    )
    np.testing.assert_array_equal(built.images, read.classes.images[order])
    np.testing.assert_array_equal(built.metadata, read.classes.metadata[order])
    assert built.pixel_size == read.classes.pixel_size
    no_particles = class_averages_from_datasets(
        read.class_averages, None, classes.images
    )
    assert np.isnan(no_particles.field("particle_count")).all()
    np.testing.assert_allclose(
        no_particles.field("resolution_A"), read.classes.field("resolution_A")
    )
    empty = class_averages_from_datasets(
        read.class_averages, Dataset.allocate(0, ALIGNMENTS2D), classes.images
    )
    assert (empty.field("particle_count") == 0).all()
    assert np.isnan(empty.field("eca")).all()


def test_folder_layout_fields_and_dtypes(
    tmp_path: Path, class_factory: Factory
) -> None:
    write_cryosparc_class2d(class_factory(), tmp_path / "P3" / "J42")
    folder = tmp_path / "P3" / "J42"
    assert sorted(p.name for p in folder.iterdir()) == [
        "J42_020_class_averages.cs",
        "J42_020_class_averages.mrc",
        "J42_020_particles.cs",
        "J42_passthrough_particles.cs",
        "job.json",
    ]
    templates = Dataset.load(folder / "J42_020_class_averages.cs")
    assert set(templates["blob/path"]) == {"J42/J42_020_class_averages.mrc"}
    np.testing.assert_array_equal(templates["blob/idx"], np.arange(12))
    raw = np.load(folder / "J42_020_particles.cs")  # a .cs file is a numpy record array
    for spec in ALIGNMENTS2D:
        assert raw.dtype[spec[0]].base == np.dtype(spec[1])
    assert raw.dtype["uid"] == np.dtype("<u8") and raw.dtype[
        "alignments2D/shift"
    ].shape == (2,)
    passthrough = Dataset.load(folder / "J42_passthrough_particles.cs")
    particles = Dataset.load(folder / "J42_020_particles.cs")
    np.testing.assert_array_equal(passthrough["uid"], particles["uid"])
    assert {"ctf/df1_A", "ctf/accel_kv", "location/micrograph_path"} <= set(
        passthrough.fields()
    )
    joined = particles.innerjoin(passthrough)
    assert len(joined) == len(particles)
    assert (np.asarray(particles["alignments2D/class_ess"]) >= 1.0).all()
    post = np.asarray(particles["alignments2D/class_posterior"])
    assert ((post > 0) & (post <= 1)).all()


def test_reading_a_cs_file_or_the_folder_is_the_same(
    tmp_path: Path, class_factory: Factory
) -> None:
    write_cryosparc_class2d(class_factory(), tmp_path / "J7")
    ref = read_cryosparc_class2d(tmp_path / "J7").classes.metadata
    for name in ("J7_020_class_averages.cs", "J7_020_particles.cs"):
        got = read_cryosparc_class2d(tmp_path / "J7" / name).classes.metadata
        np.testing.assert_array_equal(got, ref)


def test_latest_iteration_and_v2_names(tmp_path: Path, class_factory: Factory) -> None:
    write_cryosparc_class2d(class_factory(), tmp_path / "J5")
    folder = tmp_path / "J5"
    # an older iteration with fewer particles must not be picked
    for kind in ("class_averages.cs", "particles.cs"):
        shutil.copy(folder / f"J5_020_{kind}", folder / f"J5_019_{kind}")
    old = Dataset.load(folder / "J5_019_particles.cs")
    old.take(np.arange(10)).save(folder / "J5_019_particles.cs")
    assert read_cryosparc_class2d(folder).classes.field("particle_count").sum() > 10
    for kind in ("class_averages.cs", "particles.cs"):
        (folder / f"J5_020_{kind}").rename(folder / f"cryosparc_P1_J5_021_{kind}")
    (folder / "J5_019_class_averages.cs").unlink()
    assert (
        "cryosparc_P1_J5_021"
        in read_cryosparc_class2d(folder).classes.provenance.sources[0]
    )


def test_without_particles_counts_are_unknown(
    tmp_path: Path, class_factory: Factory
) -> None:
    write_cryosparc_class2d(class_factory(), tmp_path / "J9")
    (tmp_path / "J9" / "J9_020_particles.cs").unlink()
    job = read_cryosparc_class2d(tmp_path / "J9")
    assert np.isnan(job.classes.field("particle_count")).all()
    assert np.isfinite(job.classes.field("resolution_A")).all()
    assert len(job.particles) == 0


@pytest.mark.parametrize("pattern", ["mixed", "all", "none"])
def test_selection_round_trip(
    tmp_path: Path, class_factory: Factory, pattern: str
) -> None:
    classes = class_factory()
    labels = {"mixed": classes.labels, "all": np.ones(12), "none": np.zeros(12)}[
        pattern
    ]
    job = write_cryosparc_class2d(classes, tmp_path / "P1" / "J42")
    select = write_cryosparc_selection(job, labels, tmp_path / "P1" / "J43")
    names = {p.name for p in select.iterdir()}
    assert ("templates_excluded.cs" in names) == (pattern != "all")
    assert ("templates_selected.cs" in names) == (pattern != "none")
    np.testing.assert_array_equal(
        read_cryosparc_selection(select, n_classes=12), labels
    )
    assert selection_source(select) == tmp_path / "P1" / "J42"
    if pattern == "mixed":
        np.testing.assert_array_equal(read_cryosparc_selection(select), labels)
        kept = Dataset.load(select / "particles_selected.cs")
        assert np.isin(
            np.asarray(kept["alignments2D/class"]), np.flatnonzero(labels)
        ).all()
        assert len(kept) == classes.field("particle_count")[labels == 1].sum()


def test_selection_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a Select 2D job"):
        read_cryosparc_selection(tmp_path)


def _bad_stack_count(folder: Path) -> None:
    write_stack(folder / "J4_020_class_averages.mrc", np.ones((5, 32, 32)), 2.5)


def _bad_particle_class(folder: Path) -> None:
    parts = Dataset.load(folder / "J4_020_particles.cs")
    cls = np.asarray(parts["alignments2D/class"]).copy()
    cls[0] = 40
    parts["alignments2D/class"] = cls
    parts.save(folder / "J4_020_particles.cs")


def _no_blob_idx(folder: Path) -> None:
    data = Dataset.load(folder / "J4_020_class_averages.cs")
    data.drop_fields(["blob/idx"])
    data.save(folder / "J4_020_class_averages.cs")


BAD = {
    "stack missing": (
        lambda f: (f / "J4_020_class_averages.mrc").unlink(),
        "stack not found",
    ),
    "stack count": (_bad_stack_count, "12 classes but the stack .* has 5 images"),
    "particle class": (_bad_particle_class, "class indices with no class average"),
    "garbage cs": (
        lambda f: (f / "J4_020_class_averages.cs").write_bytes(b"junk" * 50),
        "not a readable cryoSPARC .cs file",
    ),
    "no blob/idx": (_no_blob_idx, "no field blob/idx"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(tmp_path: Path, class_factory: Factory, case: str) -> None:
    write_cryosparc_class2d(class_factory(), tmp_path / "J4")
    damage, message = BAD[case]
    damage(tmp_path / "J4")
    with pytest.raises(InputError, match=message) as err:
        read_cryosparc_class2d(tmp_path / "J4")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_not_a_2d_job(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a 2D classification job"):
        read_cryosparc_class2d(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="not a cryoSPARC"):
        read_cryosparc_class2d(tmp_path / "x.txt")


def test_writer_checks_arguments(tmp_path: Path, class_factory: Factory) -> None:
    with pytest.raises(ValueError, match="job folder like J42"):
        write_cryosparc_class2d(class_factory(), tmp_path / "job42")
    with pytest.raises(ValueError, match="pixel size"):
        write_cryosparc_class2d(class_factory(pixel_size=None), tmp_path / "J1")
    job = write_cryosparc_class2d(class_factory(), tmp_path / "J1")
    with pytest.raises(ValueError, match="values 0/1"):
        write_cryosparc_selection(job, np.full(12, -1), tmp_path / "J2")


def test_blob_shape_must_be_the_stacks(tmp_path: Path, class_factory: Factory) -> None:
    job = write_cryosparc_class2d(class_factory(n=4, box=80), tmp_path / "P3" / "J42")
    stack = next((tmp_path / "P3" / "J42").glob("*_class_averages.mrc"))
    write_stack(stack, np.zeros((4, 112, 112)), 2.5)
    with pytest.raises(InputError, match="blob/shape is 80x80 px") as info:
        read_cryosparc_class2d(tmp_path / "P3" / "J42")
    assert "_class_averages.cs" in str(info.value) and job is not None
