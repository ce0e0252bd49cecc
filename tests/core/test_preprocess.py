"""Preprocessing: Fourier resampling, mask detection, normalisation invariances, metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.preprocess import (
    FEATURE_NAMES,
    N_META,
    PreprocessConfig,
    fourier_resample,
    mask_radius_fraction,
    metadata_features,
    normalise_images,
    prepare_inputs,
    resampling_matrix,
)
from model_fixtures import make_toy_classes
from scipy import signal


def _smooth_images(n: int, box: int, seed: int = 0) -> np.ndarray:
    """Band-limited images (nothing above a quarter of Nyquist at 64 px)."""
    rng = np.random.default_rng(seed)
    spec = np.fft.fft2(rng.normal(size=(n, box, box)))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(box), np.fft.fftfreq(box)))
    return np.fft.ifft2(spec * (f * box < 8)).real.astype(np.float32)


@pytest.mark.parametrize("box", [48, 64, 65, 128, 200])
def test_fourier_resample_keeps_band_limited_content(box: int) -> None:
    imgs = _smooth_images(2, box)
    down = fourier_resample(imgs, 64)
    assert down.shape == (2, 64, 64) and down.dtype == np.float32
    np.testing.assert_allclose(
        down.mean(axis=(1, 2)), imgs.mean(axis=(1, 2)), atol=1e-5
    )
    if box % 2 == 0:
        back = fourier_resample(down, box)
        np.testing.assert_allclose(back, imgs, atol=1e-4 * np.abs(imgs).max())


@pytest.mark.parametrize("box", [31, 32, 64, 65, 128, 256])
@pytest.mark.parametrize("size", [16, 17, 32, 33, 64, 65, 96, 97, 300, 301])
def test_fourier_resample_is_the_resampling_matrix(box: int, size: int) -> None:
    """The resampler is scipy's (scipy.signal.resample on both axes) and the operator of
    resampling_matrix (used by the augmentation), for odd and even sizes, up and down,
    Nyquist included, to float32 precision."""
    x = np.random.default_rng(box * 1000 + size).normal(size=(3, box, box))
    got = fourier_resample(x.astype(np.float32), size)
    assert got.shape == (3, size, size) and got.dtype == np.float32
    a = resampling_matrix(box, size)
    scipy_way = signal.resample(signal.resample(x, size, axis=1), size, axis=2)
    for want in (a @ x @ a.T, scipy_way):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_mask_radius_detects_zero_mask_and_noise_outside() -> None:
    box = 100
    yy, xx = np.mgrid[:box, :box]
    r = np.hypot(yy - 49.5, xx - 49.5)
    rng = np.random.default_rng(0)
    masked = rng.normal(size=(box, box)) * (r < 30) + 0.25  # flat 0.25 outside
    noisy = rng.normal(size=(box, box))
    est = mask_radius_fraction(np.stack([masked, noisy]))
    assert est[0] == pytest.approx(30 / 50, abs=0.03)
    assert est[1] == 1.0


def test_normalisation_removes_offset_scale_and_sign() -> None:
    classes = make_toy_classes(6, seed=1)
    cfg = PreprocessConfig()
    base, _ = prepare_inputs(classes, cfg)
    for a, b in [(3.0, 10.0), (-0.5, -2.0)]:
        changed = ClassAverages.create(classes.images * a + b, pixel_size=2.0)
        x, _ = prepare_inputs(changed, cfg)
        np.testing.assert_allclose(x.numpy(), base.numpy(), atol=1e-2)
    assert torch.all(base.abs() <= cfg.clip + 1e-6)


def test_outside_of_mask_is_zero() -> None:
    imgs = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(0)) + 5.0
    radius = torch.tensor([0.5, 0.8, 1.0])
    x = normalise_images(imgs, radius, PreprocessConfig())
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    rr = torch.sqrt((yy - 31.5) ** 2 + (xx - 31.5) ** 2) / 32
    for i, r in enumerate(radius.tolist()):
        assert torch.all(x[i, 0][rr > r + 0.01] == 0)
        inside = x[i, 0][rr < r - 0.1]
        assert abs(float(inside.median())) < 0.1 and 0.7 < float(inside.std()) < 1.3


def test_metadata_features_handle_999_missing_and_pixel_size() -> None:
    classes = ClassAverages.create(
        np.zeros((3, 16, 16)),
        pixel_size=2.0,
        metadata={
            "particle_count": [100.0, 10.0, np.nan],
            "resolution_A": [8.0, np.inf, np.nan],
            "accuracy_rotation_deg": [3.0, 999.0, np.nan],
        },
    )
    f = metadata_features(classes)
    k = len(FEATURE_NAMES)
    assert f.shape == (3, N_META) and np.isfinite(f).all()
    idx = {name: i for i, name in enumerate(FEATURE_NAMES)}
    rot, not_est = idx["accuracy_rotation"], idx["rotation_not_estimated"]
    assert f[0, k + rot] == 1 and f[0, not_est] == 0  # estimated: value present
    assert f[1, k + rot] == 0 and f[1, not_est] == 1 and f[1, k + not_est] == 1
    assert f[2, k + rot] == 0 and f[2, k + not_est] == 0  # missing: nothing present
    assert f[0, idx["resolution_over_nyquist"]] == pytest.approx(np.log10(2.0))
    assert f[2, k:].sum() == 0  # the third class has no metadata at all
    no_apix = ClassAverages.create(
        np.zeros((1, 16, 16)), metadata={"resolution_A": [8.0]}
    )
    assert metadata_features(no_apix)[0, k + idx["resolution_over_nyquist"]] == 0


def test_prepare_inputs_shapes_for_any_box_and_bad_values() -> None:
    for box in (32, 96, 256):
        x, m = prepare_inputs(make_toy_classes(2, 0, box=box), PreprocessConfig())
        assert x.shape == (2, 1, 64, 64) and m.shape == (2, N_META)
    bad = ClassAverages.create(np.full((1, 32, 32), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        prepare_inputs(bad, PreprocessConfig())
    with pytest.raises(ValueError):
        PreprocessConfig(size=63)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"size": 64, "colour": 1})


def _pad_or_crop(images: np.ndarray, factor: float) -> np.ndarray:
    """A new box ``factor`` times the old: padded with the corner level, or cropped."""
    box = images.shape[-1]
    new = round(box * factor / 2) * 2
    if new <= box:
        o = (box - new) // 2
        return images[:, o : o + new, o : o + new].copy()
    out = np.repeat(images[:, :1, :1], new, axis=1).repeat(new, axis=2)
    o = (new - box) // 2
    out[:, o : o + box, o : o + box] = images
    return out


@pytest.mark.parametrize("factor", [0.75, 1.25, 1.6])
def test_particle_framing_is_invariant_to_the_box(factor: float) -> None:
    """The user's choice of box does not change what the network sees: the particle's
    radius is measured the same and the network inputs agree closely."""
    from cryodiscovery.core.model.preprocess import particle_radius
    from cryodiscovery.core.synthetic.generator import (
        SimulationConfig,
        simulate_class_averages,
    )

    config = SimulationConfig(
        n_classes=6, junk_fraction=0.0, box_sizes=(128,), nuisance=False
    )
    sim = simulate_class_averages(config, 11)
    # A box with room around the particle, as users box real particles (~0.45 of it).
    classes = ClassAverages.create(_pad_or_crop(sim.images, 1.4), pixel_size=2.0)
    other = ClassAverages.create(
        _pad_or_crop(classes.images, factor), pixel_size=classes.pixel_size
    )
    mask = mask_radius_fraction(classes.images)
    r0 = particle_radius(classes.images, mask)
    r1 = particle_radius(other.images, mask_radius_fraction(other.images))
    np.testing.assert_allclose(r1, r0, rtol=0.08)
    pre = PreprocessConfig(framing="particle")
    a = prepare_inputs(classes, pre)[0][:, 0].reshape(len(classes), -1).numpy()
    b = prepare_inputs(other, pre)[0][:, 0].reshape(len(other), -1).numpy()
    centre = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5)) < 20
    a, b = a[:, centre.ravel()], b[:, centre.ravel()]
    corr = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]
    assert min(corr) > 0.9, corr
    # The whole-box framing of old models sees a different picture after the same change.
    box = prepare_inputs(other, PreprocessConfig(framing="box"))[0][:, 0]
    box_corr = np.corrcoef(box.reshape(len(other), -1)[0, centre.ravel()], a[0])[0, 1]
    assert box_corr < min(corr)


def test_particle_framing_config_and_old_models() -> None:
    assert PreprocessConfig().framing == "particle"
    # A model file written before particle framing resampled the whole box.
    old = PreprocessConfig.from_dict({"size": 64, "clip": 6.0, "canonical_sign": True})
    assert old.framing == "box"
    assert (
        PreprocessConfig.from_dict(PreprocessConfig().to_dict()) == PreprocessConfig()
    )
    with pytest.raises(ValueError, match="framing"):
        PreprocessConfig(framing="mask")
    with pytest.raises(ValueError, match="particle_fill"):
        PreprocessConfig(particle_fill=0.95)


def test_fourier_resample_gives_the_same_bits_on_any_thread_count() -> None:
    """scipy.fft's workers share out whole 1-D transforms: inputs, and so scores, do not
    depend on torch.get_num_threads()."""
    x = np.random.default_rng(1).normal(size=(21, 90, 90)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            got += [fourier_resample(x, 64), fourier_resample(x, 131)]
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(got[:2] * 2, got[2:], strict=True))
