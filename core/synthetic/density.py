"""3D densities as weighted point clouds (atoms or coarse-grained groups of atoms) plus
analytic ellipsoids (micelles, dense contaminants), and the shipped atomic models.

A point cloud projects exactly and at any pixel size, so one molecule serves every box and
sampling; coarse-graining keeps the point count bounded for large assemblies.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Shipped atomic models (CC0, wwPDB), reduced to heavy-atom coordinates.
ATOMIC_MODELS: tuple[str, ...] = ("haemoglobin_5me2", "spike_ntd_6vyb")

# Electrons per heavy atom; the weights only need the right relative scattering.
_ELEMENT_WEIGHT = {"C": 6.0, "N": 7.0, "O": 8.0, "S": 16.0, "P": 15.0, "FE": 26.0}


@dataclass(frozen=True)
class Ellipsoid:
    """A uniform ellipsoid of density: points ``x`` with ``(x-c)ᵀ M (x-c) <= 1``.

    Parameters
    ----------
    centre:
        ``(3,)`` centre in Å.
    matrix:
        ``(3, 3)`` symmetric positive-definite shape matrix in Å⁻².
    density:
        Density per Å³ in the units of point weights per Å³ (negative carves a hole).
    """

    centre: F64
    matrix: F64
    density: float

    def rotated(self, rot: F64) -> Ellipsoid:
        """The ellipsoid after the rotation ``rot`` (3, 3) about the origin."""
        return Ellipsoid(rot @ self.centre, rot @ self.matrix @ rot.T, self.density)


@dataclass(frozen=True)
class Structure:
    """A 3D density: weighted points plus ellipsoids, centred near the origin.

    Parameters
    ----------
    points:
        ``(m, 3)`` float32 positions in Å.
    weights:
        ``(m,)`` float32 scattering weights (electrons, or sums of them per group).
    ellipsoids:
        Extra analytic components (micelle belts, holes).
    name:
        What it is, for logs and truth tables.
    """

    points: F32
    weights: F32
    ellipsoids: tuple[Ellipsoid, ...] = ()
    name: str = ""

    @property
    def diameter(self) -> float:
        """Robust diameter in Å: twice the 99th percentile distance from the centre."""
        if len(self.points) == 0:
            return 0.0
        radius = np.linalg.norm(self.points, axis=1)
        extent = float(np.percentile(radius, 99.0)) * 2.0
        for ell in self.ellipsoids:
            if ell.density > 0:
                semi = 1.0 / np.sqrt(np.linalg.eigvalsh(ell.matrix).min())
                extent = max(extent, 2.0 * (np.linalg.norm(ell.centre) + semi))
        return extent

    def centred(self) -> Structure:
        """A copy moved so that the weighted centre of the points is the origin."""
        if len(self.points) == 0:
            return self
        centre = np.average(self.points, axis=0, weights=self.weights)
        ells = tuple(
            Ellipsoid(e.centre - centre, e.matrix, e.density) for e in self.ellipsoids
        )
        pts = (self.points - centre).astype(np.float32)
        return Structure(pts, self.weights, ells, self.name)

    def transformed(self, rot: F64, shift: F64 | None = None) -> Structure:
        """A copy rotated by ``rot`` (3, 3), then moved by ``shift`` (3,) Å."""
        move = np.zeros(3) if shift is None else np.asarray(shift, dtype=np.float64)
        pts = (self.points.astype(np.float64) @ rot.T + move).astype(np.float32)
        ells = tuple(
            Ellipsoid(rot @ e.centre + move, rot @ e.matrix @ rot.T, e.density)
            for e in self.ellipsoids
        )
        return Structure(pts, self.weights, ells, self.name)


def combine(parts: list[Structure], name: str = "") -> Structure:
    """One structure holding all points and ellipsoids of ``parts``."""
    if not parts:
        raise ValueError("combine needs at least one structure")
    points = np.concatenate([p.points for p in parts]).astype(np.float32)
    weights = np.concatenate([p.weights for p in parts]).astype(np.float32)
    ells = tuple(e for p in parts for e in p.ellipsoids)
    return Structure(points, weights, ells, name or parts[0].name)


def parse_pdb(text: str, name: str = "") -> Structure:
    """Heavy atoms of a PDB file's ATOM/HETATM records as a centred structure.

    Parameters
    ----------
    text:
        PDB file contents; coordinates in columns 31-54, the element from columns 77-78
        when present, else from the atom name (columns 13-14). Hydrogens and waters are
        skipped.
    """
    coords: list[tuple[float, float, float]] = []
    weights: list[float] = []
    for line in text.splitlines():
        if not line.startswith(("ATOM", "HETATM")) or line[17:20] == "HOH":
            continue
        element = line[76:78].strip().upper() if len(line) >= 78 else ""
        if not element:
            element = line[12:14].strip().upper().lstrip("0123456789")
            element = "FE" if element == "FE" else element[:1]
        if element in ("H", "D"):
            continue
        coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        weights.append(_ELEMENT_WEIGHT.get(element, 6.0))
    if not coords:
        raise ValueError(f"no atoms in PDB text {name!r}")
    pts = np.asarray(coords, dtype=np.float32)
    return Structure(pts, np.asarray(weights, dtype=np.float32), (), name).centred()


@functools.cache
def load_atomic_model(name: str) -> Structure:
    """One of :data:`ATOMIC_MODELS`, parsed once per process and cached."""
    if name not in ATOMIC_MODELS:
        raise ValueError(
            f"unknown atomic model {name!r}; known: {', '.join(ATOMIC_MODELS)}"
        )
    text = (
        resources.files("cryodiscovery.core")
        .joinpath("structures", f"{name}.pdb")
        .read_text(encoding="ascii")
    )
    return parse_pdb(text, name)


def coarse_grain(structure: Structure, grid: float) -> Structure:
    """Merge points that share a cube of side ``grid`` Å into one weighted centroid.

    Keeps the projected density at resolutions coarser than about ``2 * grid`` while
    bounding the point count (a 60-mer cage has ~10⁵-10⁶ atoms).
    """
    if grid <= 0:
        raise ValueError(f"grid must be positive, got {grid}")
    pts = structure.points.astype(np.float64)
    if len(pts) == 0:
        return structure
    cells = np.floor((pts - pts.min(axis=0)) / grid).astype(np.int64)
    dims = cells.max(axis=0) + 1
    flat = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    uniq, inverse = np.unique(flat, return_inverse=True)
    w = structure.weights.astype(np.float64)
    total = np.bincount(inverse, weights=w, minlength=len(uniq))
    centroid = (
        np.stack(
            [
                np.bincount(inverse, weights=w * pts[:, i], minlength=len(uniq))
                for i in range(3)
            ],
            axis=1,
        )
        / total[:, None]
    )
    return Structure(
        centroid.astype(np.float32),
        total.astype(np.float32),
        structure.ellipsoids,
        structure.name,
    )


def bounded(structure: Structure, pixel_size: float, max_points: int) -> Structure:
    """Coarse-grain ``structure`` so it has at most about ``max_points`` points.

    The grid never exceeds ``1.2 * pixel_size`` unless the budget forces it, and atoms are
    kept as they are when they already fit.
    """
    n = len(structure.points)
    if n <= max_points:
        return structure
    grid = max(0.5, 0.6 * pixel_size)
    out = coarse_grain(structure, grid)
    while len(out.points) > max_points:
        grid *= 1.3
        out = coarse_grain(structure, grid)
    log.debug(
        "coarse-grained %s: %d -> %d points (grid %.2f Å)",
        structure.name,
        n,
        len(out.points),
        grid,
    )
    return out


def random_rotation(rng: np.random.Generator) -> F64:
    """A rotation matrix (3, 3) uniform on SO(3) (from a random unit quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    return quaternion_matrix(q)


def quaternion_matrix(q: npt.ArrayLike) -> F64:
    """Rotation matrix (3, 3) of the unit quaternion ``q`` = (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def axis_rotation(axis: npt.ArrayLike, angle: float) -> F64:
    """Rotation matrix (3, 3) by ``angle`` radians about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    half = 0.5 * angle
    return quaternion_matrix(np.concatenate([[np.cos(half)], np.sin(half) * a]))


def symmetry_operators(group: str) -> list[F64]:
    """Rotation matrices of a point group: ``"C<n>"``, ``"D<n>"``, ``"T"``, ``"O"``, ``"I"``."""
    z = np.array([0.0, 0.0, 1.0])
    if group[0] in "CD" and group[1:].isdigit():
        n = int(group[1:])
        ops = [axis_rotation(z, 2 * np.pi * k / n) for k in range(n)]
        if group[0] == "D":
            flip = axis_rotation([1.0, 0.0, 0.0], np.pi)
            ops += [flip @ op for op in ops]
        return ops
    if group in ("T", "O", "I"):
        return _polyhedral(group)
    raise ValueError(f"unknown point group {group!r}")


def _polyhedral(group: str) -> list[F64]:
    """Close a pair of generators under multiplication (12, 24 or 60 operators)."""
    if group == "T":
        gens = [
            axis_rotation([0, 0, 1], np.pi),
            axis_rotation([1, 1, 1], 2 * np.pi / 3),
        ]
    elif group == "O":
        gens = [
            axis_rotation([0, 0, 1], np.pi / 2),
            axis_rotation([1, 1, 1], 2 * np.pi / 3),
        ]
    else:
        phi = (1 + 5**0.5) / 2
        gens = [
            axis_rotation([0, 1, phi], 2 * np.pi / 5),
            axis_rotation([1, 1, 1], 2 * np.pi / 3),
        ]
    ops: list[F64] = [np.eye(3)]
    frontier = list(ops)
    while frontier:
        new: list[F64] = []
        for a in frontier:
            for g in gens:
                c = g @ a
                if not any(np.allclose(c, b, atol=1e-6) for b in ops):
                    ops.append(c)
                    new.append(c)
        frontier = new
    return ops
