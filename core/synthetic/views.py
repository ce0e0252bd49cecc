"""Aligned-signal recipes built from the data set's molecule: good views with realistic
alignment error, and the junk that comes from the molecule itself (featureless blobs of
misaligned particles, ghosted or mixed views, off-centre or clipped particles with
neighbours, aggregates).

Every recipe returns the mean of the particles' aligned signals (projected density, in
the molecule's units) as a small weighted sample of jittered projections: 6-24
projections stand in for thousands of particles, since the average's noise is added
analytically by :mod:`cryodiscovery.core.synthetic.averaging`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryodiscovery.core.synthetic.density import (
    F64,
    Structure,
    axis_rotation,
    random_rotation,
)
from cryodiscovery.core.synthetic.projection import jittered_views, project


@dataclass(frozen=True, eq=False)
class Scene:
    """What the recipes of one data set share.

    Attributes
    ----------
    molecule:
        The (coarse-grained) molecule of the data set.
    box, pixel_size:
        Image size (px) and sampling (Å/px).
    mask_radius:
        Radius of the soft circular mask in pixels (RELION ``--particle_diameter`` / 2).
    particle_radius:
        Radius of the molecule in pixels.
    ref_peak:
        Typical peak of one projection of the molecule (projected density units), the
        yardstick for junk contrast.
    filament:
        True when the molecule is a helical filament (views are side views).
    filament_psi:
        In-plane angle (rad) of filament axes, or ``None`` for random per class.
    preferred:
        ``(p, 3, 3)`` preferred orientations (may be empty), and ``preferred_weight`` the
        chance a view comes from near one of them.
    """

    molecule: Structure
    box: int
    pixel_size: float
    mask_radius: float
    particle_radius: float
    ref_peak: float
    filament: bool
    filament_psi: float | None
    preferred: F64
    preferred_weight: float

    def view(self, rng: np.random.Generator) -> F64:
        """One random view (3, 3) of the molecule, following the data set's view prior."""
        spin = axis_rotation([0, 0, 1], rng.uniform(0, 2 * np.pi))
        if self.filament:
            psi = (
                self.filament_psi
                if self.filament_psi is not None
                else rng.uniform(0, np.pi)
            )
            tilt = np.pi / 2 + np.deg2rad(rng.normal(0, 6.0))
            return axis_rotation([0, 0, 1], psi) @ axis_rotation([1, 0, 0], tilt) @ spin
        if len(self.preferred) and rng.random() < self.preferred_weight:
            base = self.preferred[rng.integers(len(self.preferred))]
            wobble = axis_rotation(rng.normal(size=3), np.deg2rad(rng.normal(0, 12.0)))
            rot: F64 = np.asarray(spin @ wobble @ base, dtype=np.float64)
            return rot
        return random_rotation(rng)

    def project(
        self, rots: F64, shifts: F64, weights: F64, structure: Structure | None = None
    ) -> F64:
        """Weighted sum of projections (see :func:`projection.project`)."""
        mol = self.molecule if structure is None else structure
        return project(mol, rots, shifts, weights, self.pixel_size, self.box)


@dataclass(frozen=True, eq=False)
class Signal:
    """A class's aligned mean signal and the alignment spread behind it.

    Attributes
    ----------
    image:
        ``(box, box)`` projected density.
    sigma_rot_deg:
        In-plane rotational spread of the aligned particles (degrees).
    sigma_shift_px:
        Translational spread (pixels).
    blur_px:
        Heterogeneity blur (pixels): features of ``image`` sit this far apart from one
        particle to the next, so the mean is ``image`` blurred by a Gaussian of this width
        and the lost power becomes particle-to-particle variance.
    spread:
        Variance between particles as a fraction of the mean's own power.
    spread_ref:
        Variance between particles as a fraction of one sharp projection's power (a
        class of unlike views or shapes: each particle is sharp, their mean is not).
    """

    image: F64
    sigma_rot_deg: float
    sigma_shift_px: float
    blur_px: float = 0.0
    spread: float = 0.0
    spread_ref: float = 0.0


@dataclass(frozen=True)
class Jitter:
    """Alignment errors of a class's particles.

    Attributes
    ----------
    tilt, psi:
        Out-of-plane and in-plane rotational spread (degrees, Gaussian sd).
    shift:
        Translational spread (pixels per axis).
    misassigned:
        Fraction of the class's particles that are random other views.
    count:
        Jittered projections that represent the class.
    """

    tilt: float
    psi: float
    shift: float
    misassigned: float = 0.0
    count: int = 8


