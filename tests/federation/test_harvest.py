"""Harvesting: labelled classes only, de-duplicated, capped, with a stable validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.classes import ClassAverages, Label, Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.federation.config import Caps, DataRoots, FacilityConfig
from cryodiscovery.federation.harvest import fingerprints, harvest, split_validation


def _classes(
    n: int, seed: int, job: str, box: int = 16, unknown: int = 0
) -> ClassAverages:
    rng = np.random.default_rng(seed)
    labels = np.array([Label.SELECTED, Label.REJECTED] * n, dtype=np.int8)[:n]
    labels[:unknown] = Label.UNKNOWN
    return ClassAverages.create(
        rng.normal(size=(n, box, box)),
        labels=labels,
        provenance=Provenance("relion", (f"{job}/run_it025_data.star",), job),
    )


def _config(tmp_path: Path, roots: int = 1, **kwargs: object) -> FacilityConfig:
    folders = []
    for i in range(roots):
        (tmp_path / f"p{i}").mkdir(exist_ok=True)
        folders.append(tmp_path / f"p{i}")
    return FacilityConfig(
        source=tmp_path / "federation.yaml",
        data=DataRoots(relion_projects=tuple(folders)),
        **kwargs,  # type: ignore[arg-type]
    )


def test_only_labelled_classes_are_used_and_split_per_label(tmp_path: Path) -> None:
    sets = {tmp_path / "p0": [_classes(40, 1, "Class2D/job013", unknown=6)]}
    result = harvest(_config(tmp_path), finder=lambda root: sets[root])
    assert result.n_train + result.n_validation == 34
    (source,) = result.sources
    assert (source.n_selected, source.n_rejected, source.n_unlabelled) == (17, 17, 6)
    assert source.job == "Class2D/job013" and source.kind == "relion"
    counts = result.label_counts()
    assert counts["validation_selected"] == 3 and counts["validation_rejected"] == 3
    labels = np.concatenate([c.labels for c in (*result.train, *result.validation)])
    assert Label.UNKNOWN not in labels


def test_duplicates_across_roots_are_used_once(tmp_path: Path) -> None:
    job = _classes(20, 2, "Class2D/job008")
    other = _classes(10, 3, "Class2D/job020")
    sets = {tmp_path / "p0": [job], tmp_path / "p1": [job, other]}
    result = harvest(_config(tmp_path, roots=2), finder=lambda root: sets[root])
    assert result.n_duplicates == 20
    assert result.n_train + result.n_validation == 30
    seen = [fp for c in (*result.train, *result.validation) for fp in fingerprints(c)]
    assert len(seen) == len(set(seen)) == 30


def test_duplicates_with_disagreeing_labels_are_dropped(tmp_path: Path) -> None:
    job = _classes(20, 4, "Class2D/job008")
    flipped = job.with_labels(np.where(np.arange(20) < 5, 1 - job.labels, job.labels))
    sets = {tmp_path / "p0": [job, flipped]}
    result = harvest(_config(tmp_path), finder=lambda root: sets[root])
    assert result.n_conflicts == 5
    assert result.n_train + result.n_validation == 15


def test_validation_split_is_deterministic_and_stable_when_data_grow() -> None:
    a = _classes(30, 5, "Class2D/job001")
    train1, val1 = split_validation(a, 0.2, seed=0)
    _, val2 = split_validation(a, 0.2, seed=0)
    assert fingerprints(val1) == fingerprints(val2)
    _, val_other_seed = split_validation(a, 0.2, seed=1)
    assert set(fingerprints(val_other_seed)) != set(fingerprints(val1))
    assert not set(fingerprints(train1)) & set(fingerprints(val1))
    # More classes of the same job: no class moves from validation into training.
    grown = ClassAverages.create(
        np.concatenate([a.images, _classes(30, 6, "x").images]),
        labels=np.concatenate([a.labels, _classes(30, 6, "x").labels]),
    )
    grown_train, _ = split_validation(grown, 0.2, seed=0)
    assert not set(fingerprints(val1)) & set(fingerprints(grown_train))


def test_class_cap_is_respected_deterministically(tmp_path: Path) -> None:
    sets = {tmp_path / "p0": [_classes(50, 7, "a"), _classes(50, 8, "b", box=24)]}
    cfg = _config(tmp_path, caps=Caps(max_classes=30))
    first = harvest(cfg, finder=lambda root: sets[root])
    second = harvest(cfg, finder=lambda root: sets[root])
    assert first.n_train + first.n_validation == 30 and first.n_capped == 70
    assert [fingerprints(c) for c in first.train] == [
        fingerprints(c) for c in second.train
    ]
    assert {c.box_size for c in first.train} == {
        16,
        24,
    }  # sets of different boxes kept apart


def test_a_reader_failure_names_the_root(tmp_path: Path) -> None:
    def broken(root: Path) -> list[ClassAverages]:
        raise OSError("permission denied")

    with pytest.raises(
        InputError, match=r"p0: cannot harvest relion data \(permission denied\)"
    ):
        harvest(_config(tmp_path), finder=broken)
