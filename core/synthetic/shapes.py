"""Procedural molecules built from secondary structure: helix bundles and β-sheets packed
into domains, multi-domain proteins, symmetric rings and cages, helical filaments and
membrane proteins in a detergent micelle; all as :class:`Structure` point clouds.

Each residue is three pseudo-atoms (backbone, carbonyl, side-chain centroid), so rods of
helices and the pleats of sheets appear in projections at 3-8 Å resolution like real maps.
"""

from __future__ import annotations

import numpy as np
from cryodiscovery.core.synthetic.density import (
    ATOMIC_MODELS,
    F64,
    Ellipsoid,
    Structure,
    axis_rotation,
    combine,
    load_atomic_model,
    random_rotation,
    symmetry_operators,
)

#: Families of molecules the generator can build (config ``shapes``).
SHAPE_FAMILIES: tuple[str, ...] = (
    "atomic",
    "globular",
    "assembly",
    "filament",
    "membrane",
)

# Pseudo-atom weights (electrons): N-CA-C backbone, C=O, side-chain centroid (mean ~4 atoms).
_W_BACKBONE, _W_CARBONYL, _W_SIDE = 19.0, 14.0, 24.0
#: Mean density of protein in pseudo-atom weight per Å³ (≈ 0.43 e/Å³).
PROTEIN_DENSITY = 0.43


def _residues(
    axis_pos: F64, angle: F64, radius_bb: float, side_dir: F64, rng: np.random.Generator
) -> tuple[F64, F64]:
    """Three pseudo-atoms per residue around a local axis along z.

    ``axis_pos`` (r,) z positions, ``angle`` (r,) azimuths of the backbone, ``side_dir``
    (r, 2) unit xy directions of the side chains. Returns points (3r, 3) and weights (3r,).
    """
    n = len(axis_pos)
    bb = np.stack(
        [radius_bb * np.cos(angle), radius_bb * np.sin(angle), axis_pos], axis=1
    )
    co = bb + np.stack(
        [0.8 * np.cos(angle + 1.2), 0.8 * np.sin(angle + 1.2), np.full(n, 0.9)], axis=1
    )
    reach = rng.uniform(2.5, 4.5, n)
    side = bb + np.concatenate(
        [side_dir * reach[:, None], rng.normal(0, 0.6, (n, 1))], axis=1
    )
    w_side = _W_SIDE * rng.uniform(0.2, 1.8, n)
    pts = np.concatenate([bb, co, side])
    w = np.concatenate([np.full(n, _W_BACKBONE), np.full(n, _W_CARBONYL), w_side])
    return pts, w


def helix(length: float, rng: np.random.Generator) -> tuple[F64, F64]:
    """An α-helix of ``length`` Å along z, centred: 1.5 Å rise and 100° per residue."""
    n = max(4, int(length / 1.5))
    z = np.asarray((np.arange(n) - (n - 1) / 2) * 1.5, dtype=np.float64)
    ang: F64 = np.deg2rad(100.0) * np.arange(n) + rng.uniform(0, 2 * np.pi)
    side = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return _residues(z, ang, 2.3, side, rng)


def strand(
    length: float, rng: np.random.Generator, flip: float = 1.0
) -> tuple[F64, F64]:
    """A β-strand of ``length`` Å along z (3.3 Å per residue), pleated in x, side chains ±y."""
    n = max(3, int(length / 3.3))
    z = np.asarray((np.arange(n) - (n - 1) / 2) * 3.3, dtype=np.float64)
    alt = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * flip
    ang: F64 = np.where(alt > 0, 0.0, np.pi)
    side = np.stack([np.zeros(n), alt], axis=1)
    return _residues(z, ang, 0.9, side, rng)


def _place(pts: F64, rot: F64, shift: F64) -> F64:
    return pts @ rot.T + shift


