"""The class -> particle partition shared by the online and offline modes."""

from __future__ import annotations

import numpy as np
import pytest
from cryodiscovery.core.classes import Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import class_averages_from_datasets
from cryodiscovery.cryosparc_job.partition import (
    OUTPUT_NAMES,
    fill_allocated,
    partition,
    passthrough_fields,
    written_fields,
)
from cryosparc.dataset import Dataset
from cryosparc_testdata import make_class2d


def test_every_row_lands_in_exactly_one_output():
    data = make_class2d(n_classes=6, n_particles=200)
    parts = partition(data.templates, data.particles, [1, 4, 6])
    assert [name for name, _ in parts.outputs()] == list(OUTPUT_NAMES)
    sel, exc = parts.particles_selected, parts.particles_excluded
    assert len(sel) + len(exc) == len(data.particles)
    assert set(sel["uid"]).isdisjoint(exc["uid"])
    assert set(sel["uid"]) | set(exc["uid"]) == set(data.particles["uid"])
    assert set(np.unique(sel["alignments2D/class"])) == {0, 3, 5}
    assert not np.isin(exc["alignments2D/class"], [0, 3, 5]).any()
    assert list(parts.templates_selected["blob/idx"]) == [0, 3, 5]
    assert list(parts.templates_excluded["blob/idx"]) == [1, 2, 4]
    assert parts.selected_classes.tolist() == [0, 3, 5]


def test_rows_keep_all_their_fields_and_values():
    data = make_class2d(n_particles=60)
    parts = partition(data.templates, data.particles, [2])
    sel = parts.particles_selected
    assert sel.fields() == data.particles.fields()
    rows = {int(u): i for i, u in enumerate(data.particles["uid"])}
    for j, uid in enumerate(sel["uid"]):
        i = rows[int(uid)]
        assert sel["ctf/df1_A"][j] == data.particles["ctf/df1_A"][i]
        assert (
            sel["location/micrograph_path"][j]
            == data.particles["location/micrograph_path"][i]
        )


def test_nothing_or_everything_selected():
    data = make_class2d(n_classes=4, n_particles=30)
    none = partition(data.templates, data.particles, [])
    assert len(none.particles_selected) == 0 and len(none.templates_selected) == 0
    every = partition(data.templates, data.particles, [1, 2, 3, 4])
    assert len(every.particles_excluded) == 0 and len(every.particles_selected) == 30


def test_particles_of_an_unknown_class_are_an_input_error():
    data = make_class2d(n_classes=4, n_particles=30)
    data.particles["alignments2D/class"][0] = 9
    with pytest.raises(InputError, match="class index 9"):
        partition(data.templates, data.particles, [1], what="P1/J1")


def test_missing_fields_and_bad_selection_are_rejected():
    data = make_class2d(n_classes=4, n_particles=30)
    with pytest.raises(InputError, match="alignments2D/class"):
        partition(
            data.templates, data.particles.filter_prefixes(["blob"], copy=True), [1]
        )
    with pytest.raises(InputError, match="blob/idx"):
        partition(
            data.templates.filter_fields(["uid", "blob/path"], copy=True),
            data.particles,
            [1],
        )
    with pytest.raises(ValueError, match="selected class number 7"):
        partition(data.templates, data.particles, [7])
    doubled = Dataset.append(
        data.templates, data.templates.slice(0, 1), repeat_allowed=True
    )
    with pytest.raises(InputError, match="appears twice"):
        partition(doubled, data.particles, [1])


def test_written_and_passthrough_fields_follow_select_2d():
    data = make_class2d()
    written = written_fields(data.particles, "particle")
    passthrough = passthrough_fields(data.particles, "particle")
    assert written[0] == passthrough[0] == "uid"
    assert {f.split("/")[0] for f in written[1:]} == {"blob", "alignments2D"}
    assert {f.split("/")[0] for f in passthrough[1:]} == {"ctf", "location"}
    assert sorted(written[1:] + passthrough[1:]) == sorted(
        data.particles.fields(exclude_uid=True)
    )
    assert {
        f.split("/")[0] for f in written_fields(data.templates, "template")[1:]
    } == {"blob"}


def test_fill_allocated_copies_and_refuses_to_invent_fields():
    data = make_class2d(n_particles=20)
    rows = data.particles.slice(0, 5)
    allocated = Dataset({"uid": rows["uid"]}).add_fields(
        [("blob/path", "O"), ("alignments2D/class", "u4")]
    )
    filled = fill_allocated(allocated, rows, "test")
    assert list(filled["blob/path"]) == list(rows["blob/path"])
    assert np.array_equal(filled["alignments2D/class"], rows["alignments2D/class"])
    needs_more = Dataset({"uid": rows["uid"]}).add_fields(
        [("alignments2D/new_field", "f4")]
    )
    with pytest.raises(InputError, match="alignments2D/new_field"):
        fill_allocated(needs_more, rows, "test")
    shuffled = Dataset({"uid": rows["uid"][::-1].copy()}).add_fields(
        [("blob/idx", "u4")]
    )
    with pytest.raises(ValueError, match="rows do not match"):
        fill_allocated(shuffled, rows, "test")


def test_class_averages_from_datasets_metadata():
    data = make_class2d(n_classes=5, n_particles=80)
    classes = class_averages_from_datasets(
        data.templates,
        data.particles,
        data.stack,
        provenance=Provenance("cryosparc", (data.stack_path,), "P1/J1"),
    )
    assert classes.class_numbers.tolist() == [1, 2, 3, 4, 5]
    assigned = np.asarray(data.particles["alignments2D/class"])
    assert classes.field("particle_count").tolist() == [
        float((assigned == k).sum()) for k in range(5)
    ]
    ess = np.asarray(data.particles["alignments2D/class_ess"])
    assert classes.field("eca")[2] == pytest.approx(ess[assigned == 2].mean())
    assert np.allclose(classes.field("resolution_A"), data.templates["blob/res_A"])
    assert np.array_equal(classes.images[3], data.stack[3])
    assert classes.pixel_size == 2.0 and classes.provenance.job == "P1/J1"
    with pytest.raises(InputError, match="past the 2 images"):
        class_averages_from_datasets(data.templates, data.particles, data.stack[:2])
    stray = data.particles.copy()
    stray["alignments2D/class"][:3] = 7
    with pytest.raises(
        InputError, match=r"P1/J1 particles: .*3 particles in class index 7"
    ):
        class_averages_from_datasets(
            data.templates, stray, data.stack, particles_what="P1/J1 particles"
        )
    with pytest.raises(InputError, match="appears twice"):
        class_averages_from_datasets(
            data.templates.take(np.array([0, 1, 1])), None, data.stack
        )
