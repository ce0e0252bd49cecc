"""Projections of :class:`Structure` densities onto square images, plus the Fourier grids
and radial profiles the class-average model works on.

Points are projected along z after rotation and splatted onto the grid (line integrals
of point masses, then a Gaussian blur in Fourier space stands in for the atom shape);
ellipsoids are projected analytically (chord length times density).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.synthetic.density import F64, Structure, axis_rotation

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class FourierGrid:
    """Frequencies of an ``rfft2`` of a ``(box, box)`` image.

    Attributes
    ----------
    box:
        Image size in pixels.
    radius:
        ``(box, box//2+1)`` spatial frequency in cycles per pixel (0-0.707).
    shell:
        ``(box, box//2+1)`` int64 shell index ``round(radius * box)``.
    counts:
        ``(n_shells,)`` Fourier coefficients per shell.
    """

    box: int
    radius: F64
    shell: I64
    counts: F64

    @property
    def n_shells(self) -> int:
        """Number of shells, ``box//2 + 1`` plus the corners."""
        return int(self.counts.shape[0])

    def radial_mean(self, values: F64) -> F64:
        """Mean of ``values`` (rfft layout) per shell, ``(n_shells,)``."""
        sums = np.bincount(
            self.shell.ravel(), weights=values.ravel(), minlength=self.n_shells
        )
        return np.asarray(sums / np.maximum(self.counts, 1.0), dtype=np.float64)

    def to_2d(self, profile: F64) -> F64:
        """A radial profile ``(n_shells,)`` spread onto the rfft layout."""
        return np.asarray(profile[self.shell], dtype=np.float64)


@functools.lru_cache(maxsize=16)
def fourier_grid(box: int) -> FourierGrid:
    """The (cached) :class:`FourierGrid` of a ``box`` × ``box`` image."""
    ky = np.fft.fftfreq(box)[:, None]
    kx = np.fft.rfftfreq(box)[None, :]
    radius = np.sqrt(kx**2 + ky**2)
    shell = np.rint(radius * box).astype(np.int64)
    counts = np.bincount(shell.ravel()).astype(np.float64)
    return FourierGrid(box, radius, shell, counts)


def gaussian_filter_ft(box: int, sigma_px: float) -> F64:
    """The rfft-layout transfer function of a Gaussian blur of ``sigma_px`` pixels."""
    grid = fourier_grid(box)
    return np.asarray(
        np.exp(-2.0 * (np.pi * sigma_px * grid.radius) ** 2), dtype=np.float64
    )


def splat(xy: F64, weights: F64, box: int) -> F64:
    """Splat points at pixel coordinates ``xy`` (n, 2) = (x, y) onto a ``(box, box)`` image.

    Each point goes to the nearest cell of a 2× finer grid whose 2 × 2 blocks are then
    summed (a quarter-pixel placement error, far below the blur applied afterwards, at a
    quarter of the cost of bilinear weights). The image is indexed ``[y, x]``; points
    outside are dropped.
    """
    fine = 2 * box
    # Cells 0 and fine + 1 of a padded grid catch the points outside; they are cut off.
    ix = np.clip(np.floor(2.0 * xy[:, 0] + 2.0), 0, fine + 1).astype(np.int64)
    iy = np.clip(np.floor(2.0 * xy[:, 1] + 2.0), 0, fine + 1).astype(np.int64)
    side = fine + 2
    grid = np.bincount(iy * side + ix, weights, side * side).reshape(side, side)[
        1:-1, 1:-1
    ]
    out = grid[0::2, 0::2] + grid[1::2, 0::2] + grid[0::2, 1::2] + grid[1::2, 1::2]
    return np.asarray(out, dtype=np.float64)


def project(
    structure: Structure,
    rotations: F64,
    shifts: F64,
    weights: F64,
    pixel_size: float,
    box: int,
) -> F64:
    """Weighted sum of projections of ``structure`` along z.

    Parameters
    ----------
    rotations:
        ``(k, 3, 3)`` rotations applied to the structure before projecting.
    shifts:
        ``(k, 2)`` in-plane shifts in pixels (x, y), added after projection.
    weights:
        ``(k,)`` weight of each projection in the sum.
    pixel_size:
        Å per pixel.
    box:
        Output size; the structure's origin lands on pixel ``box // 2``.

    Returns
    -------
    ``(box, box)`` float64 projected density (weight per pixel).
    """
    k = len(rotations)
    pts = structure.points.astype(np.float64)
    centre = box // 2
    image = np.zeros((box, box))
    if len(pts):
        # (k, 2, m): rows x and y of each rotated point cloud, in pixels.
        xy = np.matmul(rotations[:, :2, :] / pixel_size, pts.T)
        xy += (shifts + centre)[:, :, None]
        xy = xy.transpose(0, 2, 1)
        w = (weights[:, None] * structure.weights[None, :].astype(np.float64)).ravel()
        image += splat(xy.reshape(-1, 2), w, box)
    # Ellipsoids are smooth: three of the jittered orientations represent all of them.
    pick = np.unique(np.linspace(0, k - 1, min(k, 3)).round().astype(np.int64))
    w_pick = weights[pick] * (weights.sum() / max(float(weights[pick].sum()), 1e-30))
    for ell in structure.ellipsoids:
        for i, w_i in zip(pick, w_pick, strict=True):
            image += w_i * project_ellipsoid(
                rotations[i] @ ell.centre,
                rotations[i] @ ell.matrix @ rotations[i].T,
                ell.density,
                shifts[i],
                pixel_size,
                box,
            )
    return image


def project_ellipsoid(
    centre: F64, matrix: F64, density: float, shift: F64, pixel_size: float, box: int
) -> F64:
    """Chord length × ``density`` × pixel area of an ellipsoid, along z, ``(box, box)``."""
    coords = (np.arange(box) - box // 2) * pixel_size
    dx = coords[None, :] - centre[0] - shift[0] * pixel_size
    dy = coords[:, None] - centre[1] - shift[1] * pixel_size
    m = matrix
    lin = m[0, 2] * dx + m[1, 2] * dy
    quad = m[0, 0] * dx * dx + 2 * m[0, 1] * dx * dy + m[1, 1] * dy * dy
    disc = lin * lin - m[2, 2] * (quad - 1.0)
    chord = 2.0 * np.sqrt(np.clip(disc, 0.0, None)) / m[2, 2]
    return np.asarray(chord * density * pixel_size**2, dtype=np.float64)


def jittered_views(
    view: F64,
    rng: np.random.Generator,
    count: int,
    sigma_tilt_deg: float,
    sigma_psi_deg: float,
    sigma_shift_px: float,
) -> tuple[F64, F64]:
    """``count`` rotations scattered about ``view`` and matching in-plane shifts.

    Out-of-plane error is a rotation about a random in-plane axis (Gaussian angle,
    ``sigma_tilt_deg``), in-plane error a rotation about z (``sigma_psi_deg``); shifts are
    Gaussian with ``sigma_shift_px`` per axis. Returns ``(count, 3, 3)`` and ``(count, 2)``.
    """
    rots = np.empty((count, 3, 3))
    for i in range(count):
        phi = rng.uniform(0, 2 * np.pi)
        tilt = axis_rotation(
            [np.cos(phi), np.sin(phi), 0.0], np.deg2rad(rng.normal(0, sigma_tilt_deg))
        )
        psi = axis_rotation([0.0, 0.0, 1.0], np.deg2rad(rng.normal(0, sigma_psi_deg)))
        rots[i] = psi @ tilt @ view
    shifts = rng.normal(0, sigma_shift_px, (count, 2))
    return rots, shifts


def soft_circular_mask(box: int, radius_px: float, edge_px: float = 5.0) -> F64:
    """RELION-style soft circular mask: 1 inside ``radius_px``, raised-cosine edge of ``edge_px``."""
    c = box // 2
    yy, xx = np.mgrid[0:box, 0:box]
    r = np.hypot(xx - c, yy - c)
    edge = np.clip((r - radius_px) / max(edge_px, 1e-6), 0.0, 1.0)
    return np.asarray(0.5 + 0.5 * np.cos(np.pi * edge), dtype=np.float64)
