"""Random transforms of training images at the internal size, applied before the
normalisation of :mod:`cryodiscovery.core.model.preprocess`.

They vary what does not define quality: in-plane rotation and mirror, small shifts,
scale (particle size and mask radius relative to the box), background offset and
contrast sign and scale. Rotation and scale are resampled on a 2x Fourier-padded grid
(bicubic), so interpolation does not blur away the noise texture that marks junk. Blur
and noise are varied only mildly, within what good classes show (CRYOEM.md, "A caution
for training"): strong low-pass or heavy noise would teach the network to ignore the
cues of featureless and noisy junk.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from cryodiscovery.core.model.preprocess import resampling_matrix, spectral_map


@dataclass(frozen=True)
class AugmentConfig:
    """Random transforms applied to each training image (all ranges inclusive)."""

    rotate: bool = True
    mirror: bool = True
    shift_px: float = 2.0
    scale: tuple[float, float] = (0.9, 1.12)
    mask_shrink: tuple[float, float] = (0.9, 1.0)
    contrast: tuple[float, float] = (0.5, 2.0)
    flip_sign: float = 0.5
    offset: float = 1.0
    blur_prob: float = 0.25
    blur_sigma_px: tuple[float, float] = (0.2, 0.6)
    noise_prob: float = 0.25
    noise_level: tuple[float, float] = (0.0, 0.15)


def augment_batch(
    images: torch.Tensor,
    radius: torch.Tensor,
    cfg: AugmentConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform ``(b, s, s)`` images; returns new images and mask radii ``(b,)``."""
    b, s = images.shape[0], images.shape[-1]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle = uniform(0.0, 2 * math.pi) if cfg.rotate else torch.zeros(b)
    mirror = (
        torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        if cfg.mirror
        else torch.ones(b)
    )
    zoom = torch.exp(uniform(math.log(cfg.scale[0]), math.log(cfg.scale[1])))
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 * cfg.shift_px / s)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    sigma = torch.where(
        torch.rand(b, generator=gen) < cfg.blur_prob,
        uniform(*cfg.blur_sigma_px),
        torch.zeros(b),
    )
    big = fourier_pad(images, 2 * s)
    grid = F.affine_grid(theta, [b, 1, 2 * s, 2 * s], align_corners=False)
    big = F.grid_sample(
        big.unsqueeze(1),
        grid,
        mode="bicubic",
        padding_mode="border",
        align_corners=False,
    ).squeeze(1)
    out = fourier_crop_blur(big, s, sigma)
    new_radius = (radius * zoom).clamp(max=1.0) * uniform(*cfg.mask_shrink)
    spread = out.reshape(b, -1).std(dim=1).clamp(min=1e-6)
    noisy = torch.rand(b, generator=gen) < cfg.noise_prob
    level = torch.where(noisy, uniform(*cfg.noise_level), torch.zeros(b)) * spread
    out = out + level[:, None, None] * torch.randn(out.shape, generator=gen)
    sign = torch.where(torch.rand(b, generator=gen) < cfg.flip_sign, -1.0, 1.0)
    gain = torch.exp(uniform(math.log(cfg.contrast[0]), math.log(cfg.contrast[1])))
    offset = (torch.rand(b, generator=gen) * 2 - 1) * cfg.offset * spread
    out = out * (sign * gain)[:, None, None] + offset[:, None, None]
    return out, new_radius


def fourier_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """Band-limited (sinc) upsampling of ``(b, s, s)`` images to ``(b, size, size)``."""
    a = torch.from_numpy(resampling_matrix(images.shape[-1], size)).to(images.dtype)
    return a @ images @ a.T


def fourier_crop_blur(
    images: torch.Tensor, size: int, sigma: torch.Tensor
) -> torch.Tensor:
    """Fourier-crop ``(b, S, S)`` to ``(b, size, size)`` with a Gaussian blur of ``sigma``
    output pixels per image (0 = none); the exact inverse of :func:`fourier_pad` when
    ``sigma`` is 0."""
    big = images.shape[-1]
    inv, fwd = _crop_factors(big, size)
    freq = torch.from_numpy(np.fft.fftfreq(size).astype(np.float32))
    gauss = torch.exp(-2 * math.pi**2 * sigma.float()[:, None] ** 2 * freq[None] ** 2)
    ops = ((inv[None] * gauss[:, None, :].to(inv.dtype)) @ fwd[None]).real
    ops = (ops * (size / big)).to(images.dtype)
    return ops @ images @ ops.transpose(1, 2)


@functools.lru_cache(maxsize=8)
def _crop_factors(big: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse DFT of the small grid and (spectral map @ DFT) of the big one, complex64."""
    inv = np.fft.ifft(np.eye(size), axis=0)
    fwd = spectral_map(big, size) @ np.fft.fft(np.eye(big), axis=0)
    return torch.from_numpy(inv.astype(np.complex64)), torch.from_numpy(
        fwd.astype(np.complex64)
    )
