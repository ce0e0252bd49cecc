"""Where the particle is in each class average: the radius of the user's mask
(:func:`mask_radius_fraction`) and the radius of the particle's contrast
(:func:`particle_radius`), which set the window each network input shows
(:mod:`cryodiscovery.core.model.preprocess`).

Both give, bit for bit, what the plain one-image-at-a-time definitions give
(tests/core/test_framing.py): window sizes are rounded to discrete steps, so any change in
a radius, however small, could move a window and a score. The speed comes from doing
less work, not other arithmetic: the Gaussian smoothing (most of the cost) runs only on
the square that holds the mask, and blocks of images run in threads. (Reductions along
an axis of a stack are not always the bits of one image's reduction, so each image keeps
its own.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]
_Block = TypeVar("_Block")

#: Images per block of work (a block's temporaries stay in the CPU cache).
_BLOCK = 8

#: Gaussian kernel reach in σ (scipy's default ``truncate``).
_TRUNCATE = 4.0


def mask_radius_fraction(images: npt.ArrayLike) -> FloatArray:
    """Radius of the region that is not flat background, as a fraction of half the box.

    RELION (``--zero_mask``) and cryoSPARC set the outside of the soft circular mask to a
    single value; the mask is the disc that holds every pixel that differs from it. When
    the corners are not flat (no zero mask) the whole inscribed circle counts (1.0).

    Parameters
    ----------
    images:
        ``(n, b, b)`` images at their original sampling.

    Returns
    -------
    ``(n,)`` float32 in ``[0.25, 1.0]``.
    """
    imgs = np.asarray(images, dtype=np.float32)
    n, box = imgs.shape[0], imgs.shape[-1]
    yy, xx = np.mgrid[:box, :box]
    c = (box - 1) / 2.0
    radius = np.hypot(yy - c, xx - c) / (box / 2.0)
    ring = np.minimum(np.rint(radius * box).astype(np.int64), 2 * box).ravel()
    ring_radius = np.arange(2 * box + 1) / box
    corners = np.median(imgs[:, [0, 0, -1, -1], [0, -1, 0, -1]], axis=1)
    spread = imgs.reshape(n, -1).std(axis=1)
    spread = np.where(spread > 0, spread, 1.0)
    out = np.ones(n, dtype=np.float32)

    def detect(part: slice) -> None:
        level, scale = corners[part, None, None], spread[part, None, None]
        differs = np.abs(imgs[part] - level) > 1e-4 * scale
        for i, d in enumerate(differs.reshape(len(differs), -1), part.start):
            total = int(d.sum())
            if total in (0, d.size):
                continue
            # Outermost radius holding 99.5% of the differing pixels (ignores strays).
            cum = np.cumsum(np.bincount(ring[d], minlength=ring_radius.size))
            out[i] = ring_radius[int(np.searchsorted(cum, 0.995 * total))]

    _in_threads(detect, [slice(a, a + _BLOCK) for a in range(0, n, _BLOCK)])
    return np.clip(out, 0.25, 1.0).astype(np.float32)


def particle_radius(images: npt.ArrayLike, mask: npt.ArrayLike) -> FloatArray:
    """Radius (px) holding 85% of each image's contrast against its solvent.

    The image is smoothed (σ = box / 64), the solvent level is the median of the outer
    fifth of the mask, and each pixel inside the mask weighs by how far it stands from
    that level beyond half the image's spread, so that solvent noise weighs nothing.
    A centred particle gives its own radius; junk that fills the mask (noise, streaks,
    edges) gives about the mask radius. Padding or cropping the box (as long as the
    particle stays inside) leaves the value unchanged.

    Parameters
    ----------
    images:
        ``(n, b, b)`` images at their original sampling.
    mask:
        ``(n,)`` mask radii as fractions of half the box (:func:`mask_radius_fraction`).

    Returns
    -------
    ``(n,)`` float32 radii in pixels of the original sampling.
    """
    imgs = np.asarray(images)
    if imgs.dtype not in (np.float32, np.float64):
        imgs = imgs.astype(np.float64)
    n, box = imgs.shape[0], imgs.shape[-1]
    r, shells = _shells(box)
    mask_px = np.asarray(mask, dtype=np.float64) * box / 2.0
    out = np.full(n, np.nan, dtype=np.float32)  # NaN for a NaN mask, as before
    # Images with one mask radius share their regions (most stacks have one mask).
    blocks: list[tuple[npt.NDArray[np.intp], float]] = []
    for rm in np.unique(mask_px).tolist():
        pick = np.flatnonzero(mask_px == rm)
        if not (r <= 0.97 * rm).any():  # no pixel inside: every weight is 0
            out[pick] = rm
            continue
        blocks += [(pick[a : a + _BLOCK], rm) for a in range(0, len(pick), _BLOCK)]

    def measure(block: tuple[npt.NDArray[np.intp], float]) -> None:
        rows, rm = block
        inside = r <= 0.97 * rm
        solvent = (r >= 0.8 * rm)[inside]
        values = _smoothed_inside(imgs, rows, inside)
        for i, row in zip(rows.tolist(), values, strict=True):
            total, cum = _contrast(row, solvent, inside, shells)
            found = float(np.searchsorted(cum, 0.85 * total)) + 0.5
            out[i] = rm if total <= 0 else found

    _in_threads(measure, blocks)
    return out


def _in_threads(work: Callable[[_Block], None], blocks: list[_Block]) -> None:
    """``work(block)`` for every block, in ``torch.get_num_threads()`` threads (the
    CPU budget the user gave; numpy and scipy release the GIL in their loops). Each
    image is computed on its own, whichever thread takes it."""
    workers = min(torch.get_num_threads(), len(blocks))
    if workers <= 1:
        for block in blocks:
            work(block)
        return
    pool = ThreadPoolExecutor(workers)
    try:
        list(pool.map(work, blocks))  # list(): raise the first error here
    finally:  # on Ctrl-C/SIGTERM do not wait for the queued blocks
        pool.shutdown(wait=True, cancel_futures=True)


def _smoothed_inside(
    imgs: npt.NDArray[np.floating],
    pick: npt.NDArray[np.intp],
    inside: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """``(len(pick), m)`` smoothed values (σ = box / 64) of images ``pick`` at the ``m``
    pixels of ``inside``, row-major: ``smooth[pick][:, inside]`` of the whole smoothed
    stack, bit for bit. Only the square holding ``inside`` plus the kernel's reach is
    smoothed: its inside pixels get the very same sums, and where the square meets the
    box edge both reflect there alike."""
    box = imgs.shape[-1]
    sigma = box / 64.0
    reach = int(_TRUNCATE * sigma + 0.5)
    rows = np.flatnonzero(inside.any(axis=1))  # the disc is symmetric: columns alike
    lo = max(int(rows[0]) - reach, 0)
    hi = min(int(rows[-1]) + 1 + reach, box)
    # float32 input is widened exactly (scipy filters in float64 whatever the input).
    smooth = np.empty((len(pick), hi - lo, hi - lo))
    ndimage.gaussian_filter(
        imgs[pick, lo:hi, lo:hi],
        (0.0, sigma, sigma),
        output=smooth,
        radius=(0, reach, reach),
    )
    return smooth[:, inside[lo:hi, lo:hi]]


def _contrast(
    values: npt.NDArray[np.float64],
    solvent: npt.NDArray[np.bool_],
    inside: npt.NDArray[np.bool_],
    shells: npt.NDArray[np.int64],
) -> tuple[float, npt.NDArray[np.float64]]:
    """Total contrast weight of one image and its ``(b + 1,)`` cumulative sums over the
    shells, from its smoothed ``(m,)`` values inside the mask (row-major), with the
    operations of the whole-image definition: weights outside the mask are 0 and adding
    0.0 to a shell's sum changes nothing, but the total is numpy's pairwise sum over
    the whole ``(b, b)`` weight image, whose grouping the zeros are part of."""
    bg = np.median(values[solvent])
    spread = float(values.std()) + 1e-12
    w_inside = np.maximum(np.abs(values - bg) / spread - 0.5, 0)
    w = np.zeros(inside.shape)
    w[inside] = w_inside
    sums = np.bincount(shells[inside.ravel()], w_inside, minlength=inside.shape[0] + 1)
    return float(w.sum()), np.cumsum(sums)


@functools.lru_cache(maxsize=16)
def _shells(box: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """``(b, b)`` distance (px) of each pixel from the box centre and its ``(b*b,)``
    integer shell (clipped to ``box``)."""
    c = (box - 1) / 2.0
    yy, xx = np.mgrid[:box, :box]
    r = np.hypot(yy - c, xx - c)
    r.setflags(write=False)
    shells = np.minimum(r.astype(np.int64), box).ravel()
    shells.setflags(write=False)
    return r, shells
