"""Per-class metadata that agrees with the image and its kind, with the overlap real
runs show: particle counts by kind, RELION accuracies (999 when not estimated),
Fourier completeness, cryoSPARC ECA and mean posterior.

Resolution is not drawn here: it comes from the class's spectral SNR
(:func:`averaging.estimated_resolution`), so it always matches what the image shows.
Numbers follow the RELION 3.1 tutorial's Class2D output (good classes: accuracy
2.6-4.5°, translations 0.5-1.4 px; most junk 999) and CRYOEM.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Per kind: (log mean, log sd) of the particle share relative to a typical good class,
#: and the chance that RELION reports accuracy 999 (not estimated).
_PROFILE: dict[str, tuple[float, float, float]] = {
    "good": (0.0, 0.7, 0.06),
    "good_blurry": (-0.3, 0.7, 0.12),
    "good_rare": (0.0, 0.0, 0.35),  # counts drawn separately (few particles)
    "ice": (-0.9, 0.9, 0.6),
    "carbon_edge": (-0.6, 0.9, 0.5),
    "empty": (-1.5, 0.9, 0.85),
    "featureless_blob": (-0.3, 0.9, 0.55),
    "aggregate": (-1.0, 0.8, 0.6),
    "few_particles": (0.0, 0.0, 0.9),  # counts drawn separately (a handful)
    "off_centre": (-0.8, 0.8, 0.4),
    "streaky": (-1.2, 0.9, 0.7),
    "ghosted": (-0.6, 0.8, 0.45),
    "ring": (-1.2, 0.9, 0.7),
    "lattice": (-1.0, 0.9, 0.7),
    "noise_aligned": (-0.7, 0.9, 0.75),
}


@dataclass(frozen=True)
class CountParams:
    """How many particles a data set's classes hold.

    Attributes
    ----------
    typical:
        Particles in a typical good class.
    low, high:
        Range for every class except few-particle junk (config ``particle_range``).
    """

    typical: float
    low: int
    high: int


def particle_count(kind: str, counts: CountParams, rng: np.random.Generator) -> int:
    """Particles in a class of ``kind``: lognormal about the typical good class, clipped."""
    if kind == "few_particles":
        return int(rng.integers(max(2, counts.low // 5), max(3, counts.low)))
    if kind == "good_rare":
        top = max(counts.low + 1, min(counts.high, 4 * counts.low))
        return int(rng.integers(counts.low, top + 1))
    mu, sd, _ = _PROFILE[kind]
    n = counts.typical * np.exp(rng.normal(mu, sd))
    return int(np.clip(round(n), counts.low, counts.high))


def accuracies(
    kind: str,
    sigma_rot_deg: float,
    sigma_shift_px: float,
    pixel_size: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """RELION ``rlnAccuracyRotations`` (deg) and ``rlnAccuracyTranslationsAngst`` (Å).

    Estimated ones grow with the class's real alignment spread; junk mostly reports 999.
    """
    if rng.random() < _PROFILE[kind][2]:
        return 999.0, 999.0
    good = kind.startswith("good")
    spread = min(sigma_rot_deg, 30.0)
    rot = (1.5 + 0.8 * spread) * np.exp(rng.normal(0, 0.25))
    if not good:
        rot = max(rot, rng.lognormal(np.log(5.0), 0.5))
    trans_px = (0.5 + 0.5 * min(sigma_shift_px, 6.0)) * np.exp(rng.normal(0, 0.2))
    return float(np.round(rot, 2)), float(np.round(trans_px * pixel_size, 4))


def completeness(kind: str, resolution_A: float, rng: np.random.Generator) -> float:
    """``rlnOverallFourierCompleteness``: about 1 for good classes, lower for junk, NaN when
    the resolution is undefined (RELION writes ``-nan`` beside ``inf``)."""
    if not np.isfinite(resolution_A):
        return float("nan")
    if kind.startswith("good"):
        return 1.0 if rng.random() < 0.6 else float(rng.uniform(0.93, 1.0))
    return 1.0 if rng.random() < 0.25 else float(rng.uniform(0.72, 1.0))


def cryosparc_scores(kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """cryoSPARC effective class assignment (≥ 1) and mean posterior (0-1)."""
    if kind.startswith("good"):
        return float(1.0 + rng.exponential(0.25)), float(rng.uniform(0.7, 1.0))
    return float(1.0 + rng.exponential(0.9)), float(rng.uniform(0.3, 0.95))
