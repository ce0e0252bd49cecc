"""What to simulate: :class:`SimulationConfig`, the one schema for the generator's options
(CLI flags, training recipes and federation sites are converted to it once)."""

from __future__ import annotations

from dataclasses import dataclass

from cryodiscovery.core.synthetic.junk import JUNK_KINDS
from cryodiscovery.core.synthetic.shapes import SHAPE_FAMILIES

#: Metadata styles (see :attr:`SimulationConfig.metadata_style`).
METADATA_STYLES: tuple[str, ...] = ("mixed", "relion", "cryosparc", "all")


def _check_range(name: str, lo: float, hi: float, floor: float, ceil: float) -> None:
    if not floor <= lo <= hi <= ceil:
        raise ValueError(
            f"{name} must satisfy {floor} <= low <= high <= {ceil}, got ({lo}, {hi})"
        )


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate; every range is sampled once per run (log-uniform for SNR, pixel size).

    Attributes
    ----------
    n_classes:
        Classes per run.
    box_sizes:
        Box sizes (px) to choose from, 32-512.
    pixel_size_range:
        Pixel size range in Å.
    snr_range:
        Particle SNR range (raw particle signal variance / noise variance).
    junk_fraction:
        Fraction of junk classes, exactly ``round(junk_fraction * n_classes)``.
    junk_kinds:
        Junk kinds to draw from (see :data:`junk.JUNK_KINDS`), each junk class by the
        generator's relative frequency of its kind (particle-like junk is the most
        common, as in real runs).
    shapes:
        Molecule families (see :data:`shapes.SHAPE_FAMILIES`).
    particle_range:
        Particles per class (few-particle junk goes below the low end).
    defocus_range_um, amplitude_contrast_range, voltage_kv, cs_mm:
        Microscope; a run uses a sub-range of defocus.
    borderline_fraction:
        Share of good classes that are blurrier or rare (few-particle) views.
    nuisance:
        Randomise output conventions (sign, normalisation, outside mask, blur); False
        gives RELION's own conventions for every run.
    structures:
        Structure files (atomic models or EM maps, :mod:`.library`) for the "atomic"
        family beside the two shipped models; with any, that family is drawn for 45% of
        runs, each run on one file chosen at random.
    metadata_style:
        Which metadata a run has, as the readers return it from files: ``"relion"``
        (no ECA or mean posterior), ``"cryosparc"`` (no accuracies or Fourier
        completeness; class distribution = count / total), ``"all"``, or ``"mixed"``
        (RELION or cryoSPARC per run, 60/40).
    """

    n_classes: int = 50
    box_sizes: tuple[int, ...] = (64, 96, 128, 160, 192, 256)
    pixel_size_range: tuple[float, float] = (1.0, 5.0)
    snr_range: tuple[float, float] = (0.01, 0.5)
    junk_fraction: float = 0.45
    junk_kinds: tuple[str, ...] = JUNK_KINDS
    shapes: tuple[str, ...] = SHAPE_FAMILIES
    particle_range: tuple[int, int] = (20, 5000)
    defocus_range_um: tuple[float, float] = (0.5, 3.0)
    amplitude_contrast_range: tuple[float, float] = (0.07, 0.1)
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    borderline_fraction: float = 0.3
    nuisance: bool = True
    metadata_style: str = "mixed"
    structures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {self.n_classes}")
        if not self.box_sizes or any(not 32 <= b <= 512 for b in self.box_sizes):
            raise ValueError(f"box sizes must be 32-512 px, got {self.box_sizes}")
        _check_range("pixel_size_range", *self.pixel_size_range, 0.3, 20.0)
        _check_range("snr_range", *self.snr_range, 1e-4, 10.0)
        _check_range("particle_range", *self.particle_range, 2, 10**7)
        _check_range("defocus_range_um", *self.defocus_range_um, 0.05, 10.0)
        _check_range(
            "amplitude_contrast_range", *self.amplitude_contrast_range, 0.0, 0.5
        )
        if self.metadata_style not in METADATA_STYLES:
            raise ValueError(
                f"metadata_style must be one of {METADATA_STYLES}, got {self.metadata_style!r}"
            )
        if not 0.0 <= self.junk_fraction <= 1.0:
            raise ValueError(
                f"junk_fraction must be in [0, 1], got {self.junk_fraction}"
            )
        if not 0.0 <= self.borderline_fraction <= 1.0:
            raise ValueError(
                f"borderline_fraction must be in [0, 1], got {self.borderline_fraction}"
            )
        bad = [k for k in self.junk_kinds if k not in JUNK_KINDS]
        if bad or (not self.junk_kinds and self.junk_fraction > 0):
            raise ValueError(
                f"unknown or missing junk kinds {bad}; known: {', '.join(JUNK_KINDS)}"
            )
        bad = [s for s in self.shapes if s not in SHAPE_FAMILIES]
        if bad or not self.shapes:
            raise ValueError(
                f"unknown or missing shapes {bad}; known: {', '.join(SHAPE_FAMILIES)}"
            )
