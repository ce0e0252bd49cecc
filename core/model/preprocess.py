"""Turn class averages of any box and pixel size into the fixed network input.

Each class average is first cut to a centred window scaled to the particle's own extent
(``framing="particle"``, the default): the radius that holds 85% of the image's contrast
against its solvent is made ``particle_fill`` of half the window. The window is then
Fourier-resampled to a fixed internal size of ``size`` pixels (64 by default), whatever
the pixel size. Why: the box and the mask are the user's choice, so a model that sees the
whole box learns the user's framing (a real stack padded by 25% used to lose half its good
classes); the particle's extent is what compares across jobs, while the pixel size is
often unknown (bare stacks) and particles differ tenfold in size in Å. Models written
before particle framing resample the whole box (``framing="box"``). Fourier cropping is
an exact low-pass without aliasing, so the high-frequency noise texture that marks much
junk is kept up to the new Nyquist and not smeared by interpolation.

Each image is then normalised under its own mask: the median inside the mask is subtracted,
divided by a robust spread (clipped standard deviation), squashed into ``±clip`` and the
outside of the mask set to 0. The mask radius is read from the image (RELION and cryoSPARC
set the outside of the mask to one flat value); without a flat outside the inscribed circle
is used. Background level, contrast scale and contrast sign are thereby removed by
construction (sign: the image is flipped so that its third moment under the mask is
positive, as for bright protein on a dark surround).

Metadata become a fixed feature vector with an explicit "present" mask
(:func:`metadata_features`).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.framing import mask_radius_fraction, particle_radius
from scipy import fft

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Names of the metadata features, in the order of :func:`metadata_features` columns
#: (each has a twin "present" flag in the second half of the vector).
FEATURE_NAMES: tuple[str, ...] = (
    "log_particle_count",
    "log_relative_population",
    "log_resolution_A",
    "resolution_over_nyquist",
    "accuracy_rotation",
    "rotation_not_estimated",
    "accuracy_translation",
    "translation_not_estimated",
    "fourier_completeness",
    "log_eca",
    "mean_posterior",
)

#: How the network's window is placed on a class average: ``"box"`` resamples the
#: whole box; ``"particle"`` cuts a window scaled to the particle's own extent first.
FRAMINGS: tuple[str, ...] = ("box", "particle")

#: Window sizes are rounded to steps of this ratio, so that few resampling matrices
#: serve a whole job (each distinct size costs one matrix).
_WINDOW_STEP = 1.03

#: Length of the metadata vector: the features then one present flag per feature.
N_META = 2 * len(FEATURE_NAMES)


@dataclass(frozen=True)
class PreprocessConfig:
    """How class averages become network inputs (stored in every checkpoint).

    Parameters
    ----------
    size:
        Internal box in pixels after Fourier resampling of the whole box.
    clip:
        Normalised values are squashed with ``clip * tanh(x / clip)``.
    canonical_sign:
        Flip each image so that its third moment under the mask is positive.
    """

    size: int = 64
    clip: float = 6.0
    canonical_sign: bool = True
    framing: str = "particle"
    particle_fill: float = 0.45

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 256 or self.size % 2:
            raise ValueError(f"size must be even and in 16-256, got {self.size}")
        if not self.clip > 0:
            raise ValueError(f"clip must be positive, got {self.clip}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {self.framing!r}")
        if not 0.1 <= self.particle_fill <= 0.9:
            raise ValueError(
                f"particle_fill must be in 0.1-0.9, got {self.particle_fill}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}")
        # Models written before particle framing existed resampled the whole box.
        return cls(**{"framing": "box", **values})


def spectral_map(n_in: int, n_out: int) -> npt.NDArray[np.complex128]:
    """``(n_out, n_in)`` complex map from 1-D input to output Fourier coefficients.

    Frequencies present in both grids are copied. The output Nyquist coefficient of an
    even grid receives both input coefficients ``±n_out/2`` (folding, as sampling would),
    and an even input's Nyquist coefficient is split half-and-half onto ``±n_in/2`` of a
    larger output. This keeps the map Hermitian-consistent, so real images stay real and
    cropping exactly inverts padding.
    """
    f_in = np.rint(np.fft.fftfreq(n_in) * n_in).astype(int)
    f_out = np.rint(np.fft.fftfreq(n_out) * n_out).astype(int)
    index_in = {int(k): i for i, k in enumerate(f_in)}
    m = np.zeros((n_out, n_in), dtype=np.complex128)
    for j, k in enumerate(f_out.tolist()):
        if n_out % 2 == 0 and abs(k) == n_out // 2 and n_out < n_in:
            for kk in (k, -k):  # fold both input halves of the output Nyquist
                if kk in index_in:
                    m[j, index_in[kk]] += 1.0
        elif n_in % 2 == 0 and abs(k) == n_in // 2 and n_out > n_in:
            m[j, index_in[-n_in // 2]] = 0.5  # split the input Nyquist over +-n_in/2
        elif k in index_in:
            m[j, index_in[k]] = 1.0
    return m


def _dft(n: int, inverse: bool = False) -> npt.NDArray[np.complex128]:
    k = np.arange(n)
    sign = 1.0 if inverse else -1.0
    mat = np.exp(sign * 2j * np.pi * np.outer(k, k) / n)
    return np.asarray(mat / n if inverse else mat, dtype=np.complex128)


@functools.lru_cache(maxsize=256)
def resampling_matrix(n_in: int, n_out: int) -> npt.NDArray[np.float64]:
    """Real ``(n_out, n_in)`` matrix ``A`` of 1-D Fourier resampling (mean preserved);
    a square image ``X`` resamples as ``A @ X @ A.T``."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    op = _dft(n_out, inverse=True) @ spectral_map(n_in, n_out) @ _dft(n_in)
    return np.ascontiguousarray(op.real * (n_out / n_in))


