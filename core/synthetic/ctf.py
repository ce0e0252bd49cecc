"""Contrast transfer function of a transmission electron microscope and its average over
the defocus spread of a data set, the quantity that Wiener-style CTF correction divides by.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å at ``voltage_kv`` kV (0.0197 Å at 300 kV)."""
    if voltage_kv <= 0:
        raise ValueError(f"voltage must be positive, got {voltage_kv} kV")
    volts = voltage_kv * 1e3
    return float(12.2643247 / np.sqrt(volts * (1.0 + 0.978466e-6 * volts)))


def ctf(
    frequency: npt.ArrayLike,
    defocus_A: float,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
) -> F64:
    """The CTF at spatial ``frequency`` (Å⁻¹), underfocus ``defocus_A`` positive.

    ``CTF = -(sqrt(1 - Q²) sin χ + Q cos χ)`` with
    ``χ = π λ Δf k² - π/2 Cs λ³ k⁴ + phase shift`` (RELION's sign convention: a
    positive density images dark at low frequency).
    """
    if not 0.0 <= amplitude_contrast < 1.0:
        raise ValueError(
            f"amplitude contrast must be in [0, 1), got {amplitude_contrast}"
        )
    lam = electron_wavelength(voltage_kv)
    k2 = np.asarray(frequency, dtype=np.float64) ** 2
    cs = cs_mm * 1e7
    chi = (
        np.pi * lam * defocus_A * k2
        - 0.5 * np.pi * cs * lam**3 * k2 * k2
        + phase_shift_rad
    )
    q = amplitude_contrast
    return np.asarray(
        -(np.sqrt(1.0 - q * q) * np.sin(chi) + q * np.cos(chi)), dtype=np.float64
    )


def mean_ctf_squared(
    frequency: npt.ArrayLike,
    defoci_A: npt.ArrayLike,
    *,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> F64:
    """``⟨CTF²⟩`` over the particles' defoci at each ``frequency`` (Å⁻¹).

    A class average of ``N`` particles gathers ``N ⟨CTF²⟩(k)`` of signal weight at each
    frequency: small below the first CTF peak, about 0.5 beyond a few zeros.
    """
    freq = np.asarray(frequency, dtype=np.float64)
    defoci = np.asarray(defoci_A, dtype=np.float64).ravel()
    if defoci.size == 0:
        raise ValueError("need at least one defocus value")
    total = np.zeros_like(freq)
    for dz in defoci:
        total += (
            ctf(
                freq,
                float(dz),
                voltage_kv=voltage_kv,
                cs_mm=cs_mm,
                amplitude_contrast=amplitude_contrast,
            )
            ** 2
        )
    return np.asarray(total / defoci.size, dtype=np.float64)