def aligned_view(
    scene: Scene,
    rng: np.random.Generator,
    view: F64,
    jitter: Jitter,
    centre: tuple[float, float] = (0.0, 0.0),
) -> F64:
    """Mean of a view's jittered projections plus a fraction of misassigned random views,
    centred at ``centre`` (pixels from the box centre)."""
    j = jitter
    rots, shifts = jittered_views(view, rng, j.count, j.tilt, j.psi, j.shift)
    weights = np.full(j.count, (1.0 - j.misassigned) / j.count)
    if j.misassigned > 0:
        extra = max(1, round(j.misassigned * 40))
        others = np.stack([scene.view(rng) for _ in range(extra)])
        rots = np.concatenate([rots, others])
        shifts = np.concatenate([shifts, rng.normal(0, 2 * j.shift + 1, (extra, 2))])
        weights = np.concatenate([weights, np.full(extra, j.misassigned / extra)])
    return scene.project(rots, shifts + np.asarray(centre), weights)


def good_view(scene: Scene, rng: np.random.Generator, blurry: bool = False) -> Signal:
    """A well-aligned view; ``blurry`` widens the alignment spread (still a good class)."""
    if blurry:
        tilt, psi, shift = (
            rng.uniform(5, 11),
            rng.uniform(2.5, 6),
            rng.uniform(0.8, 2.0),
        )
        mis = rng.uniform(0.02, 0.1)
    else:
        tilt, psi, shift = (
            rng.uniform(1, 5),
            rng.uniform(0.5, 2.5),
            rng.uniform(0.2, 0.9),
        )
        mis = rng.uniform(0.0, 0.05)
    shift = shift / max(
        1.0, scene.pixel_size / 2.5
    )  # Å-scale errors at coarse sampling
    jitter = Jitter(tilt, psi, shift, mis, int(rng.integers(6, 11)))
    view = scene.view(rng)
    image = aligned_view(scene, rng, view, jitter)
    spread_ref = rng.uniform(0.05, 0.2) if blurry else rng.uniform(0.01, 0.08)
    if rng.random() < 0.3:
        # Real classes pool neighbouring views: a second view 10-20 degrees away.
        turn = axis_rotation(rng.normal(size=3), np.deg2rad(rng.uniform(10.0, 20.0)))
        w = rng.uniform(0.2, 0.5)
        image = (1 - w) * image + w * aligned_view(scene, rng, turn @ view, jitter)
        spread_ref += 0.5 * w * rng.uniform(0.05, 0.2)
    if rng.random() < 0.25:
        image = image + edge_neighbour(scene, rng)
    return Signal(image, psi, shift, spread_ref=spread_ref)


def edge_neighbour(scene: Scene, rng: np.random.Generator) -> F64:
    """The faint smear of neighbouring particles at the mask edge of a good class: in
    crowded micrographs each particle has neighbours at random places just beyond its
    own radius, so their unaligned sum is a weak, blurred partial ring or arc."""
    count = 8
    ang = rng.uniform(0, 2 * np.pi) + rng.normal(0, rng.uniform(0.2, 1.2), count)
    d = scene.particle_radius * rng.uniform(1.9, 2.5) + rng.normal(0, 1.5, count)
    d = np.minimum(d, 1.1 * scene.mask_radius)
    shifts = np.stack([d * np.cos(ang), d * np.sin(ang)], axis=1)
    rots = np.stack([scene.view(rng) for _ in range(count)])
    weights = np.full(count, rng.uniform(0.15, 0.4) / count)
    return scene.project(rots, shifts, weights)


def featureless_blob(scene: Scene, rng: np.random.Generator) -> Signal:
    """A blob or ring of particle size: misaligned or heterogeneous particles averaged.

    Either many random views, a view smeared over all in-plane angles (a rotational
    average: disc with soft concentric rings), or a view with very large errors.
    """
    mode = rng.choice(["random_views", "rotational", "smeared"], p=[0.4, 0.35, 0.25])
    count = 16
    if mode == "random_views":
        rots = np.stack([scene.view(rng) for _ in range(count)])
        shifts = rng.normal(0, rng.uniform(0.5, 3.0), (count, 2))
        sig_rot = 60.0
    elif mode == "rotational":
        view = scene.view(rng)
        psis = rng.uniform(0, 2 * np.pi, count)
        rots = np.stack([axis_rotation([0, 0, 1], p) @ view for p in psis])
        shifts = rng.normal(0, rng.uniform(0.3, 1.5), (count, 2))
        sig_rot = 100.0
    else:
        rots, shifts = jittered_views(
            scene.view(rng), rng, count, 35.0, 40.0, rng.uniform(2, 5)
        )
        sig_rot = 40.0
    image = scene.project(rots, shifts, np.full(count, 1.0 / count))
    blur = rng.uniform(2.0, 12.0) / scene.pixel_size
    return Signal(
        image,
        sig_rot,
        float(np.abs(shifts).mean()),
        blur_px=blur,
        spread_ref=rng.uniform(0.3, 0.7),
    )


