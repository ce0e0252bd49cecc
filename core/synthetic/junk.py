"""Aligned-signal recipes for junk that is not the molecule: ice contamination, carbon or
support edges, empty classes, streaks from over-fitted noise, rings and donuts, and
lattice or moiré patterns; plus the table of every kind and its label.

Contrasts are multiples of the molecule's projection peak (``Scene.ref_peak``): carbon
and ice are several times denser in projection than a protein, so they look saturated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cryodiscovery.core.synthetic import views
from cryodiscovery.core.synthetic.density import F64
from cryodiscovery.core.synthetic.projection import fourier_grid
from cryodiscovery.core.synthetic.views import Scene, Signal

#: Good kinds: a sharp view, a blurrier but real view, a rare view of few particles.
GOOD_KINDS: tuple[str, ...] = ("good", "good_blurry", "good_rare")

#: Junk kinds, each as it looks in real data (CRYOEM.md).
JUNK_KINDS: tuple[str, ...] = (
    "ice",
    "carbon_edge",
    "empty",
    "featureless_blob",
    "aggregate",
    "few_particles",
    "off_centre",
    "streaky",
    "ghosted",
    "ring",
    "lattice",
    "noise_aligned",
)

ALL_KINDS: tuple[str, ...] = GOOD_KINDS + JUNK_KINDS


def _coords(scene: Scene) -> tuple[F64, F64]:
    c = scene.box // 2
    yy, xx = np.mgrid[0 : scene.box, 0 : scene.box].astype(np.float64)
    return xx - c, yy - c


def _smooth_noise(scene: Scene, rng: np.random.Generator, sigma_px: float) -> F64:
    """Unit-variance Gaussian random field with correlation length ``sigma_px``."""
    grid = fourier_grid(scene.box)
    ft = np.fft.rfft2(rng.standard_normal((scene.box, scene.box)))
    ft *= np.exp(-2.0 * (np.pi * sigma_px * grid.radius) ** 2)
    field = np.fft.irfft2(ft, s=(scene.box, scene.box))
    return np.asarray(field / (field.std() + 1e-12), dtype=np.float64)


def _sigmoid(x: F64, width: float) -> F64:
    return np.asarray(0.5 * (1.0 + np.tanh(x / max(width, 1e-3))), dtype=np.float64)


def _het_blur(
    scene: Scene, rng: np.random.Generator, lo_A: float, hi_A: float
) -> float:
    """Heterogeneity blur in pixels for features that wander ``lo_A``-``hi_A`` Å."""
    return float(rng.uniform(lo_A, hi_A) / scene.pixel_size)


def ice(scene: Scene, rng: np.random.Generator) -> Signal:
    """A dense round or faceted blob, larger than the particle, often partly outside the mask."""
    xx, yy = _coords(scene)
    radius = scene.mask_radius * rng.uniform(0.45, 1.4)
    dist = scene.mask_radius * rng.uniform(0.0, 1.0) ** 0.7
    ang = rng.uniform(0, 2 * np.pi)
    dx, dy = xx - dist * np.cos(ang), yy - dist * np.sin(ang)
    if rng.random() < 0.5:
        facets = int(rng.integers(5, 9))
        sector = 2 * np.pi / facets
        local = (
            np.mod(np.arctan2(dy, dx) - rng.uniform(0, 2 * np.pi), sector) - sector / 2
        )
        r_edge = radius * np.cos(sector / 2) / np.cos(local)
    else:
        stretch = rng.uniform(0.6, 1.0)
        rot = rng.uniform(0, np.pi)
        u = dx * np.cos(rot) + dy * np.sin(rot)
        v = (-dx * np.sin(rot) + dy * np.cos(rot)) / stretch
        dx, dy, r_edge = u, v, np.full_like(xx, radius)
    r = np.hypot(dx, dy)
    dome = np.sqrt(np.clip(1.0 - (r / (r_edge + 1e-6)) ** 2, 0.0, None)) ** rng.uniform(
        0.3, 1.0
    )
    image = dome * _sigmoid(r_edge - r, rng.uniform(0.6, 1.5))
    image *= scene.ref_peak * rng.uniform(3.0, 12.0)
    image *= 1.0 + 0.08 * _smooth_noise(scene, rng, rng.uniform(1.0, 3.0))
    return Signal(
        image,
        20.0,
        3.0,
        blur_px=_het_blur(scene, rng, 5.0, 30.0),
        spread=rng.uniform(0.2, 0.6),
    )


def carbon_edge(scene: Scene, rng: np.random.Generator) -> Signal:
    """A saturated half-plane, arc or band of support film crossing the mask."""
    xx, yy = _coords(scene)
    ang = rng.uniform(0, 2 * np.pi)
    nx, ny = np.cos(ang), np.sin(ang)
    d = scene.mask_radius * rng.uniform(0.05, 1.0) ** 0.6  # mostly towards a corner
    mode = rng.choice(["straight", "arc", "band"], p=[0.45, 0.35, 0.2])
    if mode == "arc":
        rc = scene.mask_radius * rng.uniform(1.2, 4.0)
        s = rc - np.hypot(xx - (d + rc) * nx, yy - (d + rc) * ny)
    else:
        s = xx * nx + yy * ny - d
    if mode == "band":
        region = _sigmoid(rng.uniform(1.0, 5.0) - np.abs(s), rng.uniform(0.5, 1.5))
    else:
        region = _sigmoid(s, rng.uniform(0.5, 2.0))
    image = region * scene.ref_peak * rng.uniform(2.0, 6.0)
    image *= 1.0 + 0.1 * _smooth_noise(scene, rng, rng.uniform(0.8, 2.0))
    spread_ref = 0.0
    if rng.random() < 0.4:  # a blurred particle beside the edge
        loose = views.Jitter(15.0, 12.0, 2.5, 0.2, 5)
        blurred = views.aligned_view(scene, rng, scene.view(rng), loose)
        image += rng.uniform(0.4, 1.0) * blurred
        spread_ref = rng.uniform(0.3, 0.7)
    blur = _het_blur(scene, rng, 4.0, 20.0)
    return Signal(
        image,
        25.0,
        3.0,
        blur_px=blur,
        spread=rng.uniform(0.2, 0.6),
        spread_ref=spread_ref,
    )


def empty(scene: Scene, rng: np.random.Generator) -> Signal:
    """No central object: nothing, a tiny bright dot, or a faint featureless blob."""
    xx, yy = _coords(scene)
    mode = rng.choice(["nothing", "dot", "faint_blob"], p=[0.4, 0.25, 0.35])
    if mode == "nothing":
        return Signal(np.zeros_like(xx), 90.0, 5.0, spread_ref=rng.uniform(0.0, 0.3))
    if mode == "dot":
        s = rng.uniform(0.7, 1.8)
        amp = scene.ref_peak * rng.uniform(0.5, 2.0)
        cx, cy = rng.normal(0, 2.0, 2)
        dot = amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        return Signal(
            dot, 60.0, 3.0, blur_px=rng.uniform(0.3, 1.5), spread=rng.uniform(0.3, 1.0)
        )
    s = scene.particle_radius * rng.uniform(0.3, 0.8)
    amp = scene.ref_peak * rng.uniform(0.05, 0.25)
    blob = amp * np.exp(-(xx**2 + yy**2) / (2 * s * s))
    return Signal(
        blob, 80.0, 4.0, spread=rng.uniform(0.5, 2.0), spread_ref=rng.uniform(0.1, 0.5)
    )


def streaky(scene: Scene, rng: np.random.Generator) -> Signal:
    """Parallel stripes or a hatch, with high-frequency texture from aligning noise."""
    xx, yy = _coords(scene)
    n_waves = int(rng.integers(1, 4))
    base = rng.uniform(0, np.pi)
    image = np.zeros_like(xx)
    for i in range(n_waves):
        theta = base + (
            rng.normal(0, 0.05)
            if i == 0 or rng.random() < 0.5
            else rng.uniform(0.4, 1.6)
        )
        period = rng.uniform(2.2, 8.0)
        image += np.cos(
            2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period
            + rng.uniform(0, 6.3)
        )
    envelope = np.exp(
        -(xx**2 + yy**2) / (2 * (scene.mask_radius * rng.uniform(0.5, 1.5)) ** 2)
    )
    image *= envelope * scene.ref_peak * rng.uniform(0.2, 0.8)
    texture = _smooth_noise(scene, rng, rng.uniform(0.4, 0.9))
    texture -= _smooth_noise(scene, rng, 3.0) * 0.5
    image += texture * envelope * scene.ref_peak * rng.uniform(0.1, 0.5)
    if rng.random() < 0.3:
        image += views.featureless_blob(scene, rng).image * rng.uniform(0.2, 0.6)
    return Signal(
        image, 45.0, 4.0, blur_px=rng.uniform(0.0, 0.6), spread=rng.uniform(0.1, 0.5)
    )


def ring(scene: Scene, rng: np.random.Generator) -> Signal:
    """A thin sharp ring, a wide soft donut, or the projection of a hollow shell (vesicle)."""
    xx, yy = _coords(scene)
    cx, cy = rng.normal(0, 1.5, 2)
    r = np.hypot(xx - cx, yy - cy)
    radius = scene.mask_radius * rng.uniform(0.2, 0.85)
    mode = rng.choice(["thin", "wide", "shell"], p=[0.35, 0.35, 0.3])
    if mode == "shell":
        inner = radius * rng.uniform(0.8, 0.95)
        image = np.sqrt(np.clip(radius**2 - r**2, 0, None)) - np.sqrt(
            np.clip(inner**2 - r**2, 0, None)
        )
        image = (
            image
            / max(float(image.max()), 1e-9)
            * scene.ref_peak
            * rng.uniform(1.0, 3.0)
        )
    else:
        width = rng.uniform(0.6, 1.6) if mode == "thin" else rng.uniform(3.0, 8.0)
        amp = scene.ref_peak * (
            rng.uniform(1.0, 4.0) if mode == "thin" else rng.uniform(0.4, 1.5)
        )
        image = amp * np.exp(-((r - radius) ** 2) / (2 * width * width))
    if rng.random() < 0.25:
        image += (
            scene.ref_peak
            * rng.uniform(0.2, 0.8)
            * np.exp(-(r**2) / (2 * rng.uniform(1.0, 3.0) ** 2))
        )
    blur = rng.uniform(0.2, 1.0) if mode == "thin" else rng.uniform(0.5, 3.0)
    return Signal(image, 70.0, 2.0, blur_px=blur, spread=rng.uniform(0.3, 0.8))


def lattice(scene: Scene, rng: np.random.Generator) -> Signal:
    """A full-field square or hexagonal lattice, or two slightly rotated ones (moiré)."""
    xx, yy = _coords(scene)
    period = rng.uniform(3.0, 12.0)
    order = 3 if rng.random() < 0.5 else 2
    base = rng.uniform(0, np.pi)
    layers = 2 if rng.random() < 0.4 else 1
    image = np.zeros_like(xx)
    for layer in range(layers):
        turn = base + (np.deg2rad(rng.uniform(2, 12)) if layer else 0.0)
        p = period * (rng.uniform(0.9, 1.1) if layer else 1.0)
        for i in range(order):
            theta = turn + i * np.pi / order
            image += np.cos(
                2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / p
                + rng.uniform(0, 6.3)
            )
    patchy = 1.0 + rng.uniform(0.2, 0.6) * _smooth_noise(
        scene, rng, rng.uniform(4.0, 12.0)
    )
    image *= patchy * scene.ref_peak * rng.uniform(0.02, 0.12)
    if rng.random() < 0.3:
        image += views.featureless_blob(scene, rng).image * rng.uniform(0.3, 0.8)
    return Signal(
        image, 50.0, 3.0, blur_px=rng.uniform(0.0, 0.8), spread=rng.uniform(0.5, 2.0)
    )


def noise_aligned(scene: Scene, rng: np.random.Generator) -> Signal:
    """Noise aligned to noise (reference bias): particles that hold no molecule, aligned
    to the molecule's references, average to the reference's rough outline filled with
    fine speckle, a particle-sized class of noisy texture with no consistent detail."""
    outline = views.featureless_blob(scene, rng).image
    envelope = outline / (np.abs(outline).max() + 1e-12)
    speckle = _smooth_noise(scene, rng, rng.uniform(0.6, 1.5))
    image = scene.ref_peak * (
        rng.uniform(0.1, 0.4) * envelope
        + rng.uniform(0.15, 0.4) * speckle * np.clip(np.abs(envelope) + 0.3, 0, 1)
    )
    return Signal(
        image, 60.0, 3.0, blur_px=rng.uniform(0.0, 0.5), spread=rng.uniform(0.8, 2.5)
    )


Recipe = Callable[[Scene, np.random.Generator], Signal]

RECIPES: dict[str, Recipe] = {
    "good": views.good_view,
    "good_blurry": lambda s, r: views.good_view(s, r, blurry=True),
    "good_rare": views.good_view,
    "ice": ice,
    "carbon_edge": carbon_edge,
    "empty": empty,
    "featureless_blob": views.featureless_blob,
    "aggregate": views.aggregate,
    "few_particles": views.few_particle_content,
    "off_centre": views.off_centre,
    "streaky": streaky,
    "ghosted": views.ghosted,
    "ring": ring,
    "lattice": lattice,
    "noise_aligned": noise_aligned,
}


def make_signal(kind: str, scene: Scene, rng: np.random.Generator) -> Signal:
    """The aligned mean signal of a class of ``kind`` (one of :data:`ALL_KINDS`)."""
    if kind not in RECIPES:
        raise ValueError(f"unknown class kind {kind!r}; known: {', '.join(ALL_KINDS)}")
    return RECIPES[kind](scene, rng)


def is_good(kind: str) -> bool:
    """True for the kinds a person selects."""
    return kind in GOOD_KINDS
