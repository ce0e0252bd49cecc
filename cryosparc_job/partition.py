"""Split a 2D classification's templates and particles by the selected classes, into the
four outputs of cryoSPARC's Select 2D Classes job; shared by the online and offline modes.

A class is identified by its template's ``blob/idx`` (the class's section in the class
average stack, 0-based, which is what the particles' ``alignments2D/class`` holds), so
class number ``k`` of :class:`~cryodiscovery.core.classes.ClassAverages` is ``blob/idx``
``k - 1``. Every particle lands in exactly one of ``particles_selected`` and
``particles_excluded``, every template in exactly one of ``templates_selected`` and
``templates_excluded``; rows keep their ``uid`` and all their fields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.errors import InputError
from cryosparc.dataset import Dataset

log = logging.getLogger(__name__)

#: Output names, in the order Select 2D lists them.
OUTPUT_NAMES: tuple[str, ...] = (
    "particles_selected",
    "particles_excluded",
    "templates_selected",
    "templates_excluded",
)
#: Slots Select 2D writes itself for each kind of output; every other slot of the input
#: is passed through (cryoSPARC keeps those in ``passthrough_<output>.cs``).
WRITTEN_SLOTS: dict[str, tuple[str, ...]] = {
    "particle": ("blob", "alignments2D"),
    "template": ("blob",),
}
#: The cryoSPARC data type of each output.
OUTPUT_TYPES: dict[str, str] = {
    "particles_selected": "particle",
    "particles_excluded": "particle",
    "templates_selected": "template",
    "templates_excluded": "template",
}
CLASS_FIELD = "alignments2D/class"
TEMPLATE_FIELD = "blob/idx"


@dataclass(frozen=True)
class Partition:
    """The four Select 2D outputs as datasets (rows of the inputs, all fields kept).

    ``selected_classes`` are the 0-based class indices (``blob/idx``) that were kept.
    """

    particles_selected: Dataset
    particles_excluded: Dataset
    templates_selected: Dataset
    templates_excluded: Dataset
    selected_classes: npt.NDArray[np.int64]

    def outputs(self) -> Iterator[tuple[str, Dataset]]:
        """``(name, dataset)`` for the four outputs, in :data:`OUTPUT_NAMES` order."""
        for name in OUTPUT_NAMES:
            yield name, getattr(self, name)

    def counts(self) -> dict[str, int]:
        """Rows per output."""
        return {name: len(dset) for name, dset in self.outputs()}


def _require(dset: Dataset, field: str, what: str) -> npt.NDArray[np.int64]:
    if field not in dset.fields():
        raise InputError(
            what, f"has no {field} field (fields: {', '.join(dset.fields())})"
        )
    return np.asarray(dset[field], dtype=np.int64)


def template_classes(
    templates: Dataset, what: str = "class averages"
) -> npt.NDArray[np.int64]:
    """``(n,)`` 0-based class index of each template row (``blob/idx``); must be unique."""
    idx = _require(templates, TEMPLATE_FIELD, what)
    values, counts = np.unique(idx, return_counts=True)
    if np.any(counts > 1):
        raise InputError(
            what, f"class index {int(values[counts > 1][0])} appears twice"
        )
    return idx


def partition(
    templates: Dataset,
    particles: Dataset,
    selected_class_numbers: npt.ArrayLike,
    *,
    what: str = "2D classification",
) -> Partition:
    """Split ``templates`` and ``particles`` by the kept classes.

    Parameters
    ----------
    templates:
        The 2D job's ``class_averages``, one row per class, with ``blob/idx``.
    particles:
        The 2D job's ``particles`` with ``alignments2D/class`` (0-based class index).
    selected_class_numbers:
        1-based class numbers to keep (``blob/idx + 1``); must all be classes of
        ``templates``.
    what:
        Names the input in error messages, e.g. ``"P3/J42"``.

    Raises
    ------
    InputError
        A field is missing, or particles belong to classes the templates do not have.
    ValueError
        A selected class number is not one of the templates' classes.
    """
    classes = template_classes(templates, f"{what} class_averages")
    assigned = _require(particles, CLASS_FIELD, f"{what} particles")
    unknown = np.setdiff1d(assigned, classes)
    if unknown.size:
        raise InputError(
            f"{what} particles",
            f"{int(np.isin(assigned, unknown).sum())} particles belong to class index "
            f"{int(unknown[0])}, which is not among the {classes.size} class averages",
        )
    keep = np.asarray(selected_class_numbers, dtype=np.int64).reshape(-1) - 1
    stray = np.setdiff1d(keep, classes)
    if stray.size:
        raise ValueError(
            f"selected class number {int(stray[0]) + 1} is not a class of {what}"
        )
    template_mask = np.isin(classes, keep)
    particle_mask = np.isin(assigned, keep)
    result = Partition(
        particles_selected=particles.mask(particle_mask),
        particles_excluded=particles.mask(~particle_mask),
        templates_selected=templates.mask(template_mask),
        templates_excluded=templates.mask(~template_mask),
        selected_classes=np.sort(keep),
    )
    log.debug("partition of %s: %s", what, result.counts())
    return result


def written_fields(dset: Dataset, output_type: str) -> list[str]:
    """Fields of ``dset`` in the slots Select 2D writes for ``output_type`` (uid first)."""
    slots = WRITTEN_SLOTS[output_type]
    return ["uid"] + [
        f for f in dset.fields(exclude_uid=True) if f.split("/", 1)[0] in slots
    ]


def passthrough_fields(dset: Dataset, output_type: str) -> list[str]:
    """Fields of ``dset`` outside the written slots (uid first); ``["uid"]`` if none."""
    slots = WRITTEN_SLOTS[output_type]
    return ["uid"] + [
        f for f in dset.fields(exclude_uid=True) if f.split("/", 1)[0] not in slots
    ]


def fill_allocated(allocated: Dataset, source: Dataset, what: str) -> Dataset:
    """Copy every field of ``allocated`` (from ``alloc_output``) from ``source``, row for row.

    ``allocated`` must have been allocated from ``source`` (same ``uid`` order). A field
    the server requires that ``source`` does not have is an error, never a zero-filled
    column.
    """
    if not np.array_equal(np.asarray(allocated["uid"]), np.asarray(source["uid"])):
        raise ValueError(f"{what}: allocated rows do not match the source rows")
    have = set(source.fields())
    missing = [f for f in allocated.fields(exclude_uid=True) if f not in have]
    if missing:
        raise InputError(
            what,
            f"the server requires fields the 2D job's output does not have: {', '.join(missing)}",
        )
    for name in allocated.fields(exclude_uid=True):
        allocated[name] = source[name]
    return allocated
