"""The STAR outputs of RELION's auto-selecting Select job: ``class_averages.star`` and
``backup_selection.star`` (``particles.star`` is streamed by
:mod:`cryodiscovery.relion_external.particles`).

As ``ClassRanker`` (RELION 4.0/5.0 ``src/class_ranker.cpp``) writes them:
``class_averages.star`` is an unnamed table (``data_``) with one row per selected class,
``rlnReferenceImage`` and ``rlnPredictedClassScore`` first, then the class's model
columns; ``backup_selection.star`` is an unnamed table with one ``rlnSelected`` (1/0) per
class of the model, in class order, which RELION's display loads to let a person adjust
the selection. This job also writes ``rlnClassScore`` (the same score, the name RELION
uses in ``rank_model.star``) and ``rlnClassNumber`` (as RELION 3.1's display does).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.io.star_tables import write_star
from cryodiscovery.relion_external.nodes import STAR_VERSION

log = logging.getLogger(__name__)

#: Model columns RELION's Select job copies into class_averages.star, and the
#: ClassAverages field to fall back on when a model.star lacks one (RELION <= 3.0 wrote
#: translations in pixels).
CLASS_COLUMNS: dict[str, str] = {
    "rlnClassDistribution": "class_distribution",
    "rlnAccuracyRotations": "accuracy_rotation_deg",
    "rlnAccuracyTranslationsAngst": "accuracy_translation_A",
    "rlnEstimatedResolution": "resolution_A",
}
#: Further model columns kept when present (RELION's display copies them too).
EXTRA_COLUMNS: tuple[str, ...] = (
    "rlnOverallFourierCompleteness",
    "rlnClassPriorOffsetX",
    "rlnClassPriorOffsetY",
)


def class_averages_table(
    model_classes: pd.DataFrame,
    classes: ClassAverages,
    scores: npt.ArrayLike,
    selected: npt.ArrayLike,
) -> pd.DataFrame:
    """Rows of ``class_averages.star`` for the selected classes, in class order.

    Parameters
    ----------
    model_classes:
        ``data_model_classes`` of the model.star; row ``i`` is class ``i + 1``.
    classes:
        The class averages that were scored (``class_numbers`` are 1-based and index
        ``model_classes``; metadata fills columns the model lacks).
    scores, selected:
        ``(n,)`` scores (0-1) and decisions for ``classes``, in its order.
    """
    numbers = np.asarray(classes.class_numbers, dtype=np.int64)
    score = np.asarray(scores, dtype=np.float64)
    keep = np.asarray(selected, dtype=bool)
    if numbers.size and (numbers.min() < 1 or numbers.max() > len(model_classes)):
        raise ValueError(
            f"class numbers {numbers.min()}-{numbers.max()} outside the "
            f"{len(model_classes)} classes of the model"
        )
    order = np.argsort(numbers[keep], kind="stable")
    chosen, chosen_scores = numbers[keep][order], score[keep][order]
    rows = model_classes.iloc[chosen - 1]
    table = pd.DataFrame(
        {
            "rlnReferenceImage": rows["rlnReferenceImage"].astype(str).to_numpy(),
            "rlnPredictedClassScore": chosen_scores,
            "rlnClassScore": chosen_scores,
        }
    )
    position = {int(c): i for i, c in enumerate(numbers)}
    for column, name in CLASS_COLUMNS.items():
        if column in rows.columns:  # as the model has it (RELION writes inf, nan too)
            table[column] = rows[column].to_numpy()
        else:
            values = classes.field(name)
            table[column] = [values[position[int(c)]] for c in chosen]
    for column in EXTRA_COLUMNS:
        if column in rows.columns:
            table[column] = rows[column].to_numpy()
    table["rlnClassNumber"] = chosen
    return table


def write_class_averages(path: Path, table: pd.DataFrame, *, version: str) -> Path:
    """Write ``class_averages.star`` (atomically) in RELION ``version``'s layout."""
    write_star(Path(path), {"": table}, version=STAR_VERSION[version])
    return Path(path)


def write_backup_selection(
    path: Path, n_classes: int, selected_numbers: npt.ArrayLike, *, version: str
) -> Path:
    """Write ``backup_selection.star``: ``rlnSelected`` 1/0 for classes 1..n_classes.

    Parameters
    ----------
    path:
        File to write (atomically).
    n_classes:
        Number of classes of the Class2D job (rows of its model.star), including empty
        ones: RELION's display ignores a file with any other number of rows.
    selected_numbers:
        1-based class numbers that are selected.
    version:
        RELION version (a key of :data:`STAR_VERSION`).
    """
    chosen = np.asarray(selected_numbers, dtype=np.int64)
    if chosen.size and (chosen.min() < 1 or chosen.max() > n_classes):
        raise ValueError(f"selected classes outside 1-{n_classes}")
    flags = np.zeros(n_classes, dtype=np.int64)
    flags[chosen - 1] = 1
    table = pd.DataFrame({"rlnSelected": flags})
    write_star(Path(path), {"": table}, version=STAR_VERSION[version])
    return Path(path)