def fourier_resample(images: npt.ArrayLike, size: int) -> FloatArray:
    """Resample square images to ``size`` pixels by Fourier cropping or zero padding.

    The rule of ``scipy.signal.resample`` along both axes, and the same operator as
    :func:`resampling_matrix` (``A @ X @ A.T``, the one the torch augmentation uses), even
    Nyquist included: folded when cropping, split when padding. Equal to both to float32
    precision (tests/core/test_preprocess.py).

    Parameters
    ----------
    images:
        ``(n, b, b)`` real images, any box ``b``.
    size:
        Output box in pixels.

    Returns
    -------
    ``(n, size, size)`` float32, mean preserved. Pixel 0 maps to pixel 0 and the box
    centre ``b // 2`` to ``size // 2`` for even sizes.
    """
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
        raise ValueError(f"images must be (n, b, b), got shape {imgs.shape}")
    if size < 1:
        raise ValueError(f"sizes must be positive, got {imgs.shape[1]} -> {size}")
    if imgs.shape[1] == size:
        return imgs.copy()
    out = np.empty((imgs.shape[0], size, size), dtype=np.float32)
    for start in range(0, imgs.shape[0], 256):  # bounded temporary memory
        rows = _resample_axis(imgs[start : start + 256], size, axis=1)
        out[start : start + 256] = _resample_axis(rows, size, axis=2)
    return out


