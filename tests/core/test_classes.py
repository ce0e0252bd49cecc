"""The ClassAverages data model: shapes are checked, missing metadata stays NaN with a mask."""

from __future__ import annotations

import numpy as np
import pytest
from cryodiscovery.core.classes import METADATA_FIELDS, ClassAverages, Label


def _set(n: int = 4) -> ClassAverages:
    rng = np.random.default_rng(0)
    return ClassAverages.create(
        rng.normal(size=(n, 16, 16)),
        pixel_size=2.0,
        metadata={"particle_count": np.arange(n) * 10.0, "resolution_A": [8.0] * n},
        labels=[1, 0, -1, 1][:n],
        kinds=["good", "ice", "", "good"][:n],
    )


def test_missing_metadata_is_nan_and_masked():
    s = _set()
    assert s.images.dtype == np.float32
    assert s.field("particle_count").tolist() == [0, 10, 20, 30]
    assert np.isnan(s.field("eca")).all()
    mask = s.metadata_mask
    assert mask[:, METADATA_FIELDS.index("resolution_A")].all()
    assert not mask[:, METADATA_FIELDS.index("accuracy_rotation_deg")].any()
    assert s.has_metadata


def test_image_only_set_has_no_metadata_and_unknown_labels():
    s = ClassAverages.create(np.zeros((3, 8, 8)))
    assert not s.has_metadata
    assert (s.labels == Label.UNKNOWN).all()
    assert s.class_numbers.tolist() == [1, 2, 3]
    assert s.pixel_size is None


def test_subset_keeps_rows_together():
    s = _set()
    sub = s.subset(s.labels == Label.SELECTED)
    assert sub.class_numbers.tolist() == [1, 4]
    assert sub.kinds == ("good", "good")
    np.testing.assert_array_equal(sub.images[1], s.images[3])
    assert sub.field("particle_count").tolist() == [0, 30]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": np.zeros((2, 4))}, "images must be"),
        ({"images": np.zeros((2, 4, 4)), "labels": [1]}, "labels has shape"),
        ({"images": np.zeros((2, 4, 4)), "kinds": ["a"]}, "kinds has 1"),
        ({"images": np.zeros((2, 4, 4)), "pixel_size": -1.0}, "pixel size"),
        ({"images": np.zeros((2, 4, 4)), "metadata": {"colour": [1, 2]}}, "colour"),
    ],
)
def test_bad_shapes_and_names_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassAverages.create(**kwargs)
