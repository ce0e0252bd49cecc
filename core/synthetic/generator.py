"""Simulate one 2D classification run: a molecule, its particles' physics, good classes and
junk classes formed as RELION forms class averages, metadata, and output conventions.

One call is one run (one box, pixel size, mask and molecule, like a real Class2D job);
:func:`simulate_runs` makes many runs for training sets. Deterministic in the seed: each
class draws from its own child of the run's :class:`numpy.random.SeedSequence`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from cryodiscovery.core.classes import ClassAverages, Label, Provenance
from cryodiscovery.core.synthetic import metadata as meta
from cryodiscovery.core.synthetic.averaging import (
    Average,
    Physics,
    PhysicsParams,
    calibrate,
    estimated_resolution,
    form_average,
    lowpass_profile,
    make_physics,
    to_image,
)
from cryodiscovery.core.synthetic.config import SimulationConfig
from cryodiscovery.core.synthetic.density import (
    F64,
    Structure,
    bounded,
    random_rotation,
)
from cryodiscovery.core.synthetic.display import Display, apply_display, sample_display
from cryodiscovery.core.synthetic.junk import (
    GOOD_KINDS,
    JUNK_KINDS,
    is_good,
    make_signal,
)
from cryodiscovery.core.synthetic.library import load_structure
from cryodiscovery.core.synthetic.projection import gaussian_filter_ft, project
from cryodiscovery.core.synthetic.shapes import SHAPE_FAMILIES, build_molecule
from cryodiscovery.core.synthetic.views import Scene

log = logging.getLogger(__name__)

# Relative frequency of junk kinds in a run, and of shape families among runs. A real
# Class2D run does not hold every kind of junk: after picking, most junk classes are
# particle-like (misaligned or heterogeneous particles averaged into a featureless or
# ghosted blob, false picks aligned to noise, off-centre or sparse classes), while ice,
# carbon, streaks, rings and lattices come and go with the grid and the picker. The
# proportions were chosen with benchmarks/bench_realism.py (no weights are fitted there).
_JUNK_WEIGHTS = {
    "ice": 0.6,
    "carbon_edge": 0.6,
    "empty": 0.6,
    "featureless_blob": 2.5,
    "aggregate": 0.8,
    "few_particles": 1.2,
    "off_centre": 1.2,
    "streaky": 0.5,
    "ghosted": 1.5,
    "ring": 0.4,
    "lattice": 0.3,
    "noise_aligned": 1.2,
}
# Largest molecule (Å) of each family: a 500 Å membrane protein does not exist.
_LARGEST = {
    "atomic": 1200.0,
    "globular": 350.0,
    "assembly": 1200.0,
    "filament": 1e9,
    "membrane": 260.0,
}
# Single-particle work is mostly compact soluble and membrane complexes; hollow
# symmetric assemblies and filaments (mostly processed as helices) are a minority.
_SHAPE_WEIGHTS = {
    "atomic": 0.2,
    "globular": 0.4,
    "assembly": 0.12,
    "filament": 0.05,
    "membrane": 0.23,
}


#: Share of runs on a real structure when :attr:`SimulationConfig.structures` names some.
_ATOMIC_WEIGHT_WITH_LIBRARY = 0.45


@dataclass(frozen=True, eq=False)
class SimulatedRun:
    """One simulated Class2D run with its ground truth.

    Attributes
    ----------
    classes:
        The class averages (labels: selected for good kinds, rejected for junk; kinds).
    snr:
        Particle SNR of the run.
    shape, molecule:
        Shape family and molecule name.
    mask_diameter_A:
        RELION ``--particle_diameter``.
    current_resolution_A:
        The run's ``rlnCurrentResolution``: every class is low-passed there.
    display:
        Output conventions of the run.
    """

    classes: ClassAverages
    snr: float
    shape: str
    molecule: str
    mask_diameter_A: float
    current_resolution_A: float
    display: Display


@dataclass(frozen=True, eq=False)
class _Run:
    scene: Scene
    physics: Physics
    counts: meta.CountParams
    shape: str


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _choose(
    rng: np.random.Generator, names: tuple[str, ...], weights: dict[str, float]
) -> str:
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def _sample_geometry(
    config: SimulationConfig, rng: np.random.Generator
) -> tuple[int, float, str, Structure, float, float]:
    """Box, pixel size, shape family, molecule, mask radius and particle radius (px).

    The mask fits the molecule as RELION users set ``--particle_diameter``: the particle
    fills 45-80 % of the mask diameter, the mask 50-94 % of the box; filaments cross it.
    """
    box = int(rng.choice(config.box_sizes))
    apix = _log_uniform(rng, *config.pixel_size_range)
    weights = dict(_SHAPE_WEIGHTS)
    if config.structures:
        weights["atomic"] = _ATOMIC_WEIGHT_WITH_LIBRARY
    shape = _choose(rng, config.shapes, weights)
    mask_px = box * rng.uniform(0.31, 0.5)
    filament = shape == "filament"
    fill = rng.uniform(0.9, 1.3) if filament else rng.uniform(0.45, 0.8)
    target = min(2 * mask_px * apix * fill, _LARGEST[shape])
    if shape == "atomic" and config.structures:
        path = config.structures[int(rng.integers(len(config.structures)))]
        molecule = load_structure(path).transformed(random_rotation(rng))
    else:
        molecule = build_molecule(shape, rng, target)
    if filament:
        radial = np.hypot(molecule.points[:, 0], molecule.points[:, 1])
        radius_px = float(np.percentile(radial, 99)) / apix + 2.0
    else:
        fill = rng.uniform(0.45, 0.8)
        if not 0.25 * box <= molecule.diameter / 2 / apix / fill <= 0.5 * box:
            # The molecule does not fit this sampling: resample within the allowed range.
            apix = float(
                np.clip(
                    molecule.diameter / 2 / fill / mask_px, *config.pixel_size_range
                )
            )
        radius_px = molecule.diameter / 2 / apix
        mask_px = float(np.clip(radius_px / fill, 0.25 * box, 0.5 * box))
    molecule = bounded(molecule, apix, int(np.clip(0.6 * box * box, 6000, 30000)))
    return box, apix, shape, molecule, float(mask_px), float(radius_px)


def _sample_physics_params(
    config: SimulationConfig, rng: np.random.Generator, diameter_A: float
) -> PhysicsParams:
    return PhysicsParams(
        defocus_um=_defocus_window(rng, config.defocus_range_um),
        amplitude_contrast=float(rng.uniform(*config.amplitude_contrast_range)),
        voltage_kv=config.voltage_kv,
        cs_mm=config.cs_mm,
        # 2D classes carry the alignment and heterogeneity blur of their particles:
        # real classes are smooth on the scale of the particle (a Gaussian of D/60-D/15
        # for a particle of diameter D), not resolved to its atoms.
        bfactor=float(
            8 * np.pi**2 * (diameter_A * _log_uniform(rng, 1 / 60, 1 / 15)) ** 2
        ),
        low_noise_boost=float(_log_uniform(rng, 0.1, 8.0 / 3.0)),
        low_noise_scale_A=float(rng.uniform(30.0, 100.0)),
        high_noise_tilt=float(rng.uniform(0.0, 0.4)),
        detector_mtf=float(rng.uniform(0.5, 0.9)),
        tau2_fudge=float(rng.choice([1.0, 2.0, 2.0, 2.0, 3.0, 4.0])),
        halo_strength=float(rng.uniform(0.5, 1.0)),
        halo_scale=float(rng.uniform(0.6, 1.5)),
        noise_leak=float(rng.uniform(0.1, 0.6)),
    )


def _sample_run(config: SimulationConfig, rng: np.random.Generator) -> _Run:
    """Draw a run: box, sampling, molecule, mask, particle physics and counts."""
    box, apix, shape, molecule, mask_px, radius_px = _sample_geometry(config, rng)
    params = _sample_physics_params(config, rng, 2.0 * radius_px * apix)
    physics = make_physics(box, apix, _log_uniform(rng, *config.snr_range), params, rng)
    one = (np.zeros((1, 2)), np.ones(1), apix, box)
    refs = np.stack(
        [project(molecule, random_rotation(rng)[None], *one) for _ in range(3)]
    )
    physics = calibrate(physics, refs)
    blurred = np.fft.irfft2(np.fft.rfft2(refs) * physics.envelope, s=(box, box))
    preferred = np.stack([random_rotation(rng) for _ in range(int(rng.integers(1, 4)))])
    psi = float(rng.choice([np.pi / 2, 0.0])) if rng.random() < 0.6 else None
    scene = Scene(
        molecule=molecule,
        box=box,
        pixel_size=apix,
        mask_radius=mask_px,
        particle_radius=radius_px,
        ref_peak=float(np.mean([np.percentile(b, 99.5) for b in blurred])),
        filament=shape == "filament",
        filament_psi=psi,
        preferred=preferred,
        preferred_weight=float(rng.uniform(0.0, 0.7)),
    )
    lo, hi = config.particle_range
    typical = float(np.clip(_log_uniform(rng, 60.0, 2500.0), lo, hi))
    return _Run(scene, physics, meta.CountParams(typical, lo, hi), shape)


def _defocus_window(
    rng: np.random.Generator, full: tuple[float, float]
) -> tuple[float, float]:
    lo, hi = full
    width = (hi - lo) * rng.uniform(0.4, 1.0)
    start = rng.uniform(lo, hi - width)
    return float(start), float(start + width)


def plan_kinds(config: SimulationConfig, rng: np.random.Generator) -> list[str]:
    """Kinds of a run's classes in class order: the exact junk count, each junk class of
    a kind drawn from ``config.junk_kinds`` by :data:`_JUNK_WEIGHTS`."""
    n = config.n_classes
    n_junk = round(config.junk_fraction * n)
    kinds: list[str] = []
    border = config.borderline_fraction
    for _ in range(n - n_junk):
        u = rng.random()
        kinds.append(
            "good_rare" if u < border / 3 else "good_blurry" if u < border else "good"
        )
    pool = tuple(config.junk_kinds)
    kinds += [_choose(rng, pool, _JUNK_WEIGHTS) for _ in range(n_junk)]
    return [kinds[i] for i in rng.permutation(n)]


def _simulate_class(
    run: _Run, kind: str, rng: np.random.Generator
) -> tuple[Average, dict[str, float]]:
    """One class: its aligned signal, particle count, average and metadata."""
    signal = make_signal(kind, run.scene, rng)
    n = meta.particle_count(kind, run.counts, rng)
    box, apix = run.physics.box, run.physics.pixel_size
    # A person selects a view they can see: a good class too noisy to show anything
    # (beyond ~6 px or 20 Å) would be a wrong label, so it gathers more particles.
    limit = max(20.0, 6.0 * apix) if is_good(kind) else float("inf")
    for _ in range(4):
        average = form_average(
            run.physics,
            signal.image,
            n,
            rng,
            blur_px=signal.blur_px,
            spread=signal.spread,
            spread_ref=signal.spread_ref,
        )
        res = estimated_resolution(average.ssnr, box, apix)
        if res <= limit or n >= run.counts.high:
            break
        n = min(run.counts.high, int(n * 2.5))
    rot, trans = meta.accuracies(
        kind, signal.sigma_rot_deg, signal.sigma_shift_px, apix, rng
    )
    eca, post = meta.cryosparc_scores(kind, rng)
    info = {
        "n": float(n),
        "res": res,
        "rot": rot,
        "trans": trans,
        "eca": eca,
        "post": post,
    }
    return average, info


def simulate_run(config: SimulationConfig, seed: int) -> SimulatedRun:
    """Simulate one Class2D run of ``config.n_classes`` classes; same seed, same bytes."""
    job_seq, plan_seq, class_seq = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(job_seq)
    run = _sample_run(config, rng)
    kinds = plan_kinds(config, np.random.default_rng(plan_seq))
    results = [
        _simulate_class(run, kind, np.random.default_rng(child))
        for kind, child in zip(kinds, class_seq.spawn(len(kinds)), strict=True)
    ]
    box, apix = run.physics.box, run.physics.pixel_size
    finite = [r["res"] for _, r in results if np.isfinite(r["res"])]
    current = max(min(finite) if finite else 40.0, 2.0 * apix)
    if rng.random() < 0.3:
        current = min(current * rng.uniform(1.0, 1.5), 0.25 * box * apix)
    current = box * apix / max(1, int(box * apix / current))  # a shell boundary
    lowpass = lowpass_profile(run.physics.grid, current, apix)
    display = sample_display(rng, run.scene.mask_radius, config.nuisance)
    if display.extra_blur_px:
        lowpass = lowpass * run.physics.grid.radial_mean(
            gaussian_filter_ft(box, display.extra_blur_px)
        )
    images = np.stack([to_image(avg.spectrum, box, lowpass) for avg, _ in results])
    images = apply_display(images, display)
    classes = _assemble(
        run, kinds, results, images, current, rng, config.metadata_style
    )
    return SimulatedRun(
        classes=classes,
        snr=run.physics.snr,
        shape=run.shape,
        molecule=run.scene.molecule.name,
        mask_diameter_A=2 * run.scene.mask_radius * apix,
        current_resolution_A=current,
        display=display,
    )


def _assemble(
    run: _Run,
    kinds: list[str],
    results: list[tuple[Average, dict[str, float]]],
    images: F64,
    current: float,
    rng: np.random.Generator,
    style: str,
) -> ClassAverages:
    """The run's :class:`ClassAverages`, with metadata as a ``style`` reader returns it."""
    infos = [r for _, r in results]
    n = np.array([i["n"] for i in infos])
    # No shell with SSNR >= 1: RELION writes inf, which the readers give as missing (NaN).
    res = np.array([max(i["res"], current) for i in infos])
    res[~np.isfinite(res)] = np.nan
    metadata: dict[str, F64] = {
        "particle_count": n,
        "class_distribution": n / n.sum() * np.exp(rng.normal(0, 0.05, len(n))),
        "resolution_A": res,
        "accuracy_rotation_deg": np.array([i["rot"] for i in infos]),
        "accuracy_translation_A": np.array([i["trans"] for i in infos]),
        "fourier_completeness": np.array(
            [meta.completeness(k, r, rng) for k, r in zip(kinds, res, strict=True)]
        ),
        "eca": np.array([i["eca"] for i in infos]),
        "mean_posterior": np.array([i["post"] for i in infos]),
    }
    style = (
        style if style != "mixed" else ("relion" if rng.random() < 0.6 else "cryosparc")
    )
    if style == "relion":
        del metadata["eca"], metadata["mean_posterior"]
    elif style == "cryosparc":
        for name in (
            "accuracy_rotation_deg",
            "accuracy_translation_A",
            "fourier_completeness",
        ):
            del metadata[name]
        metadata["class_distribution"] = n / n.sum()
    return ClassAverages.create(
        images.astype(np.float32),
        pixel_size=run.physics.pixel_size,
        metadata=dict(metadata),
        labels=[Label.SELECTED if is_good(k) else Label.REJECTED for k in kinds],
        kinds=kinds,
        provenance=Provenance("synthetic", (), "Class2D/job001"),
    )


def simulate_class_averages(config: SimulationConfig, seed: int) -> ClassAverages:
    """One simulated run's class averages with labels and kinds (see :func:`simulate_run`).

    Returns
    -------
    ``ClassAverages`` with ``(n_classes, box, box)`` float32 images, pixel size in Å,
    all metadata fields, labels (1 good, 0 junk) and kinds.
    """
    return simulate_run(config, seed).classes


def simulate_runs(
    config: SimulationConfig, seed: int, n_runs: int
) -> Iterator[SimulatedRun]:
    """``n_runs`` independent runs (each with its own box, molecule and conventions)."""
    for child in np.random.SeedSequence(seed).spawn(n_runs):
        yield simulate_run(config, int(child.generate_state(1)[0]))


__all__ = [
    "GOOD_KINDS",
    "JUNK_KINDS",
    "SHAPE_FAMILIES",
    "SimulatedRun",
    "SimulationConfig",
    "plan_kinds",
    "simulate_class_averages",
    "simulate_run",
    "simulate_runs",
]
