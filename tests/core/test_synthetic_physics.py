"""The generator's physics: atomic models, symmetry, projection, CTF, class averaging."""

from __future__ import annotations

import numpy as np
import pytest
from cryodiscovery.core.synthetic import averaging, ctf, density, projection, shapes


def test_shipped_atomic_models_parse_and_are_protein_sized():
    hb = density.load_atomic_model("haemoglobin_5me2")
    ntd = density.load_atomic_model("spike_ntd_6vyb")
    assert len(hb.points) == 4468  # 4296 heavy atoms + 4 haems
    assert len(ntd.points) == 1615
    assert 55 < hb.diameter < 80 and 40 < ntd.diameter < 70
    # Centred, and weights are electrons per heavy atom (C 6 ... Fe 26).
    assert np.allclose(np.average(hb.points, axis=0, weights=hb.weights), 0, atol=1e-3)
    assert set(np.unique(hb.weights)) <= {6.0, 7.0, 8.0, 16.0, 26.0}
    with pytest.raises(ValueError, match="unknown atomic model"):
        density.load_atomic_model("nope")


@pytest.mark.parametrize(
    ("group", "size"), [("C5", 5), ("D3", 6), ("T", 12), ("O", 24), ("I", 60)]
)
def test_symmetry_groups_are_closed_rotation_groups(group, size):
    ops = density.symmetry_operators(group)
    assert len(ops) == size
    for op in ops:
        assert np.allclose(op @ op.T, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(op), 1.0)
    product = ops[1] @ ops[-1]
    assert any(np.allclose(product, op, atol=1e-6) for op in ops)


def test_coarse_graining_keeps_mass_and_centre():
    hb = density.load_atomic_model("haemoglobin_5me2")
    coarse = density.coarse_grain(hb, 4.0)
    assert len(coarse.points) < len(hb.points) / 2  # ~3 atoms per 64 Å³
    assert np.isclose(coarse.weights.sum(), hb.weights.sum(), rtol=1e-5)
    c0 = np.average(hb.points, axis=0, weights=hb.weights)
    c1 = np.average(coarse.points, axis=0, weights=coarse.weights)
    assert np.allclose(c0, c1, atol=1e-3)
    assert len(density.bounded(hb, 2.0, 1000).points) <= 1000


def test_point_projection_lands_on_its_pixel_and_keeps_mass():
    pts = np.array([[3.0, -2.0, 5.0]], dtype=np.float32)
    s = density.Structure(pts, np.array([2.0], dtype=np.float32))
    img = projection.project(s, np.eye(3)[None], np.zeros((1, 2)), np.ones(1), 1.0, 16)
    assert img.sum() == pytest.approx(2.0)
    assert tuple(np.argwhere(img > 0)[0]) == (6, 11)  # row y = 8 - 2, column x = 8 + 3
    turned = density.axis_rotation([0, 0, 1], np.pi / 2)  # (3, -2) -> (2, 3)
    img = projection.project(
        s, turned[None], np.array([[1.0, 0.0]]), np.ones(1), 1.0, 16
    )
    assert tuple(np.argwhere(img > 0)[0]) == (11, 11)


def test_ellipsoid_projection_integrates_to_its_volume():
    axes = np.array([20.0, 12.0, 8.0])
    ell = density.Ellipsoid(np.zeros(3), np.diag(axes**-2.0), 0.5)
    rot = density.random_rotation(np.random.default_rng(1))
    img = projection.project_ellipsoid(
        rot @ ell.centre, rot @ ell.matrix @ rot.T, 0.5, np.zeros(2), 1.0, 96
    )
    assert img.sum() == pytest.approx(0.5 * 4 / 3 * np.pi * axes.prod(), rel=0.01)


def test_procedural_molecules_reach_their_size():
    rng = np.random.default_rng(4)
    for family in ("globular", "assembly", "membrane"):
        for diameter in (60.0, 180.0):
            mol = shapes.build_molecule(family, rng, diameter)
            assert 0.5 * diameter < mol.diameter < 1.6 * diameter, (family, diameter)
    fil = shapes.build_molecule("filament", rng, 100.0)
    assert np.ptp(fil.points[:, 2]) > 180.0  # longer than wide: crosses the mask
    with pytest.raises(ValueError, match="unknown shape family"):
        shapes.build_molecule("blob", rng, 50.0)