def domain(
    rng: np.random.Generator, radius: float, style: str | None = None
) -> Structure:
    """A compact domain of about ``radius`` Å: a helix bundle, a β-sandwich or α/β layers.

    The domain fills an ellipsoid with semi-axes near ``radius`` (long axis along the
    secondary-structure elements), then is turned to a random orientation.
    """
    style = style or str(
        rng.choice(["alpha", "beta", "alpha_beta"], p=[0.5, 0.15, 0.35])
    )
    a, b = radius * rng.uniform(0.75, 1.1, 2)
    c = radius * rng.uniform(0.9, 1.5)
    parts_p: list[F64] = []
    parts_w: list[F64] = []
    spacing = rng.uniform(9.5, 10.5)
    for x in np.arange(-a, a + 1e-6, spacing) + rng.uniform(-2, 2):
        sheet_layer = style == "beta" or (
            style == "alpha_beta" and abs(x) < 0.6 * spacing
        )
        step = 4.8 if sheet_layer else spacing * 0.95
        offset = 0.0 if sheet_layer else (step / 2) * (round(x / spacing) % 2)
        for y in np.arange(-b, b + 1e-6, step) + offset:
            inside = 1.0 - (x / a) ** 2 - (y / b) ** 2
            if inside < 0.1:
                continue
            half = c * np.sqrt(inside) - 2.0
            if half < 4.0:
                continue
            if sheet_layer:
                p, w = strand(2 * half, rng, flip=1.0 if int(y / 4.8) % 2 else -1.0)
                # Sheets twist about the inter-strand axis, ~15° per strand.
                rot = axis_rotation([0.0, 1.0, 0.0], np.deg2rad(-15.0) * y / 4.8)
            else:
                p, w = helix(2 * half, rng)
                tilt = axis_rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0, 25)))
                rot = tilt @ axis_rotation([0, 0, 1], rng.uniform(0, 2 * np.pi))
            # Real packing is irregular: helices sit ~1 Å off any lattice.
            wobble = rng.normal(0, 1.2 if not sheet_layer else 0.4, 2)
            where = np.array([x + wobble[0], y + wobble[1], rng.normal(0, 1.5)])
            parts_p.append(_place(p, rot, where))
            parts_w.append(w)
    if not parts_p:
        p, w = helix(max(8.0, 2 * c), rng)
        parts_p, parts_w = [p], [w]
    core_pts = np.concatenate(parts_p)
    loops = _loops(rng, core_pts, a + 3, b + 3, c + 3, len(core_pts) // 3 // 6 + 2)
    pts = np.concatenate([core_pts, loops[0]])
    w = np.concatenate([*parts_w, loops[1]])
    rot = random_rotation(rng)
    return Structure(
        (pts @ rot.T).astype(np.float32), w.astype(np.float32), (), "domain"
    ).centred()


def _loops(
    rng: np.random.Generator, core: F64, a: float, b: float, c: float, n_res: int
) -> tuple[F64, F64]:
    """Random-walk coil residues on the domain surface (one merged pseudo-atom each)."""
    start = core[rng.integers(0, len(core), size=max(1, n_res // 6))]
    steps = rng.normal(0, 2.2, (len(start), 6, 3)).cumsum(axis=1)
    pts = (start[:, None, :] + steps).reshape(-1, 3)
    scale = np.sqrt((pts[:, 0] / a) ** 2 + (pts[:, 1] / b) ** 2 + (pts[:, 2] / c) ** 2)
    pts = pts / np.maximum(scale, 1.0)[:, None]
    return pts, np.full(len(pts), _W_BACKBONE + _W_CARBONYL + _W_SIDE * 0.8)


def pack_domains(
    rng: np.random.Generator,
    diameter: float,
    aspect: float = 1.0,
    name: str = "globular",
) -> Structure:
    """A multi-domain protein filling an ellipsoidal envelope of ``diameter`` Å (long axis)."""
    half = diameter / 2
    axes = np.array([half, half / aspect, half / aspect * rng.uniform(0.8, 1.0)])
    radius = float(np.clip(axes[2] * rng.uniform(0.45, 0.75), 8.0, 24.0))
    if radius >= 0.8 * axes[2] and aspect < 1.3:
        return domain(rng, half * 0.85)
    inner = np.maximum(axes - 0.7 * radius, 1e-3)
    target = 0.8 * np.prod(axes) / radius**3
    centres: list[F64] = []
    for _ in range(600):
        cand = rng.uniform(-1, 1, 3) * inner
        if np.sum((cand / inner) ** 2) > 1:
            continue
        if all(np.linalg.norm(cand - c) > 1.3 * radius for c in centres):
            centres.append(cand)
        if len(centres) >= target:
            break
    parts = [
        domain(rng, radius * rng.uniform(0.85, 1.1)).transformed(np.eye(3), c)
        for c in centres
    ]
    return combine(parts or [domain(rng, radius)], name).centred()


def subunit(rng: np.random.Generator, size: float) -> Structure:
    """A building block of about ``size`` Å: an atomic model when one fits, else procedural."""
    for model in ATOMIC_MODELS:
        atomic = load_atomic_model(model)
        if abs(atomic.diameter - size) < 0.25 * size and rng.random() < 0.5:
            return atomic.transformed(random_rotation(rng))
    if size < 50:
        return domain(rng, size / 2 * 0.9)
    return pack_domains(rng, size, aspect=rng.uniform(1.0, 1.8), name="subunit")


def ring_or_dihedral(rng: np.random.Generator, diameter: float) -> Structure:
    """A Cn ring (n = 3-9) or a Dn double ring of ``diameter`` Å, symmetry axis along z."""
    n = int(rng.integers(3, 10))
    dihedral = rng.random() < 0.4
    packing = rng.uniform(0.75, 0.95)
    size = diameter / (1 + packing / np.sin(np.pi / n))
    unit = subunit(rng, size)
    radius = (diameter - unit.diameter) / 2
    z_off = 0.45 * unit.diameter if dihedral else 0.0
    placed = unit.transformed(np.eye(3), np.array([radius, 0.0, z_off]))
    group = f"D{n}" if dihedral else f"C{n}"
    return combine(
        [placed.transformed(op) for op in symmetry_operators(group)], group
    ).centred()


def cage(rng: np.random.Generator, diameter: float) -> Structure:
    """A hollow tetrahedral, octahedral or icosahedral shell of ``diameter`` Å."""
    group = str(rng.choice(["T", "O", "I"], p=[0.25, 0.3, 0.45]))
    count = {"T": 12, "O": 24, "I": 60}[group]
    # Subunits tile the sphere of radius r: r ≈ D/2 - size/2 and size ≈ 2r·sqrt(π/count).
    cover = 2 * np.sqrt(np.pi / count) * rng.uniform(0.85, 1.05)
    radius = (diameter / 2) / (1 + cover / 2)
    unit = subunit(rng, cover * radius)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    placed = unit.transformed(np.eye(3), direction * radius)
    return combine(
        [placed.transformed(op) for op in symmetry_operators(group)], group
    ).centred()


def filament(rng: np.random.Generator, length: float, width: float) -> Structure:
    """A continuous helical filament along z, ``width`` Å across, ``length`` Å long.

    Either an amyloid-like stack (4.8 Å rise, flat subunits) or a 1-3-start helix whose
    rise is a fraction of the subunit size so that neighbours touch.
    """
    twist = np.deg2rad(rng.uniform(-180.0, 180.0))
    if rng.random() < 0.3:
        rise, twist = 4.8, np.deg2rad(rng.uniform(-3.0, 3.0))
        unit = subunit(rng, width)
        unit = Structure(
            unit.points * np.array([1.0, 1.0, 0.15], np.float32),
            unit.weights,
            (),
            "flat",
        )
        unit = Structure(unit.points, unit.weights * np.float32(0.3), (), "flat")
        radius = 0.0
    else:
        size = width * rng.uniform(0.4, 0.65)
        unit = subunit(rng, size)
        radius = max(0.0, (width - unit.diameter) / 2)
        rise = unit.diameter * rng.uniform(0.15, 0.5)
    count = int(length / rise) + 1
    base = unit.transformed(np.eye(3), np.array([radius, 0.0, 0.0]))
    parts = [
        base.transformed(
            axis_rotation([0, 0, 1], k * twist),
            np.array([0.0, 0.0, (k - count / 2) * rise]),
        )
        for k in range(count)
    ]
    return combine(parts, "filament")


def membrane_protein(rng: np.random.Generator, diameter: float) -> Structure:
    """A transmembrane helix bundle in a lower-density detergent micelle, with soluble domains.

    The micelle is an ellipsoidal belt around the membrane region whose density (25-45 %
    of protein) is carved out where the helices are.
    """
    tm_radius = float(np.clip(diameter * rng.uniform(0.18, 0.3), 10.0, 70.0))
    tm_half = rng.uniform(17.0, 22.0)
    parts_p: list[F64] = []
    parts_w: list[F64] = []
    for x in np.arange(-tm_radius, tm_radius + 1, 10.0):
        for y in np.arange(-tm_radius, tm_radius + 1, 10.0) + (
            5.0 if round(x / 10) % 2 else 0.0
        ):
            if x * x + y * y > tm_radius**2:
                continue
            p, w = helix(2 * tm_half + rng.uniform(0, 10), rng)
            tilt = axis_rotation(rng.normal(size=3), np.deg2rad(rng.uniform(0, 25)))
            parts_p.append(p @ tilt.T + np.array([x, y, 0.0]))
            parts_w.append(w)
    tm = Structure(
        np.concatenate(parts_p).astype(np.float32),
        np.concatenate(parts_w).astype(np.float32),
    )
    parts = [tm]
    room = diameter / 2 - tm_half
    for sign in (1.0, -1.0) if rng.random() < 0.35 else (1.0,):
        if room > 12 and rng.random() < 0.85:
            sol = pack_domains(rng, min(2 * room, diameter * rng.uniform(0.5, 0.9)))
            parts.append(
                sol.transformed(
                    np.eye(3), np.array([0, 0, sign * (tm_half + sol.diameter * 0.42)])
                )
            )
    belt = tm_radius + rng.uniform(14.0, 24.0)
    thick = tm_half + rng.uniform(3.0, 8.0)
    rho = PROTEIN_DENSITY * rng.uniform(0.25, 0.45)
    micelle = Ellipsoid(
        np.zeros(3),
        np.diag([belt**-2, belt**-2 * rng.uniform(0.8, 1.0), thick**-2]),
        rho,
    )
    hole = Ellipsoid(
        np.zeros(3), np.diag([tm_radius**-2, tm_radius**-2, tm_half**-2]), -rho
    )
    mol = combine(parts, "membrane")
    return Structure(mol.points, mol.weights, (micelle, hole), "membrane")


def build_molecule(family: str, rng: np.random.Generator, diameter: float) -> Structure:
    """A molecule of ``family`` (see :data:`SHAPE_FAMILIES`) about ``diameter`` Å across.

    Filaments come back longer than ``diameter`` (they cross the mask); the atomic family
    returns the shipped model closest in size, or an assembly of copies when none is close.
    """
    if family not in SHAPE_FAMILIES:
        raise ValueError(
            f"unknown shape family {family!r}; known: {', '.join(SHAPE_FAMILIES)}"
        )
    if family == "atomic":
        sizes = {m: load_atomic_model(m).diameter for m in ATOMIC_MODELS}
        best = min(sizes, key=lambda m: abs(np.log(sizes[m] / diameter)))
        if abs(np.log(sizes[best] / diameter)) < 0.35:
            return load_atomic_model(best)
        family = "assembly"
    if family == "globular":
        return pack_domains(
            rng, diameter, aspect=float(rng.choice([1.0, rng.uniform(1.2, 2.5)]))
        )
    if family == "assembly":
        if diameter > 220 or (diameter > 120 and rng.random() < 0.4):
            return cage(rng, diameter)
        return ring_or_dihedral(rng, diameter)
    if family == "filament":
        return filament(rng, 2.2 * diameter, diameter * rng.uniform(0.2, 0.45))
    return membrane_protein(rng, diameter)