def _resample_axis(x: FloatArray, size: int, axis: int) -> FloatArray:
    """``scipy.signal.resample(x, size, axis=axis)`` for real ``x``, written with
    ``scipy.fft``: importing ``scipy.signal`` (it loads scipy.stats, optimize, sparse,
    ...) costs about 1.3 s of CPU, more than the resampling of a whole job."""
    n = x.shape[axis]
    # Threads share out whole 1-D transforms: the same bits whatever their number.
    workers = torch.get_num_threads()
    spec = fft.rfft(x, axis=axis, workers=workers)
    common = min(n, size)
    shape = list(spec.shape)
    shape[axis] = size // 2 + 1
    out = np.zeros(shape, dtype=spec.dtype)
    index: list[slice] = [slice(None)] * x.ndim
    index[axis] = slice(0, common // 2 + 1)
    out[tuple(index)] = spec[tuple(index)]
    if common % 2 == 0:  # the Nyquist of the smaller grid: fold (crop) or split (pad)
        index[axis] = slice(common // 2, common // 2 + 1)
        out[tuple(index)] *= 2.0 if size < n else 0.5
    back = fft.irfft(out, n=size, axis=axis, workers=workers)
    return np.asarray(back * (size / n), dtype=np.float32)


def soft_disc(size: int, radius: torch.Tensor, edge: float = 2.0) -> torch.Tensor:
    """Soft discs, 1 inside ``radius`` falling to 0 over ``edge`` pixels (cosine edge).

    Parameters
    ----------
    size:
        Box in pixels.
    radius:
        ``(n,)`` radii as fractions of half the box.
    edge:
        Width of the cosine edge in pixels.

    Returns
    -------
    ``(n, size, size)`` float32 weights in ``[0, 1]``.
    """
    c = (size - 1) / 2.0
    ax = torch.arange(size, dtype=torch.float32) - c
    rr = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
    r_px = radius.to(torch.float32)[:, None, None] * (size / 2.0)
    t = ((rr[None] - (r_px - edge)) / edge).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def normalise_images(
    images: torch.Tensor, radius: torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """Normalise each image under its mask (batched, differentiable-free, torch).

    Parameters
    ----------
    images:
        ``(n, s, s)`` float32 images at the internal size.
    radius:
        ``(n,)`` mask radii as fractions of half the box (:func:`mask_radius_fraction`).
    config:
        Clip level and whether to canonicalise the sign.

    Returns
    -------
    ``(n, 1, s, s)`` float32: 0 outside the mask, robustly standardised inside.
    """
    n, s = images.shape[0], images.shape[-1]
    weights = soft_disc(s, radius)
    inside = (weights > 0.5).reshape(n, -1)
    flat = images.reshape(n, -1).to(torch.float32)
    # One sort gives the median and the 1st/99th percentiles over the inside only.
    ordered = torch.sort(torch.where(inside, flat, torch.inf), dim=1).values
    last = (inside.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    centre, lo, hi = (
        ordered.gather(1, (last * q).round().long()) for q in (0.5, 0.01, 0.99)
    )
    clipped = torch.minimum(torch.maximum(flat, lo), hi) - centre
    w = inside.to(flat.dtype)
    count = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (clipped * w).sum(dim=1, keepdim=True) / count
    var = ((clipped - mean) ** 2 * w).sum(dim=1, keepdim=True) / count
    x = (flat - centre) / torch.sqrt(var).clamp(min=1e-6)
    if config.canonical_sign:
        third = (x.clamp(-50.0, 50.0) ** 3 * w).sum(dim=1, keepdim=True)
        x = x * torch.where(third < 0, -1.0, 1.0)
    x = config.clip * torch.tanh(x / config.clip)
    return (x.reshape(n, s, s) * weights).unsqueeze(1)


def _window_sizes(
    radius_px: FloatArray, mask_px: FloatArray, fill: float
) -> npt.NDArray[np.int64]:
    """Even window sizes (px) where the particle radius is ``fill`` of half the window,
    kept within 0.6-2 mask radii and rounded to :data:`_WINDOW_STEP` steps."""
    half = np.clip(radius_px / fill, 0.6 * mask_px, 2.0 * mask_px)
    steps = np.round(np.log(np.maximum(2.0 * half, 8.0)) / np.log(_WINDOW_STEP))
    sizes: npt.NDArray[np.int64] = (2 * np.round(_WINDOW_STEP**steps / 2.0)).astype(
        np.int64
    )
    return sizes


def _cut_window(images: FloatArray, size: int) -> FloatArray:
    """Centred ``size`` window of ``(n, b, b)`` images; beyond the box: the corner level."""
    box = images.shape[-1]
    if size <= box:
        o = (box - size) // 2
        return images[:, o : o + size, o : o + size]
    corner = np.median(images[:, [0, 0, -1, -1], [0, -1, 0, -1]], axis=1)
    out = np.repeat(corner[:, None, None], size, axis=1).repeat(size, axis=2)
    o = (size - box) // 2
    out[:, o : o + box, o : o + box] = images
    return out.astype(np.float32)


def input_windows(classes: ClassAverages, config: PreprocessConfig) -> IntArray:
    """``(n,)`` side (px of the class box) of the centred square each network input
    shows: the box for ``framing="box"``, else the particle window of
    :func:`resample_classes` (what saliency maps are drawn back onto)."""
    return _windows(classes.images, mask_radius_fraction(classes.images), config)


def _windows(
    imgs: npt.NDArray[np.floating], mask: FloatArray, config: PreprocessConfig
) -> IntArray:
    box = imgs.shape[-1]
    if config.framing == "box":
        return np.full(len(imgs), box, dtype=np.int64)
    mask_px = mask * box / 2.0
    return _window_sizes(particle_radius(imgs, mask), mask_px, config.particle_fill)


def resample_classes(
    classes: ClassAverages, config: PreprocessConfig
) -> tuple[FloatArray, FloatArray]:
    """Internal-size images and mask radii of a set, not yet normalised.

    With ``framing="particle"`` each image is first cut (or padded) to a centred window
    in which the particle's radius (:func:`particle_radius`) is ``particle_fill`` of half
    the window, so the network sees every particle at one scale whatever box and mask
    the user chose; ``"box"`` resamples the whole box.

    Returns
    -------
    ``(n, size, size)`` float32 images and ``(n,)`` float32 mask radius fractions
    (of half the window).
    """
    imgs = classes.images
    if not np.isfinite(imgs).all():
        raise ValueError("class averages contain NaN or Inf values")
    mask = mask_radius_fraction(imgs)
    if config.framing == "box":
        return fourier_resample(imgs, config.size), mask
    windows = _windows(imgs, mask, config)
    out = np.empty((len(imgs), config.size, config.size), dtype=np.float32)
    for size in np.unique(windows).tolist():
        pick = np.flatnonzero(windows == size)
        out[pick] = fourier_resample(_cut_window(imgs[pick], size), config.size)
    mask_px = mask * imgs.shape[-1] / 2.0
    radius = np.clip(mask_px / (windows / 2.0), 0.25, 1.0).astype(np.float32)
    return out, radius


def metadata_features(classes: ClassAverages) -> FloatArray:
    """The metadata of each class as ``(n, N_META)`` float32 features plus present flags.

    Values are scaled to roughly ``[-1, 2]``; a missing value is 0 with its flag 0. The
    population is taken relative to a uniform share (``distribution * n_classes``) so that
    jobs with different class counts compare. A rotation or translation accuracy of 999
    (RELION: not estimated yet) sets the "not estimated" feature instead of a value.
    Resolution relative to Nyquist needs the pixel size (missing without it).
    """
    n = len(classes)
    count = classes.field("particle_count")
    dist = classes.field("class_distribution")
    res = classes.field("resolution_A")
    rot = classes.field("accuracy_rotation_deg")
    trans = classes.field("accuracy_translation_A")
    with np.errstate(invalid="ignore", divide="ignore"):
        if np.all(np.isnan(dist)) and np.isfinite(count).any():
            dist = count / np.nansum(count)
        cols: list[npt.NDArray[np.float64]] = [
            np.log10(np.maximum(count, 0) + 1.0) / 4.0,
            np.clip(np.log10(np.maximum(dist * n, 1e-4)), -3, 2) / 2.0,
            np.log10(np.clip(res, 1.0, 1000.0)) - 1.0,
            _resolution_over_nyquist(res, classes.pixel_size),
            *_accuracy(rot, 180.0),
            *_accuracy(trans, 50.0),
            classes.field("fourier_completeness"),
            np.log10(np.clip(classes.field("eca"), 1.0, 1000.0)),
            classes.field("mean_posterior"),
        ]
    values = np.stack(cols, axis=1)
    present = np.isfinite(values)
    values = np.where(present, values, 0.0)
    return np.concatenate([values, present], axis=1).astype(np.float32)


def _resolution_over_nyquist(
    res: npt.NDArray[np.float64], pixel_size: float | None
) -> npt.NDArray[np.float64]:
    if pixel_size is None:
        return np.full_like(res, np.nan)
    ratio = np.clip(res, 0.0, 1000.0) / (2.0 * pixel_size)
    return np.log10(np.maximum(ratio, 1.0))


def _accuracy(
    acc: npt.NDArray[np.float64], ceiling: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Scaled accuracy and a "not estimated" flag (RELION writes 999)."""
    unestimated = acc >= 999.0
    value = np.log10(1.0 + np.clip(acc, 0.0, ceiling)) / math.log10(1.0 + ceiling)
    value = np.where(unestimated, np.nan, value)
    flag = np.where(np.isnan(acc), np.nan, unestimated.astype(np.float64))
    return value, flag


def prepare_inputs(
    classes: ClassAverages, config: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs of a set: ``(n, 1, s, s)`` images and ``(n, N_META)`` features."""
    imgs, radius = resample_classes(classes, config)
    x = normalise_images(torch.from_numpy(imgs), torch.from_numpy(radius), config)
    return x, torch.from_numpy(metadata_features(classes))
