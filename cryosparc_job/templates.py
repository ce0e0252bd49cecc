"""Class averages from a cryoSPARC 2D classification's datasets, as the server hands them
out: the ``class_averages`` dataset, the class-average image stack it points at, and the
``particles`` dataset with ``alignments2D`` (used for the per-class metadata).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.cryosparc_job.partition import CLASS_FIELD, template_classes
from cryosparc.dataset import Dataset

log = logging.getLogger(__name__)


def _per_class_mean(
    particles: Dataset,
    field: str,
    assigned: npt.NDArray[np.int64],
    classes: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64] | None:
    if field not in particles.fields():
        return None
    size = int(max(assigned.max(initial=0), classes.max(initial=0))) + 1
    sums = np.bincount(
        assigned, weights=np.asarray(particles[field], dtype=np.float64), minlength=size
    )
    counts = np.bincount(assigned, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return np.asarray(means[classes], dtype=np.float64)


def class_averages_from_datasets(
    templates: Dataset,
    particles: Dataset | None,
    stack: npt.ArrayLike,
    *,
    job: str = "",
    sources: Sequence[str] = (),
) -> ClassAverages:
    """Build :class:`ClassAverages` in template-row order.

    Parameters
    ----------
    templates:
        ``class_averages``: ``blob/idx`` (section in ``stack``), ``blob/psize_A`` (Å) and,
        when present, ``blob/res_A`` (Å).
    particles:
        ``particles`` with ``alignments2D/class`` and optionally ``class_ess`` and
        ``class_posterior``; ``None`` leaves the particle metadata missing.
    stack:
        ``(m, h, w)`` class-average images (all sections of the MRC stack).
    job, sources:
        Provenance, e.g. ``"P3/J42"`` and the stack's path.
    """
    what = job or "class averages"
    idx = template_classes(templates, what)
    images = np.asarray(stack, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or idx.size == 0:
        raise InputError(
            what,
            f"expected a stack of class averages, got shape {images.shape} for {idx.size} classes",
        )
    if idx.max() >= images.shape[0]:
        raise InputError(
            what,
            f"class index {int(idx.max())} is past the {images.shape[0]} images of the stack",
        )
    psize = (
        np.asarray(templates["blob/psize_A"], dtype=np.float64)
        if "blob/psize_A" in templates.fields()
        else None
    )
    metadata: dict[str, npt.ArrayLike] = {}
    if "blob/res_A" in templates.fields():
        res = np.asarray(templates["blob/res_A"], dtype=np.float64)
        metadata["resolution_A"] = np.where(np.isfinite(res), res, np.nan)
    if particles is not None and CLASS_FIELD in particles.fields():
        assigned = np.asarray(particles[CLASS_FIELD], dtype=np.int64)
        size = int(max(assigned.max(initial=0), idx.max())) + 1
        counts = np.bincount(assigned, minlength=size)[idx].astype(np.float64)
        metadata["particle_count"] = counts
        metadata["class_distribution"] = counts / max(len(particles), 1)
        for name, field in (
            ("eca", "alignments2D/class_ess"),
            ("mean_posterior", "alignments2D/class_posterior"),
        ):
            values = _per_class_mean(particles, field, assigned, idx)
            if values is not None:
                metadata[name] = values
    return ClassAverages.create(
        images[idx],
        pixel_size=float(psize[0]) if psize is not None and psize[0] > 0 else None,
        class_numbers=idx + 1,
        metadata=metadata,
        provenance=Provenance("cryosparc", tuple(sources), job),
    )
