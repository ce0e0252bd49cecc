"""How a data set's class averages are written out: mask and what lies outside it, low-pass
at the run's current resolution, contrast sign and value normalisation.

These are drawn once per data set (as one RELION or cryoSPARC run does them the same way
for every class), so none of them tells good classes from junk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryodiscovery.core.synthetic.density import F64
from cryodiscovery.core.synthetic.projection import soft_circular_mask

#: What lies outside the mask: flat (RELION --flatten_solvent), damped noise, or all noise.
OUTSIDE_MODES: tuple[str, ...] = ("flat", "damped", "noise")
#: How values are scaled: as written by the program, z-scored over the run, per image
#: z-scored, or per image mapped to 0-1 (exports and conversions).
NORMALISATIONS: tuple[str, ...] = ("raw", "run_zscore", "image_zscore", "image_minmax")


@dataclass(frozen=True)
class Display:
    """One data set's output conventions.

    Attributes
    ----------
    mask_radius:
        Soft-mask radius in pixels; ``mask_edge`` its raised-cosine width.
    outside:
        One of :data:`OUTSIDE_MODES`; ``outside_level`` the fraction of noise kept outside
        for ``"damped"``.
    sign:
        +1 (protein bright, as RELION writes CTF-corrected averages) or -1 (inverted).
    normalisation:
        One of :data:`NORMALISATIONS`; ``scale`` and ``offset`` apply to ``raw`` and
        ``run_zscore`` (offset in units of the run's standard deviation).
    extra_blur_px:
        Gaussian blur (pixels) some pipelines apply for display, 0 for none.
    """

    mask_radius: float
    mask_edge: float
    outside: str
    outside_level: float
    sign: float
    normalisation: str
    scale: float
    offset: float
    extra_blur_px: float


def sample_display(
    rng: np.random.Generator, mask_radius: float, nuisance: bool
) -> Display:
    """Draw a data set's conventions; with ``nuisance`` False, RELION's defaults."""
    if not nuisance:
        return Display(mask_radius, 5.0, "flat", 0.0, 1.0, "raw", 1.0, 0.0, 0.0)
    outside = str(rng.choice(OUTSIDE_MODES, p=[0.6, 0.28, 0.12]))
    return Display(
        mask_radius=mask_radius,
        mask_edge=float(rng.uniform(3.0, 8.0)),
        outside=outside,
        outside_level=float(rng.uniform(0.15, 0.7)),
        sign=-1.0 if rng.random() < 0.12 else 1.0,
        normalisation=str(rng.choice(NORMALISATIONS, p=[0.45, 0.25, 0.2, 0.1])),
        scale=float(10 ** rng.uniform(-1.5, 1.5)),
        offset=float(rng.normal(0.0, 0.5)),
        extra_blur_px=float(rng.uniform(0.5, 1.5)) if rng.random() < 0.15 else 0.0,
    )


def apply_display(images: F64, display: Display) -> F64:
    """Mask, sign and normalise ``(n, box, box)`` averages; returns float64 images."""
    box = images.shape[-1]
    mask = soft_circular_mask(box, display.mask_radius, display.mask_edge)
    if display.outside == "flat":
        out = images * mask
    elif display.outside == "damped":
        out = images * (mask + (1.0 - mask) * display.outside_level)
    else:
        out = images.copy()
    out = out * display.sign
    if display.normalisation == "raw":
        return np.asarray(
            out * display.scale + display.offset * display.scale * out.std(),
            dtype=np.float64,
        )
    if display.normalisation == "run_zscore":
        return np.asarray(
            (out - out.mean()) / (out.std() + 1e-12) + display.offset, dtype=np.float64
        )
    flat = out.reshape(len(out), -1)
    if display.normalisation == "image_zscore":
        norm = (flat - flat.mean(axis=1, keepdims=True)) / (
            flat.std(axis=1, keepdims=True) + 1e-12
        )
    else:
        lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
        norm = (flat - lo) / np.maximum(hi - lo, 1e-12)
    return np.asarray(norm.reshape(out.shape), dtype=np.float64)
