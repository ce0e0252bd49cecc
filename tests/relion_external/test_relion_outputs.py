"""class_averages.star and backup_selection.star as RELION's Select job writes them."""

from __future__ import annotations

import numpy as np
import pytest
import starfile
from cryodiscovery.core.classes import Label
from cryodiscovery.core.io.relion_class2d import (
    read_relion_class2d,
    read_relion_selection,
)
from cryodiscovery.relion_external.outputs import (
    class_averages_table,
    write_backup_selection,
    write_class_averages,
)

DATA_STAR = "Class2D/job001/run_it025_data.star"
COLUMNS = [
    "rlnReferenceImage",
    "rlnPredictedClassScore",
    "rlnClassScore",
    "rlnClassDistribution",
    "rlnAccuracyRotations",
    "rlnAccuracyTranslationsAngst",
    "rlnEstimatedResolution",
]


@pytest.mark.parametrize("version", ["3.1", "5.0"])
def test_class_averages_round_trip(relion_project, tmp_path, version):
    project = relion_project(version=version, n=10)
    job = read_relion_class2d(project / DATA_STAR)
    model = job.model_classes
    scores = np.linspace(0.05, 0.95, 10)
    selected = scores > 0.5
    table = class_averages_table(model, job.classes, scores, selected)
    path = write_class_averages(
        tmp_path / "class_averages.star", table, version=version
    )

    back = starfile.read(path)
    assert list(back.columns[: len(COLUMNS)]) == COLUMNS
    assert back.columns[-1] == "rlnClassNumber"
    assert list(back["rlnClassNumber"]) == [6, 7, 8, 9, 10]
    assert list(back["rlnReferenceImage"]) == list(model["rlnReferenceImage"][5:])
    np.testing.assert_allclose(back["rlnPredictedClassScore"], scores[5:], atol=1e-6)
    np.testing.assert_allclose(back["rlnClassScore"], scores[5:], atol=1e-6)
    np.testing.assert_allclose(
        back["rlnEstimatedResolution"], model["rlnEstimatedResolution"][5:], rtol=1e-6
    )
    # RELION writes both as unnamed tables (data_)
    assert "\ndata_\n" in path.read_text()
    # the package's own reader of Select jobs gets the same selection back
    labels = read_relion_selection(path, n_classes=10)
    assert list(labels) == [Label.REJECTED] * 5 + [Label.SELECTED] * 5


def test_class_averages_follow_class_order_not_input_order(relion_project, tmp_path):
    project = relion_project(n=6)
    job = read_relion_class2d(project / DATA_STAR)
    reordered = job.classes.subset([5, 2, 0, 1, 3, 4])
    table = class_averages_table(
        job.model_classes,
        reordered,
        [0.9, 0.8, 0.7, 0.1, 0.1, 0.1],
        [True, True, True, False, False, False],
    )
    assert list(table["rlnClassNumber"]) == [1, 3, 6]
    np.testing.assert_allclose(table["rlnPredictedClassScore"], [0.7, 0.8, 0.9])


def test_backup_selection_has_a_row_per_class(tmp_path):
    path = write_backup_selection(
        tmp_path / "backup_selection.star", 7, [2, 5], version="4.0"
    )
    table = starfile.read(path)
    assert list(table.columns) == ["rlnSelected"]
    assert list(table["rlnSelected"]) == [0, 1, 0, 0, 1, 0, 0]
    labels = read_relion_selection(path, n_classes=7)
    assert list(np.flatnonzero(labels == Label.SELECTED) + 1) == [2, 5]
    assert "# version 30001" in path.read_text()


def test_backup_selection_rejects_classes_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="outside 1-3"):
        write_backup_selection(tmp_path / "b.star", 3, [4], version="5.0")
