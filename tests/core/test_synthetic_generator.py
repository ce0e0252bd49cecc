"""The synthetic Class2D generator: labels and kinds as asked, options honoured, metadata
consistent with the images, determinism, and no label-dependent conventions."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from cryodiscovery.core.classes import METADATA_FIELDS, Label
from cryodiscovery.core.synthetic.generator import (
    GOOD_KINDS,
    JUNK_KINDS,
    SimulationConfig,
    plan_kinds,
    simulate_class_averages,
    simulate_run,
    simulate_runs,
)
from cryodiscovery.core.synthetic.projection import soft_circular_mask

SMALL = SimulationConfig(
    n_classes=24, box_sizes=(64,), junk_fraction=0.5, metadata_style="all"
)


@functools.cache
def _run(seed: int, **kw: object):  # cached: several tests look at the same runs
    return simulate_run(SimulationConfig(**{**SMALL.__dict__, **kw}), seed)


def test_labels_follow_kinds_and_the_junk_fraction():
    for fraction, n in ((0.3, 20), (0.5, 24), (0.0, 6), (1.0, 7)):
        classes = simulate_class_averages(
            SimulationConfig(
                n_classes=n,
                box_sizes=(64,),
                pixel_size_range=(1.0, 2.5),
                junk_fraction=fraction,
            ),
            11,
        )
        assert len(classes) == n
        assert int((classes.labels == Label.REJECTED).sum()) == round(fraction * n)
        for label, kind in zip(classes.labels, classes.kinds, strict=True):
            assert (label == Label.SELECTED) == (kind in GOOD_KINDS)
            assert kind in GOOD_KINDS + JUNK_KINDS


def test_junk_kinds_are_drawn_by_their_weights():
    kinds = plan_kinds(
        SimulationConfig(n_classes=600, junk_fraction=1.0), np.random.default_rng(0)
    )
    counts = {k: kinds.count(k) for k in JUNK_KINDS}
    assert sum(counts.values()) == 600
    assert all(counts.values()), counts
    # Particle-like junk is the most common kind, lattices and rings the rarest.
    assert max(counts, key=counts.__getitem__) == "featureless_blob"
    assert counts["featureless_blob"] > 2 * counts["ice"] > 2 * counts["lattice"] > 0
    few = SimulationConfig(n_classes=10, junk_fraction=0.5, junk_kinds=("ice", "ring"))
    planned = plan_kinds(few, np.random.default_rng(0))
    assert sum(k not in GOOD_KINDS for k in planned) == 5
    assert set(planned) - set(GOOD_KINDS) <= {"ice", "ring"}


def test_every_kind_is_simulated():
    for kind in JUNK_KINDS:
        only = SimulationConfig(
            n_classes=2, box_sizes=(64,), junk_fraction=0.5, junk_kinds=(kind,)
        )
        assert kind in simulate_run(only, 3).classes.kinds
    runs = [
        simulate_run(
            SimulationConfig(n_classes=30, box_sizes=(64,), borderline_fraction=0.9), s
        )
        for s in (1, 2)
    ]
    assert set(GOOD_KINDS) <= {k for r in runs for k in r.classes.kinds}


def test_same_seed_same_bytes_other_seed_other_images():
    a, b = simulate_run(SMALL, 7), simulate_run(SMALL, 7)
    assert a.classes.images.tobytes() == b.classes.images.tobytes()
    assert np.array_equal(a.classes.metadata, b.classes.metadata, equal_nan=True)
    assert a.classes.kinds == b.classes.kinds
    c = _run(8)
    assert c.classes.images.shape != a.classes.images.shape or not np.array_equal(
        c.classes.images, a.classes.images
    )


def test_box_pixel_size_snr_and_shape_options_are_honoured():
    config = SimulationConfig(
        n_classes=6,
        box_sizes=(80,),
        pixel_size_range=(2.2, 2.2),
        snr_range=(0.03, 0.03),
        shapes=("membrane",),
    )
    run = simulate_run(config, 3)
    assert run.classes.images.shape == (6, 80, 80)
    assert run.classes.images.dtype == np.float32
    assert run.classes.pixel_size == pytest.approx(2.2)
    assert run.snr == pytest.approx(0.03)
    assert run.shape == "membrane"
    sizes = {
        simulate_run(
            SimulationConfig(n_classes=2, box_sizes=(64, 96)), s
        ).classes.box_size
        for s in range(8)
    }
    assert sizes == {64, 96}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_classes": 0},
        {"box_sizes": (16,)},
        {"pixel_size_range": (3.0, 1.0)},
        {"snr_range": (0.0, 0.1)},
        {"junk_fraction": 1.5},
        {"junk_kinds": ("mud",)},
        {"shapes": ()},
        {"particle_range": (50, 10)},
        {"metadata_style": "eman"},
    ],
)
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        SimulationConfig(**kwargs)


def test_metadata_ranges_are_relion_like():
    for seed in (5, 6):
        run = _run(seed)
        c = run.classes
        apix = c.pixel_size
        assert c.metadata.shape == (len(c), len(METADATA_FIELDS))
        n = c.field("particle_count")
        few = np.array([k == "few_particles" for k in c.kinds])
        assert np.all((n[~few] >= 20) & (n[~few] <= 5000)) and np.all(n[few] < 20)
        assert c.field("class_distribution").sum() == pytest.approx(1.0, abs=0.1)
        res = c.field("resolution_A")
        finite = np.isfinite(res)  # NaN: no shell reached SSNR 1 (RELION writes inf)
        assert not np.isinf(res).any()
        assert np.all(res[finite] >= 2 * apix - 1e-9)  # never past Nyquist
        assert np.all(res[finite] >= run.current_resolution_A - 1e-9)
        completeness = c.field("fourier_completeness")
        assert np.all(np.isnan(completeness) == ~finite)
        assert np.all((completeness[finite] > 0.5) & (completeness[finite] <= 1.0))
        rot, trans = c.field("accuracy_rotation_deg"), c.field("accuracy_translation_A")
        assert np.array_equal(rot == 999, trans == 999)
        assert np.all(rot[rot != 999] < 90) and np.all(trans[trans != 999] > 0)
        assert np.all(c.field("eca") >= 1.0)
        assert np.all(
            (c.field("mean_posterior") > 0) & (c.field("mean_posterior") <= 1)
        )


def test_metadata_separates_labels_on_average_but_overlaps():
    res_good, res_junk, n_good, n_junk, acc_good, acc_junk = [], [], [], [], [], []
    for seed in (5, 6, 9):
        c = _run(seed).classes
        good = c.labels == Label.SELECTED
        ratio = np.nan_to_num(c.field("resolution_A") / c.pixel_size, nan=1e3)
        res_good += list(ratio[good])
        res_junk += list(ratio[~good])
        n_good += list(c.field("particle_count")[good])
        n_junk += list(c.field("particle_count")[~good])
        acc = c.field("accuracy_rotation_deg") == 999
        acc_good += list(acc[good])
        acc_junk += list(acc[~good])
    assert np.median(res_good) < np.median(res_junk)
    assert np.median(n_good) > np.median(n_junk)
    assert np.mean(acc_good) < np.mean(acc_junk)
    # ...but not separable by any one of them.
    assert max(n_junk) > np.median(n_good)
    assert min(np.asarray(res_junk)) < np.median(res_good) * 1.5


def test_protein_is_bright_after_ctf_correction():
    run = _run(12, nuisance=False)
    c = run.classes
    box = c.box_size
    yy, xx = np.mgrid[:box, :box] - box // 2
    r = np.hypot(xx, yy)
    centre = r < 0.25 * run.mask_diameter_A / c.pixel_size
    for img, kind in zip(c.images, c.kinds, strict=True):
        if kind == "good":
            assert (
                img[centre].mean()
                > img[r > 0.5 * run.mask_diameter_A / c.pixel_size].mean()
            )


def test_conventions_are_shared_by_good_and_junk():
    run = _run(12, nuisance=False)
    c = run.classes
    mask = soft_circular_mask(
        c.box_size, run.display.mask_radius, run.display.mask_edge
    )
    outside = c.images[:, mask == 0]
    assert np.all(outside == 0.0)  # RELION's flattened solvent, whatever the class
    # With nuisances, one draw per run: every class has the same outside level.
    for seed in range(4):
        r = simulate_run(SimulationConfig(n_classes=8, box_sizes=(64,)), seed)
        if r.display.outside == "flat" and r.display.normalisation in (
            "raw",
            "run_zscore",
        ):
            m = soft_circular_mask(64, r.display.mask_radius, r.display.mask_edge)
            assert np.ptp(r.classes.images[:, m == 0]) < 1e-5


def test_runs_iterate_with_distinct_seeds():
    runs = list(simulate_runs(SimulationConfig(n_classes=3, box_sizes=(64,)), 1, 3))
    assert len(runs) == 3
    assert len({r.classes.images.tobytes() for r in runs}) == 3


def test_metadata_styles_match_what_the_readers_return():
    config = SimulationConfig(n_classes=6, box_sizes=(64,), pixel_size_range=(2.0, 3.0))
    runs = {
        style: simulate_run(
            SimulationConfig(**{**config.__dict__, "metadata_style": style}), 2
        )
        for style in ("all", "relion", "cryosparc")
    }

    def present(style):
        mask = runs[style].classes.metadata_mask.any(axis=0)
        return {f for f, m in zip(METADATA_FIELDS, mask, strict=True) if m}

    assert present("all") == set(METADATA_FIELDS)
    assert present("relion") == set(METADATA_FIELDS) - {"eca", "mean_posterior"}
    assert present("cryosparc") == {
        "particle_count",
        "class_distribution",
        "resolution_A",
        "eca",
        "mean_posterior",
    }
    cs = runs["cryosparc"].classes
    n = cs.field("particle_count")
    assert np.allclose(cs.field("class_distribution"), n / n.sum())
    # The images do not depend on the style.
    assert (
        runs["all"].classes.images.tobytes() == runs["relion"].classes.images.tobytes()
    )
    styles = set()
    for seed in range(6):
        c = simulate_class_averages(
            SimulationConfig(n_classes=2, box_sizes=(64,)), seed
        )
        styles.add(bool(np.isfinite(c.field("eca")).any()))
    assert styles == {True, False}  # "mixed" gives both
