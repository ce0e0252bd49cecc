"""Class-average formation as RELION and cryoSPARC do it, computed analytically per
Fourier shell instead of by summing thousands of noisy particles.

For ``N`` particles with CTFs ``C_i``, noise power ``σ²(k)`` and signal prior ``τ²(k)``,
the regularised (Wiener-like) average is ``Σ C_i X_i / (Σ C_i² + σ²/τ²)``. Its signal is
the aligned signal times ``H = A / (A + σ²/τ²)`` with ``A = N ⟨C²⟩``, and its noise has
power ``σ² A / (A + σ²/τ²)²``: amplitude SNR grows like ``√N`` where the CTF has power,
low frequencies (tiny CTF) are damped, which gives the dark halo around large particles,
and frequencies without signal are suppressed unless the class has no signal at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.synthetic.ctf import electron_wavelength, mean_ctf_squared
from cryodiscovery.core.synthetic.projection import (
    FourierGrid,
    fourier_grid,
    gaussian_filter_ft,
)

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]


@dataclass(frozen=True, eq=False)
class Physics:
    """What one data set's particles share, on the rfft grid of its box.

    Attributes
    ----------
    box, pixel_size:
        Image size (px) and sampling (Å/px).
    grid:
        The :class:`FourierGrid` of the box.
    ctf2:
        ``(n_shells,)`` mean CTF² over the particles' defoci.
    noise_power:
        ``(n_shells,)`` particle noise power per pixel (about 1: RELION normalises
        particles to unit background standard deviation), coloured at low frequency.
    envelope:
        ``(box, box//2+1)`` signal amplitude envelope: B-factor, detector and atom blur.
    tau2_fudge:
        RELION's ``--tau2_fudge`` (T): regularisation of the average.
    signal_scale:
        Factor from projected density to particle-image units, set for the data set's SNR.
    snr:
        Particle SNR: signal variance over noise variance in a raw particle image.
    ref_power:
        ``(n_shells,)`` power of one sharp projection of the molecule, scaled.
    transfer:
        ``(n_shells,)`` what CTF correction leaves of the signal: below the first CTF
        peak the restoration falls short (the dark halo around particles and ice).
    noise_leak:
        How much of the average's own noise power enters its signal prior ``τ²``.
        Iterating the regularised average shrinks ``τ²`` where there is no signal
        (a fixed point below 1 for ``T < 4``), so pure-noise frequencies fade.
    """

    box: int
    pixel_size: float
    grid: FourierGrid
    ctf2: F64
    noise_power: F64
    envelope: F64
    tau2_fudge: float
    signal_scale: float
    snr: float
    ref_power: F64 | None = None
    transfer: F64 | None = None
    noise_leak: float = 1.0

    def frequency(self) -> F64:
        """``(n_shells,)`` spatial frequency of each shell in Å⁻¹."""
        return np.arange(self.grid.n_shells) / (self.box * self.pixel_size)


@dataclass(frozen=True)
class PhysicsParams:
    """Random draws that define a data set's :class:`Physics` (all SI-free, Å and µm)."""

    defocus_um: tuple[float, float] = (0.5, 3.0)
    amplitude_contrast: float = 0.1
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    bfactor: float = 80.0  # Å², amplitude envelope exp(-B k² / 4)
    low_noise_boost: float = 5.0  # extra noise power at k -> 0 (ice gradients, 1/f)
    low_noise_scale_A: float = 60.0  # Å, width of that boost
    high_noise_tilt: float = 0.0  # fraction by which noise power falls towards Nyquist
    detector_mtf: float = 0.7  # signal amplitude left at Nyquist
    tau2_fudge: float = 2.0
    halo_strength: float = 0.4  # signal lost at k -> 0 by CTF correction
    halo_scale: float = 0.8  # × first-CTF-peak frequency: where the loss fades
    noise_leak: float = 0.3  # share of the average's noise power inside τ²


def make_physics(
    box: int,
    pixel_size: float,
    snr: float,
    params: PhysicsParams,
    rng: np.random.Generator,
) -> Physics:
    """The shared particle physics of a data set, with ``signal_scale`` still 1."""
    grid = fourier_grid(box)
    freq = np.arange(grid.n_shells) / (box * pixel_size)
    lo, hi = params.defocus_um
    defoci = rng.uniform(lo, hi, 24) * 1e4
    ctf2 = mean_ctf_squared(
        freq,
        defoci,
        voltage_kv=params.voltage_kv,
        cs_mm=params.cs_mm,
        amplitude_contrast=params.amplitude_contrast,
    )
    nyq = np.clip(np.arange(grid.n_shells) / box / 0.5, 0.0, 1.5)
    noise = 1.0 + params.low_noise_boost * np.exp(
        -((freq * params.low_noise_scale_A) ** 2)
    )
    noise *= 1.0 - params.high_noise_tilt * np.clip(nyq, 0, 1) ** 2
    lam = electron_wavelength(params.voltage_kv)
    first_peak = np.sqrt(1.0 / (2.0 * lam * float(np.mean(defoci))))
    transfer = 1.0 - params.halo_strength * np.exp(
        -((freq / (params.halo_scale * first_peak)) ** 2)
    )
    k_a = grid.radius / pixel_size
    env = np.exp(-params.bfactor * k_a**2 / 4.0)
    # Detector MTF: a smooth fall to `detector_mtf` at Nyquist.
    env *= 1.0 - (1.0 - params.detector_mtf) * np.clip(grid.radius / 0.5, 0, 1.5) ** 2
    return Physics(
        box=box,
        pixel_size=pixel_size,
        grid=grid,
        ctf2=ctf2,
        noise_power=noise,
        envelope=np.clip(env, 0.0, None),
        tau2_fudge=params.tau2_fudge,
        signal_scale=1.0,
        snr=snr,
        transfer=transfer,
        noise_leak=params.noise_leak,
    )


def calibrate(physics: Physics, references: F64) -> Physics:
    """Set ``signal_scale`` so raw particles of ``references`` (r, box, box) have the SNR.

    The particle signal is the CTF-modulated, envelope-damped projection; its variance
    over the box, averaged over the references, is matched to ``snr`` × mean noise power.
    """
    grid = physics.grid
    npix = float(physics.box**2)
    ft = np.fft.rfft2(references, axes=(-2, -1)) * physics.envelope
    power = (np.abs(ft) ** 2) * grid.to_2d(physics.ctf2)
    power[..., 0, 0] = 0.0
    # rfft stores half the plane: count interior columns twice (Parseval).
    weight = np.full(power.shape[-1], 2.0)
    weight[0] = 1.0
    if physics.box % 2 == 0:
        weight[-1] = 1.0
    var = float((power * weight).sum(axis=(-2, -1)).mean()) / npix**2
    noise = float(np.mean(grid.to_2d(physics.noise_power)))
    scale = float(np.sqrt(physics.snr * noise / max(var, 1e-30)))
    ref_power = np.mean([grid.radial_mean(np.abs(f) ** 2) for f in ft], axis=0) * (
        scale**2 / npix
    )
    return Physics(
        physics.box,
        physics.pixel_size,
        grid,
        physics.ctf2,
        physics.noise_power,
        physics.envelope,
        physics.tau2_fudge,
        scale,
        physics.snr,
        ref_power,
        physics.transfer,
        physics.noise_leak,
    )


@dataclass(frozen=True, eq=False)
class Average:
    """One class average before low-pass filtering, masking and display conventions.

    Attributes
    ----------
    spectrum:
        ``(box, box//2+1)`` complex rfft of the average (signal plus residual noise).
    ssnr:
        ``(n_shells,)`` spectral SNR of the average (RELION's ``data_vs_prior``).
    """

    spectrum: C128
    ssnr: F64


def form_average(
    physics: Physics,
    signal: F64,
    n_particles: float,
    rng: np.random.Generator,
    *,
    blur_px: float = 0.0,
    spread: float = 0.0,
    spread_ref: float = 0.0,
) -> Average:
    """The regularised average of ``n_particles`` particles whose aligned mean is ``signal``.

    Parameters
    ----------
    signal:
        ``(box, box)`` projected density (before CTF and scale): the mean of the aligned
        particles' signals, already blurred by their alignment errors.
    n_particles:
        Number of particles in the class (> 0).
    blur_px, spread, spread_ref:
        Heterogeneity of the class (see :class:`views.Signal`): it blurs the mean and its
        variance joins the noise, through the CTF like the signal.
    """
    if n_particles <= 0:
        raise ValueError(f"a class needs particles, got {n_particles}")
    grid = physics.grid
    npix = float(physics.box**2)
    sharp = np.fft.rfft2(signal) * (physics.envelope * physics.signal_scale)
    if physics.transfer is not None:
        sharp = sharp * grid.to_2d(physics.transfer)
    sig = sharp * gaussian_filter_ft(physics.box, blur_px) if blur_px > 0 else sharp
    p_sig = grid.radial_mean(np.abs(sig) ** 2) / npix
    variance = spread * p_sig
    if blur_px > 0:
        variance = (
            variance + grid.radial_mean(np.abs(sharp) ** 2 - np.abs(sig) ** 2) / npix
        )
    if spread_ref > 0 and physics.ref_power is not None:
        variance = variance + spread_ref * physics.ref_power
    a = n_particles * physics.ctf2
    sigma2 = physics.noise_power + physics.ctf2 * variance
    tau2 = physics.tau2_fudge * (
        p_sig + physics.noise_leak * sigma2 / np.maximum(a, 1e-12)
    )
    denom = a + sigma2 / np.maximum(tau2, 1e-30)
    h = a / denom
    g = np.sqrt(sigma2 * a) / denom
    noise = np.fft.rfft2(rng.standard_normal((physics.box, physics.box)))
    spectrum = sig * grid.to_2d(h) + noise * grid.to_2d(g)
    ssnr = a * physics.tau2_fudge * p_sig / sigma2
    return Average(spectrum, ssnr)


def estimated_resolution(ssnr: F64, box: int, pixel_size: float) -> float:
    """RELION-style estimated resolution (Å): the last shell before the SSNR first drops
    below 1, ``box * pixel_size / shell``; ``inf`` when no shell reaches 1."""
    nyquist_shell = box // 2
    below = np.nonzero(ssnr[1 : nyquist_shell + 1] < 1.0)[0]
    last = (
        nyquist_shell if below.size == 0 else int(below[0])
    )  # shells 1..last are >= 1
    if last < 1:
        return float("inf")
    return float(box * pixel_size / last)


def lowpass_profile(
    grid: FourierGrid, resolution_A: float, pixel_size: float, width: int = 2
) -> F64:
    """``(n_shells,)`` raised-cosine low-pass at ``resolution_A`` over ``width`` shells."""
    cutoff = grid.box * pixel_size / max(resolution_A, 2.0 * pixel_size)
    shells = np.arange(grid.n_shells, dtype=np.float64)
    edge = np.clip((shells - cutoff) / max(width, 1), 0.0, 1.0)
    return np.asarray(0.5 + 0.5 * np.cos(np.pi * edge), dtype=np.float64)


def to_image(
    spectrum: C128,
    box: int,
    lowpass: F64 | None = None,
    grid: FourierGrid | None = None,
) -> F64:
    """The real ``(box, box)`` image of an rfft ``spectrum``, optionally low-passed."""
    if lowpass is not None:
        g = grid or fourier_grid(box)
        spectrum = spectrum * g.to_2d(lowpass)
    return np.asarray(np.fft.irfft2(spectrum, s=(box, box)), dtype=np.float64)
