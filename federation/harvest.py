"""Harvest a facility's labelled 2D classes from its own history, for local training.

Every labelled Class2D set under the configured roots (RELION projects: Class2D jobs a
Select job selected from; cryoSPARC 2D jobs with Select 2D outputs; generated folders) is
found by :func:`cryodiscovery.core.io.history.find_labelled_sets`. Then:

- only classes with a label (selected or rejected) are kept;
- duplicates are removed by the exact content of the class image (a job reached through
  two roots, or selected by two Select jobs); a duplicate whose labels disagree is
  dropped entirely (people disagreed, so it teaches nothing reliable);
- at most ``caps.max_classes`` are kept, a deterministic pseudo-random subset;
- a local validation split is taken per label (stratified), chosen by a hash of each
  class image and the seed: the same class always lands on the same side, across rounds
  and when new jobs are added, so the validation split never leaks into training.

Nothing here leaves the facility; only :mod:`task` turns it into model updates.

Public API (client_app, cli ``check``, tests; keep it stable)::

    harvest(config: FacilityConfig, finder: Finder | None = None) -> Harvest
    Harvest(train, validation, sources, n_duplicates, n_conflicts, n_capped)
        .n_train, .n_validation, .label_counts() -> dict[str, int]
    SourceSummary(kind, root, job, n_selected, n_rejected, n_unlabelled, n_duplicates)
    split_validation(classes, fraction, seed) -> tuple[ClassAverages, ClassAverages]
    Finder = Callable[[Path], list[ClassAverages]]
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages, Label
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.history import find_labelled_sets
from cryodiscovery.federation.config import FacilityConfig

log = logging.getLogger(__name__)

Finder = Callable[[Path], list[ClassAverages]]


@dataclass(frozen=True)
class SourceSummary:
    """What one labelled set contributed (after de-duplication)."""

    kind: str
    root: Path
    job: str
    n_selected: int
    n_rejected: int
    n_unlabelled: int
    n_duplicates: int


@dataclass(frozen=True)
class Harvest:
    """Labelled classes of one facility, split into local training and validation.

    ``train`` and ``validation`` hold one :class:`ClassAverages` per source set (box
    sizes differ between jobs), empty sets left out.
    """

    train: tuple[ClassAverages, ...]
    validation: tuple[ClassAverages, ...]
    sources: tuple[SourceSummary, ...]
    n_duplicates: int = 0
    n_conflicts: int = 0
    n_capped: int = 0

    @property
    def n_train(self) -> int:
        return sum(len(c) for c in self.train)

    @property
    def n_validation(self) -> int:
        return sum(len(c) for c in self.validation)

    def label_counts(self) -> dict[str, int]:
        """Selected/rejected counts in training and validation."""
        out: dict[str, int] = {}
        for split, sets in (("train", self.train), ("validation", self.validation)):
            labels = np.concatenate([c.labels for c in sets]) if sets else np.zeros(0)
            out[f"{split}_selected"] = int(np.sum(labels == Label.SELECTED))
            out[f"{split}_rejected"] = int(np.sum(labels == Label.REJECTED))
        return out


def fingerprints(classes: ClassAverages) -> list[str]:
    """Hex SHA-256 of each class image's float32 bytes and shape (the identity used for
    de-duplication and for the validation split)."""
    out = []
    for image in classes.images:
        digest = hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes())
        digest.update(str(image.shape).encode())
        out.append(digest.hexdigest())
    return out


def _unit(fingerprint: str, seed: int, salt: str) -> float:
    """A deterministic number in [0, 1) from a class fingerprint."""
    digest = hashlib.sha256(f"{salt}:{seed}:{fingerprint}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_validation(
    classes: ClassAverages, fraction: float, seed: int
) -> tuple[ClassAverages, ClassAverages]:
    """Split labelled ``classes`` into (train, validation), stratified per label.

    Within each label, the ``round(fraction * n)`` classes (at least 1 when ``n >= 2``)
    with the lowest hash of (seed, image) go to validation.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    keys = np.array([_unit(f, seed, "val") for f in fingerprints(classes)])
    val = np.zeros(len(classes), dtype=bool)
    for label in (Label.SELECTED, Label.REJECTED):
        idx = np.flatnonzero(classes.labels == label)
        if len(idx) < 2:
            continue
        k = max(1, round(fraction * len(idx)))
        val[idx[np.argsort(keys[idx], kind="stable")[:k]]] = True
    return classes.subset(~val), classes.subset(val)


