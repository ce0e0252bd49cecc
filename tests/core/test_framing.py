"""Mask and particle radii equal, bit for bit, the plain one-image-at-a-time
definitions (a window, and so a score, moves with any change of a radius), on random and
structured images with varied masks. A radius is a whole shell, which small numeric
changes rarely move, so the smoothed values and contrast sums it comes from are compared
to the bit as well."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch
from cryodiscovery.core.model.framing import (
    _contrast,
    _shells,
    _smoothed_inside,
    mask_radius_fraction,
    particle_radius,
)
from model_fixtures import make_toy_classes
from scipy import ndimage


def reference_mask_radius(images: npt.ArrayLike) -> np.ndarray:
    """The plain definition of :func:`mask_radius_fraction`, one image at a time."""
    imgs = np.asarray(images, dtype=np.float32)
    n, box = imgs.shape[0], imgs.shape[-1]
    yy, xx = np.mgrid[:box, :box]
    c = (box - 1) / 2.0
    radius = np.hypot(yy - c, xx - c) / (box / 2.0)
    ring = np.minimum(np.rint(radius * box).astype(np.int64), 2 * box).ravel()
    ring_radius = np.arange(2 * box + 1) / box
    corners = np.median(imgs[:, [0, 0, -1, -1], [0, -1, 0, -1]], axis=1)
    spread = imgs.reshape(n, -1).std(axis=1)
    spread = np.where(spread > 0, spread, 1.0)
    differs = np.abs(imgs - corners[:, None, None]) > 1e-4 * spread[:, None, None]
    out = np.ones(n, dtype=np.float32)
    for i in range(n):
        d = differs[i].ravel()
        total = int(d.sum())
        if total in (0, d.size):
            continue
        cum = np.cumsum(np.bincount(ring[d], minlength=ring_radius.size))
        out[i] = ring_radius[int(np.searchsorted(cum, 0.995 * total))]
    return np.clip(out, 0.25, 1.0).astype(np.float32)


def reference_particle_radius(images: npt.ArrayLike, mask: npt.ArrayLike) -> np.ndarray:
    """The plain definition of :func:`particle_radius`: the whole float64 stack
    smoothed, then one image at a time over the whole box."""
    imgs = np.asarray(images, dtype=np.float64)
    masks = np.asarray(mask, dtype=np.float64)
    n, box = imgs.shape[0], imgs.shape[-1]
    c = (box - 1) / 2.0
    yy, xx = np.mgrid[:box, :box]
    r = np.hypot(yy - c, xx - c)
    shells = np.minimum(r.astype(np.int64), box).ravel()
    smooth = ndimage.gaussian_filter(imgs, (0.0, box / 64.0, box / 64.0))
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        rm = float(masks[i]) * box / 2.0
        inside = r <= 0.97 * rm
        bg = np.median(smooth[i][inside & (r >= 0.8 * rm)])
        spread = float(smooth[i][inside].std()) + 1e-12
        w = np.where(inside, np.maximum(np.abs(smooth[i] - bg) / spread - 0.5, 0), 0)
        total = float(w.sum())
        if total <= 0:
            out[i] = rm
            continue
        cum = np.cumsum(np.bincount(shells, w.ravel(), minlength=box + 1))
        out[i] = float(np.searchsorted(cum, 0.85 * total)) + 0.5
    return out


def _masked_stack(box: int, seed: int) -> np.ndarray:
    """Toy classes and noise under zero masks of several radii (one per image, some
    shared), a few unmasked, a flat image and a constant-outside image."""
    rng = np.random.default_rng(seed)
    n = 24
    imgs = make_toy_classes(n, seed=seed, box=box).images.astype(np.float32)
    imgs[: n // 3] = rng.normal(size=(n // 3, box, box)) * rng.uniform(0.1, 5.0)
    imgs += rng.normal(0.0, 3.0, size=(n, 1, 1)).astype(np.float32)
    c = (box - 1) / 2.0
    yy, xx = np.mgrid[:box, :box]
    r = np.hypot(yy - c, xx - c) / (box / 2.0)
    fractions = rng.choice([0.3, 0.55, 0.55, 0.8, 0.97, 1.0, 1.5], size=n)
    for i, f in enumerate(fractions):
        imgs[i][r > f] = rng.choice([0.0, imgs[i].mean(), -2.5])
    imgs[-1] = 4.0  # flat: no differing pixel, no contrast
    imgs[-2][r > 0.6] = 0.0
    imgs[-2][r <= 0.6] = 1.0  # a flat disc: no contrast inside
    return imgs


@pytest.mark.parametrize("box", [32, 63, 64, 96, 129, 160])
def test_mask_and_particle_radius_equal_the_plain_definitions(box: int) -> None:
    imgs = _masked_stack(box, seed=box)
    mask = mask_radius_fraction(imgs)
    assert np.array_equal(mask, reference_mask_radius(imgs))
    assert len(np.unique(mask)) >= 3  # several mask groups, shared and single
    got = particle_radius(imgs, mask)
    assert got.dtype == np.float32
    assert np.array_equal(got, reference_particle_radius(imgs, mask))


def test_particle_radius_equals_the_plain_definition_on_random_masks() -> None:
    """Random images with random mask radii (each image its own group), float64 and
    integer input, and one worker or two."""
    rng = np.random.default_rng(7)
    imgs = rng.normal(size=(40, 80, 80)).astype(np.float32)
    imgs = ndimage.gaussian_filter(imgs, (0, 2, 2)) + rng.normal(size=(40, 1, 1))
    mask = rng.uniform(0.25, 1.0, size=40).astype(np.float32)
    want = reference_particle_radius(imgs, mask)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert np.array_equal(particle_radius(imgs, mask), want)
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(
        particle_radius(imgs.astype(np.float64), mask),
        reference_particle_radius(imgs.astype(np.float64), mask),
    )
    ints = np.rint(imgs * 100).astype(np.int32)
    assert np.array_equal(
        particle_radius(ints, mask), reference_particle_radius(ints, mask)
    )


def test_one_thread_or_two_give_the_same_bits() -> None:
    imgs = _masked_stack(96, seed=5)
    before = torch.get_num_threads()
    try:
        got = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            mask = mask_radius_fraction(imgs)
            got.append((mask, particle_radius(imgs, mask)))
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(*got, strict=True))


@pytest.mark.parametrize("box", [32, 63, 96, 160])
def test_smoothed_values_and_contrast_sums_equal_the_whole_image_ones(
    box: int,
) -> None:
    """Smoothing only the square around each mask and summing only inside it give the
    whole-image smoothed values, total weight and shell sums to the bit."""
    imgs = _masked_stack(box, seed=box + 1)
    mask = mask_radius_fraction(imgs)
    smooth = ndimage.gaussian_filter(
        imgs.astype(np.float64), (0.0, box / 64.0, box / 64.0)
    )
    r, shells = _shells(box)
    cropped = 0
    for fraction in np.unique(mask):
        rm = float(fraction) * box / 2.0
        pick = np.flatnonzero(mask == fraction)
        inside = r <= 0.97 * rm
        solvent = (r >= 0.8 * rm)[inside]
        values = _smoothed_inside(imgs, pick, inside)
        assert np.array_equal(values, smooth[pick][:, inside])
        cropped += int(0.97 * rm + box / 16.0 + 1 < box / 2.0)
        for i, row in zip(pick, values, strict=True):
            bg = np.median(smooth[i][inside & (r >= 0.8 * rm)])
            spread = float(smooth[i][inside].std()) + 1e-12
            w = np.where(
                inside, np.maximum(np.abs(smooth[i] - bg) / spread - 0.5, 0), 0
            )
            total, cum = _contrast(row, solvent, inside, shells)
            assert total == float(w.sum())
            want = np.cumsum(np.bincount(shells, w.ravel(), minlength=box + 1))
            assert np.array_equal(cum, want)
    assert cropped  # some masks leave the box corners unsmoothed
