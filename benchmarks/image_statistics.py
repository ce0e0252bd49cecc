"""Image statistics of class averages as the model sees them: the preprocessed network
input of a loaded model (``ClassScorer.prepare``: resampled to its internal box,
normalised under the mask), so they follow whatever the preprocessing currently does.

Units: lengths as fractions of the box (or of half the box for the mask); intensities in
the input's own units (each image is robustly standardised inside its mask, so 1 is
about one standard deviation of the masked image); frequencies in cycles per input pixel.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.calibration import otsu_split
from cryodiscovery.core.model.scorer import ClassScorer
from scipy import ndimage

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Frequency bands (cycles per input pixel) of the band powers.
LOW_BAND = (0.05, 0.15)
HIGH_BAND = (0.15, 0.5)

#: Every statistic, in table order, with what it measures.
STATISTICS: dict[str, str] = {
    "diameter_over_box": "particle area-equivalent diameter / box",
    "mask_radius": "soft mask radius / half box",
    "power_low": "power 0.05-0.15 cycles/px (mean square per px)",
    "power_high": "power 0.15-0.5 cycles/px (mean square per px)",
    "high_over_low": "power ratio high / low band",
    "detail_over_solvent": "high-pass std inside particle / in solvent",
    "halo_depth": "solvent level - darkest 1 px shell within 6 px outside the particle",
    "contrast": "particle mean - solvent median",
    "solvent_noise": "high-pass std in solvent",
    "central_contrast": "mean r<0.25 R - mean 0.6-0.9 R (R: mask radius)",
}
#: Statistics spread over decades: compared (and classified) on a log scale.
LOG_SCALE = frozenset(
    {"power_low", "power_high", "high_over_low", "detail_over_solvent"}
)

_SMOOTH_PX = 2.0  # Gaussian sigma of the image the particle is segmented on
_HALO_PX = (
    6  # the dark halo is looked for this far outside the particle; solvent beyond
)
_MIN_SOLVENT_PX = 20


def model_inputs(classes: ClassAverages, scorer: ClassScorer) -> F32:
    """``(n, s, s)`` float32: the images exactly as ``scorer``'s networks receive them."""
    images, _ = scorer.prepare(classes)
    return np.ascontiguousarray(images[:, 0].numpy(), dtype=np.float32)


def _radius_grid(size: int) -> F64:
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    return np.asarray(np.hypot(yy - c, xx - c), dtype=np.float64)


def mask_radius_px(image: F32, rr: F64) -> float:
    """Radius (px) of the input's support: the outermost 1-px ring that is mostly
    nonzero (the preprocessing sets the outside of the mask to exactly 0)."""
    ring = np.floor(rr).astype(np.int64).ravel()
    total = np.bincount(ring)
    nonzero = np.bincount(ring, weights=(image.ravel() != 0).astype(np.float64))
    full = np.nonzero(nonzero >= 0.5 * np.maximum(total, 1))[0]
    return float(full.max() + 1) if full.size else 0.0


def band_powers(image: F32) -> tuple[float, float, F64]:
    """Mean square per pixel in :data:`LOW_BAND` and :data:`HIGH_BAND`, and the image
    high-passed at the high band's lower edge."""
    s = image.shape[-1]
    spectrum = np.fft.fft2(image.astype(np.float64))
    f = np.fft.fftfreq(s)
    freq = np.hypot(f[:, None], f[None, :])
    power = np.abs(spectrum) ** 2 / s**4  # Parseval: sums to the mean square
    low = float(power[(freq >= LOW_BAND[0]) & (freq < LOW_BAND[1])].sum())
    high = float(power[(freq >= HIGH_BAND[0]) & (freq <= HIGH_BAND[1])].sum())
    highpass = np.fft.ifft2(spectrum * (freq >= HIGH_BAND[0])).real
    return low, high, highpass


def segment_particle(
    smooth: F64, interior: npt.NDArray[np.bool_], rr: F64
) -> npt.NDArray[np.bool_]:
    """The particle: the bright (Otsu) component that overlaps the central disc most
    (the largest when none does), holes filled; empty when nothing is bright."""
    values = smooth[interior]
    if values.size < 2 or np.ptp(values) == 0:
        return np.zeros_like(interior)
    bright = (smooth > otsu_split(values)) & interior
    labels, n = ndimage.label(bright, structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros_like(interior)
    radius = rr[interior].max()
    central = np.bincount(labels[rr < 0.25 * radius], minlength=n + 1)[1:]
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    best = int(np.argmax(central if central.any() else sizes)) + 1
    return np.asarray(ndimage.binary_fill_holes(labels == best), dtype=bool)


def _darkest_shell(image: F32, outside: F64, interior: npt.NDArray[np.bool_]) -> float:
    """Lowest mean of the 1-px shells at 1-:data:`_HALO_PX` px outside the particle."""
    means = [
        float(image[shell].mean())
        for k in range(_HALO_PX)
        if (shell := (outside > k) & (outside <= k + 1) & interior).sum() >= 4
    ]
    return min(means) if means else math.nan


def _one(image: F32, rr: F64) -> dict[str, float]:
    s = image.shape[-1]
    r_mask = mask_radius_px(image, rr)
    interior = rr < r_mask - 2.0  # inside the soft edge
    low, high, highpass = band_powers(image)
    smooth = ndimage.gaussian_filter(image.astype(np.float64), _SMOOTH_PX)
    particle = segment_particle(smooth, interior, rr)
    out = {name: math.nan for name in STATISTICS}
    out.update(
        mask_radius=r_mask / (s / 2.0),
        power_low=low,
        power_high=high,
        high_over_low=high / low if low > 0 else math.nan,
        diameter_over_box=2.0 * math.sqrt(particle.sum() / math.pi) / s,
    )
    centre = rr < 0.25 * r_mask
    outer = (rr > 0.6 * r_mask) & (rr < 0.9 * r_mask)
    if centre.any() and outer.any():
        out["central_contrast"] = float(image[centre].mean() - image[outer].mean())
    if not particle.any():
        return out
    outside = ndimage.distance_transform_edt(~particle)
    solvent = (outside > _HALO_PX) & interior
    inner = ndimage.distance_transform_edt(particle) > 1.0
    if solvent.sum() < _MIN_SOLVENT_PX:
        return out
    level = float(np.median(image[solvent]))
    noise = float(highpass[solvent].std())
    out.update(
        solvent_noise=noise,
        contrast=float(image[particle].mean()) - level,
        halo_depth=level - _darkest_shell(image, outside, interior),
    )
    if inner.sum() >= 10 and noise > 0:
        out["detail_over_solvent"] = float(highpass[inner].std()) / noise
    return out


def image_statistics(inputs: npt.ArrayLike) -> dict[str, F64]:
    """Every statistic of :data:`STATISTICS` for each image.

    Parameters
    ----------
    inputs:
        ``(n, s, s)`` model inputs (:func:`model_inputs`).

    Returns
    -------
    ``{name: (n,) float64}``; NaN where a statistic is undefined (no particle found, or
    no solvent left inside the mask).
    """
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"inputs must be (n, s, s), got shape {x.shape}")
    rr = _radius_grid(x.shape[-1])
    rows = [_one(img, rr) for img in x]
    return {name: np.array([r[name] for r in rows]) for name in STATISTICS}