def ghosted(scene: Scene, rng: np.random.Generator) -> Signal:
    """Two or more views superposed: a doubled view (offset or turned) or mixed views."""
    view = scene.view(rng)
    mode = rng.choice(["offset", "turned", "mixed"], p=[0.35, 0.25, 0.4])
    jit = Jitter(3.0, 2.0, 0.6, 0.02, 6)
    r = scene.particle_radius
    if mode == "offset":
        d = rng.uniform(0.25, 0.7) * r
        ang = rng.uniform(0, 2 * np.pi)
        off = (d * np.cos(ang) / 2, d * np.sin(ang) / 2)
        a = aligned_view(scene, rng, view, jit, off)
        b = aligned_view(scene, rng, view, jit, (-off[0], -off[1]))
        frac = rng.uniform(0.35, 0.65)
        return Signal(
            frac * a + (1 - frac) * b, 5.0, d / 2, spread_ref=rng.uniform(0.1, 0.3)
        )
    if mode == "turned":
        turn = axis_rotation(
            [0, 0, 1], np.deg2rad(rng.uniform(20, 160)) * rng.choice([-1, 1])
        )
        a = aligned_view(scene, rng, view, jit)
        b = aligned_view(scene, rng, turn @ view, jit)
        return Signal(0.5 * a + 0.5 * b, 30.0, 0.6, spread_ref=rng.uniform(0.1, 0.3))
    n_views = int(rng.integers(2, 5))
    parts = [aligned_view(scene, rng, scene.view(rng), jit) for _ in range(n_views)]
    w = rng.dirichlet(np.full(n_views, 3.0))
    mixed = np.tensordot(w, np.stack(parts), axes=1)
    return Signal(
        mixed, 25.0, 1.0, spread_ref=(1.0 - float(np.sum(w**2))) * rng.uniform(0.3, 0.6)
    )


def off_centre(scene: Scene, rng: np.random.Generator) -> Signal:
    """A particle far from the centre (clipped by the mask) or a neighbour intruding."""
    ang = rng.uniform(0, 2 * np.pi)
    jit = Jitter(3.0, 2.0, 0.8, 0.03, 6)
    if rng.random() < 0.55:
        d = rng.uniform(0.4, 0.95) * scene.mask_radius
        offset = (d * np.cos(ang), d * np.sin(ang))
        image = aligned_view(scene, rng, scene.view(rng), jit, offset)
        return Signal(image, 4.0, 1.0, spread_ref=rng.uniform(0.05, 0.3))
    centre = aligned_view(scene, rng, scene.view(rng), jit)
    d = scene.particle_radius * rng.uniform(1.5, 2.2)
    loose = Jitter(6.0, 5.0, 1.0, 0.05, 6)
    offset = (d * np.cos(ang), d * np.sin(ang))
    neighbour = aligned_view(scene, rng, scene.view(rng), loose, offset)
    frac = rng.uniform(0.6, 1.0)
    weak = rng.uniform(0.6, 1.0)  # the centred particle is often weaker (mixed)
    return Signal(
        weak * centre + frac * neighbour, 6.0, 1.5, spread_ref=rng.uniform(0.1, 0.4)
    )


def aggregate(scene: Scene, rng: np.random.Generator) -> Signal:
    """A big irregular clump of several molecules, different in every particle (fuzzy)."""
    copies = int(rng.integers(3, 9))
    spread = scene.particle_radius * scene.pixel_size * rng.uniform(0.7, 1.4)
    centre = rng.normal(0, 0.15 * scene.mask_radius, 2)
    images = []
    for _ in range(2):
        parts = [
            scene.molecule.transformed(random_rotation(rng), rng.normal(0, spread, 3))
            for _ in range(copies)
        ]
        clump = Structure(
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.weights for p in parts]),
            tuple(e for p in parts for e in p.ellipsoids),
        )
        rots, shifts = jittered_views(np.eye(3), rng, 2, 10.0, 10.0, 2.0)
        images.append(scene.project(rots, shifts + centre, np.full(2, 0.5), clump))
        centre = centre + rng.normal(0, 1.0, 2)
    blur = rng.uniform(3.0, 10.0) / scene.pixel_size
    return Signal(
        np.mean(images, axis=0),
        30.0,
        3.0,
        blur_px=blur,
        spread_ref=rng.uniform(0.3, 1.0),
    )


def few_particle_content(scene: Scene, rng: np.random.Generator) -> Signal:
    """What a class of a handful of particles holds: a poorly aligned view or a mixture."""
    if rng.random() < 0.5:
        image = aligned_view(
            scene, rng, scene.view(rng), Jitter(12.0, 10.0, 2.0, 0.3, 4)
        )
        return Signal(image, 10.0, 2.0, spread_ref=rng.uniform(0.2, 0.5))
    return featureless_blob(scene, rng)
