"""The one in-memory type for a set of 2D class averages, as every reader returns it.

Images, pixel size, per-class metadata (NaN where a source does not have a value, with an
explicit mask), optional selection labels and where the data came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum

import numpy as np
import numpy.typing as npt

#: Per-class metadata columns, in the order of :attr:`ClassAverages.metadata`.
#: - ``particle_count``: particles whose most likely class is this one (a count).
#: - ``class_distribution``: weighted occupancy, 0-1 (RELION ``rlnClassDistribution``;
#:   cryoSPARC: count / total).
#: - ``resolution_A``: estimated resolution in Å (RELION ``rlnEstimatedResolution``,
#:   cryoSPARC ``blob/res_A``).
#: - ``accuracy_rotation_deg``: RELION ``rlnAccuracyRotations`` (999 = not yet estimated).
#: - ``accuracy_translation_A``: RELION ``rlnAccuracyTranslationsAngst``.
#: - ``fourier_completeness``: RELION ``rlnOverallFourierCompleteness``, 0-1.
#: - ``eca``: cryoSPARC effective class assignment: mean ``class_ess`` of its particles.
#: - ``mean_posterior``: cryoSPARC mean ``class_posterior`` of its particles.
METADATA_FIELDS: tuple[str, ...] = (
    "particle_count",
    "class_distribution",
    "resolution_A",
    "accuracy_rotation_deg",
    "accuracy_translation_A",
    "fourier_completeness",
    "eca",
    "mean_posterior",
)


class Label(IntEnum):
    """Selection label of one class, as a person (or a Select job) gave it."""

    UNKNOWN = -1
    REJECTED = 0
    SELECTED = 1


@dataclass(frozen=True)
class Provenance:
    """Where a set of class averages came from.

    Parameters
    ----------
    format:
        ``"relion"``, ``"cryosparc"``, ``"mrcs"`` or ``"synthetic"``.
    sources:
        The files read, as given (absolute or relative to the working folder).
    job:
        The job it belongs to, e.g. ``"Class2D/job013"`` or ``"P3/J42"``; empty if unknown.
    """

    format: str
    sources: tuple[str, ...] = ()
    job: str = ""


FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class ClassAverages:
    """A set of ``n`` 2D class averages with their metadata.

    Parameters
    ----------
    images:
        ``(n, h, w)`` float32 class averages (``h == w``), in stack order.
    pixel_size:
        Pixel size in Å, or ``None`` when unknown (a bare stack without ``--angpix``).
    class_numbers:
        ``(n,)`` int64, 1-based class numbers (RELION ``rlnClassNumber``; cryoSPARC
        class index + 1; stack position + 1 for a bare stack).
    metadata:
        ``(n, len(METADATA_FIELDS))`` float64; NaN where the source has no value.
    labels:
        ``(n,)`` int8 values of :class:`Label` (``-1`` unknown, ``0`` rejected,
        ``1`` selected).
    kinds:
        Per class, what the class is when known (the generator's truth: ``"good"``,
        ``"ice"``, ``"carbon_edge"``...), ``""`` when unknown.
    provenance:
        Where the data came from.
    """

    images: npt.NDArray[np.float32]
    pixel_size: float | None
    class_numbers: npt.NDArray[np.int64]
    metadata: FloatArray
    labels: npt.NDArray[np.int8]
    kinds: tuple[str, ...]
    provenance: Provenance = field(default_factory=lambda: Provenance("unknown"))

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 3:
            raise ValueError(f"images must be (n, h, w), got shape {images.shape}")
        n = images.shape[0]
        shapes = {
            "class_numbers": (np.shape(self.class_numbers), (n,)),
            "metadata": (np.shape(self.metadata), (n, len(METADATA_FIELDS))),
            "labels": (np.shape(self.labels), (n,)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"{name} has shape {got}, expected {want}")
        if len(self.kinds) != n:
            raise ValueError(f"kinds has {len(self.kinds)} entries, expected {n}")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise ValueError(f"pixel size must be positive, got {self.pixel_size}")

    @classmethod
    def create(
        cls,
        images: npt.ArrayLike,
        *,
        pixel_size: float | None = None,
        class_numbers: npt.ArrayLike | None = None,
        metadata: dict[str, npt.ArrayLike] | None = None,
        labels: npt.ArrayLike | None = None,
        kinds: Sequence[str] | None = None,
        provenance: Provenance | None = None,
    ) -> ClassAverages:
        """Build a set from arrays, filling what is not given as missing.

        ``metadata`` maps names from :data:`METADATA_FIELDS` to ``(n,)`` arrays; names
        not given stay NaN. An unknown name is a ``ValueError``.
        """
        imgs = np.ascontiguousarray(images, dtype=np.float32)
        if imgs.ndim != 3:
            raise ValueError(f"images must be (n, h, w), got shape {imgs.shape}")
        n = imgs.shape[0]
        meta = np.full((n, len(METADATA_FIELDS)), np.nan, dtype=np.float64)
        for name, values in (metadata or {}).items():
            if name not in METADATA_FIELDS:
                raise ValueError(f"unknown metadata field {name!r}")
            meta[:, METADATA_FIELDS.index(name)] = np.asarray(values, dtype=np.float64)
        numbers = (
            np.arange(1, n + 1, dtype=np.int64)
            if class_numbers is None
            else np.asarray(class_numbers, dtype=np.int64)
        )
        labs = (
            np.full(n, Label.UNKNOWN, dtype=np.int8)
            if labels is None
            else np.asarray(labels, dtype=np.int8)
        )
        return cls(
            images=imgs,
            pixel_size=None if pixel_size is None else float(pixel_size),
            class_numbers=numbers,
            metadata=meta,
            labels=labs,
            kinds=tuple(kinds) if kinds is not None else ("",) * n,
            provenance=provenance or Provenance("unknown"),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def box_size(self) -> int:
        """Box size in pixels (images are square)."""
        return int(self.images.shape[-1])

    @property
    def metadata_mask(self) -> npt.NDArray[np.bool_]:
        """``(n, len(METADATA_FIELDS))`` True where a metadata value is present."""
        return ~np.isnan(self.metadata)

    @property
    def has_metadata(self) -> bool:
        """True when any class has any metadata value."""
        return bool(self.metadata_mask.any())

    def field(self, name: str) -> FloatArray:
        """One metadata column, ``(n,)`` float64 with NaN where missing."""
        if name not in METADATA_FIELDS:
            raise ValueError(f"unknown metadata field {name!r}")
        return self.metadata[:, METADATA_FIELDS.index(name)]

    def with_labels(self, labels: npt.ArrayLike) -> ClassAverages:
        """A copy with new ``(n,)`` labels."""
        return replace(self, labels=np.asarray(labels, dtype=np.int8))

    def subset(self, index: npt.ArrayLike) -> ClassAverages:
        """The classes at ``index`` (integer positions or a boolean mask)."""
        idx = np.arange(len(self))[np.asarray(index)]
        return replace(
            self,
            images=self.images[idx],
            class_numbers=self.class_numbers[idx],
            metadata=self.metadata[idx],
            labels=self.labels[idx],
            kinds=tuple(self.kinds[i] for i in idx),
        )