def _find(finder: Finder | None) -> Finder:
    if finder is not None:
        return finder
    default: Finder = find_labelled_sets
    return default


def _job_name(classes: ClassAverages) -> str:
    prov = classes.provenance
    return prov.job or (prov.sources[0] if prov.sources else "?")


def _collect(
    config: FacilityConfig, finder: Finder
) -> list[tuple[str, Path, ClassAverages]]:
    """Every labelled set under the configured roots as (kind, root, classes)."""
    found: list[tuple[str, Path, ClassAverages]] = []
    for kind, root in config.data.all():
        try:
            sets = finder(root)
        except InputError:
            raise
        except (OSError, ValueError) as err:
            raise InputError(root, f"cannot harvest {kind} data ({err})") from err
        log.info("%s root %s: %d labelled set(s)", kind, root, len(sets))
        found.extend((kind, root, s) for s in sets)
    return found


def harvest(config: FacilityConfig, finder: Finder | None = None) -> Harvest:
    """Find, de-duplicate, cap and split the facility's labelled classes.

    Parameters
    ----------
    config:
        The facility configuration (data roots, caps, validation split).
    finder:
        Replaces :func:`~cryodiscovery.core.io.history.find_labelled_sets` (tests).
    """
    found = _collect(config, _find(finder))
    first_label: dict[str, int] = {}
    conflicted: set[str] = set()
    kept: list[tuple[str, Path, ClassAverages, list[str], int, int]] = []
    for kind, root, classes in found:
        known = classes.labels != Label.UNKNOWN
        labelled = classes.subset(known)
        prints = fingerprints(labelled)
        fresh = np.ones(len(labelled), dtype=bool)
        for i, (fp, label) in enumerate(zip(prints, labelled.labels, strict=True)):
            if fp in first_label:
                fresh[i] = False
                if first_label[fp] != int(label):
                    conflicted.add(fp)
            else:
                first_label[fp] = int(label)
        n_dup = int((~fresh).sum())
        subset = labelled.subset(fresh)
        kept.append(
            (
                kind,
                root,
                subset,
                [p for p, f in zip(prints, fresh, strict=True) if f],
                int((~known).sum()),
                n_dup,
            )
        )
    return _finish(config, kept, conflicted)


def _finish(
    config: FacilityConfig,
    kept: Sequence[tuple[str, Path, ClassAverages, list[str], int, int]],
    conflicted: set[str],
) -> Harvest:
    """Drop conflicts, apply the class cap, split, summarise."""
    all_prints = [
        fp for *_, prints, _u, _d in kept for fp in prints if fp not in conflicted
    ]
    cap_keys = sorted(_unit(fp, config.validation_seed, "cap") for fp in all_prints)
    limit = (
        cap_keys[config.caps.max_classes - 1]
        if len(cap_keys) > config.caps.max_classes
        else 1.0
    )
    train, val, sources = [], [], []
    n_capped = 0
    for kind, root, classes, prints, n_unlabelled, n_dup in kept:
        keep: npt.NDArray[np.bool_] = np.array(
            [
                fp not in conflicted
                and _unit(fp, config.validation_seed, "cap") <= limit
                for fp in prints
            ],
            dtype=bool,
        )
        n_capped += int(sum(fp not in conflicted for fp in prints)) - int(keep.sum())
        subset = classes.subset(keep)
        sources.append(
            SourceSummary(
                kind=kind,
                root=root,
                job=_job_name(classes),
                n_selected=int(np.sum(subset.labels == Label.SELECTED)),
                n_rejected=int(np.sum(subset.labels == Label.REJECTED)),
                n_unlabelled=n_unlabelled,
                n_duplicates=n_dup,
            )
        )
        if len(subset) == 0:
            continue
        tr, va = split_validation(
            subset, config.validation_fraction, config.validation_seed
        )
        train.extend([tr] if len(tr) else [])
        val.extend([va] if len(va) else [])
    result = Harvest(
        train=tuple(train),
        validation=tuple(val),
        sources=tuple(sources),
        n_duplicates=sum(s.n_duplicates for s in sources),
        n_conflicts=len(conflicted),
        n_capped=n_capped,
    )
    log.info(
        "harvested %d training and %d validation classes from %d set(s) "
        "(%d duplicates, %d conflicting, %d over the cap)",
        result.n_train,
        result.n_validation,
        len(sources),
        result.n_duplicates,
        result.n_conflicts,
        n_capped,
    )
    return result