def test_ctf_values_and_average_over_defocus():
    assert ctf.electron_wavelength(300.0) == pytest.approx(0.019687, abs=1e-5)
    assert ctf.ctf(0.0, 15000.0, amplitude_contrast=0.1) == pytest.approx(-0.1)
    k = np.linspace(0.0, 0.3, 400)
    mean2 = ctf.mean_ctf_squared(
        k, np.linspace(5000, 30000, 24), amplitude_contrast=0.07
    )
    assert mean2[0] == pytest.approx(0.07**2)
    assert 0.4 < mean2[k > 0.1].mean() < 0.6  # zeros fill in across defoci
    with pytest.raises(ValueError):
        ctf.ctf(0.1, 1e4, amplitude_contrast=1.0)


def _physics(box: int = 64, snr: float = 0.05) -> averaging.Physics:
    rng = np.random.default_rng(0)
    phys = averaging.make_physics(box, 2.0, snr, averaging.PhysicsParams(), rng)
    mol = density.load_atomic_model("haemoglobin_5me2")
    ref = projection.project(
        mol, np.eye(3)[None], np.zeros((1, 2)), np.ones(1), 2.0, box
    )
    return averaging.calibrate(phys, ref[None])


def test_calibration_sets_the_particle_snr():
    phys = _physics(snr=0.05)
    mol = density.load_atomic_model("haemoglobin_5me2")
    ref = projection.project(
        mol, np.eye(3)[None], np.zeros((1, 2)), np.ones(1), 2.0, 64
    )
    # A raw particle: CTF-modulated signal, variance against unit-ish noise.
    ft = np.fft.rfft2(ref) * phys.envelope * phys.signal_scale
    ft *= np.sqrt(phys.grid.to_2d(phys.ctf2))
    ft[0, 0] = 0.0
    signal = np.fft.irfft2(ft, s=(64, 64))
    noise = float(np.mean(phys.grid.to_2d(phys.noise_power)))
    assert signal.var() / noise == pytest.approx(0.05, rel=0.1)


def test_more_particles_give_higher_ssnr_and_finer_resolution():
    phys = _physics()
    mol = density.load_atomic_model("haemoglobin_5me2")
    sig = projection.project(
        mol, np.eye(3)[None], np.zeros((1, 2)), np.ones(1), 2.0, 64
    )
    res = []
    for n in (10, 100, 1000):
        avg = averaging.form_average(phys, sig, n, np.random.default_rng(1))
        res.append(averaging.estimated_resolution(avg.ssnr, 64, 2.0))
    assert res[0] >= res[1] >= res[2] >= 4.0  # never past Nyquist
    assert res[2] < res[0]
    empty = averaging.form_average(
        phys, np.zeros((64, 64)), 100, np.random.default_rng(1)
    )
    assert averaging.estimated_resolution(empty.ssnr, 64, 2.0) == float("inf")
    with pytest.raises(ValueError):
        averaging.form_average(phys, sig, 0, np.random.default_rng(1))


def test_noise_of_an_empty_average_falls_with_particles():
    phys = _physics()
    stds = []
    for n in (20, 2000):
        avg = averaging.form_average(
            phys, np.zeros((64, 64)), n, np.random.default_rng(2)
        )
        stds.append(averaging.to_image(avg.spectrum, 64).std())
    assert stds[1] < stds[0] / 5  # ~sqrt(100) in amplitude, regularised


def test_heterogeneity_blurs_and_costs_resolution():
    phys = _physics(snr=0.2)
    mol = density.load_atomic_model("haemoglobin_5me2")
    sig = projection.project(
        mol, np.eye(3)[None], np.zeros((1, 2)), np.ones(1), 2.0, 64
    )
    sharp = averaging.form_average(phys, sig, 500, np.random.default_rng(3))
    mixed = averaging.form_average(
        phys, sig, 500, np.random.default_rng(3), blur_px=4.0, spread=0.5
    )
    r_sharp = averaging.estimated_resolution(sharp.ssnr, 64, 2.0)
    r_mixed = averaging.estimated_resolution(mixed.ssnr, 64, 2.0)
    assert r_mixed > 1.5 * r_sharp


def test_soft_mask_is_relion_like():
    mask = projection.soft_circular_mask(64, 20.0, 5.0)
    assert mask[32, 32] == 1.0 and mask[32, 32 + 20] == 1.0
    assert mask[32, 32 + 25] == pytest.approx(0.0, abs=1e-12) and mask[0, 0] == 0.0
    edge = mask[32, 32 + 20 : 32 + 26]
    assert np.all(np.diff(edge) <= 0)
