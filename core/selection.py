"""Class selection: score every class, choose the threshold, apply the particle-count rule.

One set of options (:class:`SelectionOptions`) serves every tool (``score``, ``evaluate``,
the RELION and cryoSPARC jobs); it refuses bad values and combinations when it is made, so
every tool refuses them with the same one line. The threshold:

1. ``threshold`` — the user's own value (``--threshold``); or
2. ``target_fnr`` — recalibrated on the validation scores stored in the model (giving
   both a threshold and a target FNR is refused); else
3. ``adaptive`` (the default) — from this job's own score distribution
   (:func:`~cryodiscovery.core.model.calibration.adaptive_threshold`), falling back, with
   a warning, to the stored threshold when the job's scores do not show two clear modes;
4. the threshold stored with the model.

Adaptive is the default because the model is trained on generated class averages and
real good classes score lower than generated ones: a threshold calibrated on generated
data alone can reject most real good classes. The adaptive threshold only ever lowers the
stored one (``benchmarks/bench_accuracy.py`` on 30 unseen generated runs, shipped model
of 2026-12-02: it kept 9.3% of junk instead of 8.5% and lost 1.7% of good classes instead
of 2.1%; with scores shifted down by 2 logits it lost 8.5% of good classes where the
stored threshold lost 25%).

A class whose particle count is known and is 0 is never selected, whatever
``min_particles`` says. When no class is kept, :func:`select_classes` warns and
:func:`require_selection` (called by every tool that passes a selection on) ends the run
with :class:`~cryodiscovery.core.errors.NothingSelected`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError, NothingSelected
from cryodiscovery.core.model.calibration import adaptive_threshold

if TYPE_CHECKING:  # the model (torch) is loaded only when classes are scored
    from cryodiscovery.core.model.scorer import ClassScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectionOptions:
    """What the user asked for.

    Parameters
    ----------
    model_path:
        Model file; ``None`` for the shipped default model.
    threshold:
        Keep classes with ``score >= threshold`` (0-1).
    target_fnr:
        Instead of a threshold: recalibrate it for this false-negative rate (0-1) on the
        model's stored validation scores.
    adaptive:
        Adapt the threshold to this job's score distribution (default); ``False``
        uses the threshold stored with the model.
    min_particles:
        Reject classes with fewer particles than this (when the count is known); a class
        with no particles is rejected even at 0.
    device:
        Where the networks run: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.

    Raises
    ------
    InputError
        A value out of range, both ``threshold`` and ``target_fnr``, or an unknown or
        unavailable device.
    """

    model_path: Path | None = None
    threshold: float | None = None
    target_fnr: float | None = None
    adaptive: bool = True
    min_particles: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _check_options(self)

    def record(self) -> dict[str, object]:
        """The options as plain values, for a run record."""
        return {
            "model_path": None if self.model_path is None else str(self.model_path),
            "threshold": self.threshold,
            "target_fnr": self.target_fnr,
            "adaptive": self.adaptive,
            "min_particles": self.min_particles,
            "device": self.device,
        }


@dataclass(frozen=True)
class Selection:
    """Scores and decisions for one set of classes (arrays in the set's order)."""

    class_numbers: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    selected: npt.NDArray[np.bool_]
    threshold: float
    threshold_source: str
    mode: str
    model_sha256: str
    model_name: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def n_selected(self) -> int:
        """Number of classes kept."""
        return int(self.selected.sum())


def _check_options(options: SelectionOptions) -> None:
    if options.threshold is not None and not 0.0 <= options.threshold <= 1.0:
        raise InputError(None, f"threshold must be in [0, 1], got {options.threshold}")
    if options.target_fnr is not None and not 0.0 <= options.target_fnr < 1.0:
        raise InputError(
            None,
            f"target false-negative rate must be in [0, 1), got {options.target_fnr}",
        )
    if options.threshold is not None and options.target_fnr is not None:
        raise InputError(
            None,
            "both a threshold and a target false-negative rate given: give one of them",
        )
    if options.min_particles < 0:
        raise InputError(
            None, f"minimum particle count must be >= 0, got {options.min_particles}"
        )
    if options.device != "auto":  # "auto" never fails; torch is imported only to check
        from cryodiscovery.core.model.device import resolve_device

        resolve_device(options.device)


def choose_threshold(
    scores: npt.NDArray[np.float64],
    options: SelectionOptions,
    scorer: ClassScorer,
    mode: str,
    warnings: list[str] | None = None,
) -> tuple[float, str]:
    """``(threshold, source)`` by the precedence in the module docstring; stored and
    recalibrated thresholds are those of the scoring ``mode``. A fallback of the adaptive
    threshold is logged as a warning and appended to ``warnings``."""
    if options.threshold is not None:
        return float(options.threshold), "user"
    if options.target_fnr is not None:
        return scorer.threshold_for_fnr(options.target_fnr, mode), "target-fnr"
    stored = scorer.stored_threshold(mode)
    if options.adaptive:
        # The share of this job's own upper ("good") score mode to give up: the model's
        # target_fnr in both modes. The image-only target differs only because generated
        # validation scores run lower than real ones without metadata, a shift that does
        # not exist within one job's scores (and the stored threshold caps the result).
        result = adaptive_threshold(scores, stored, scorer.target_fnr)
        if result.adapted:
            log.info("adaptive threshold %.4f (%s)", result.threshold, result.reason)
            return result.threshold, "adaptive"
        text = (
            f"adaptive threshold not used ({result.reason}): the model's stored "
            f"threshold {stored:.3f} applies"
        )
        log.warning("%s", text)
        if warnings is not None:
            warnings.append(text)
    return stored, "model"


def select_classes(
    classes: ClassAverages,
    options: SelectionOptions = SelectionOptions(),
    scorer: ClassScorer | None = None,
    abort_check: Callable[[], None] | None = None,
) -> Selection:
    """Score ``classes`` and decide which to keep.

    Parameters
    ----------
    classes:
        The class averages (with metadata when available).
    options:
        Threshold choice and particle-count rule.
    scorer:
        A loaded model; default: load ``options.model_path`` (or the shipped model).
    abort_check:
        Called between scoring batches; raise from it to abort.

    Returns
    -------
    A :class:`Selection`; ``reasons[i]`` is ``""`` for a kept class, else
    ``"score"``, ``"min_particles"`` or ``"score,min_particles"`` (a class with no
    particles is rejected for ``"min_particles"`` even when ``options.min_particles``
    is 0). ``warnings`` holds the adaptive threshold's fallback and "no class kept".
    """
    from cryodiscovery.core.model.checkpoint import load_scorer

    if len(classes) == 0:
        raise InputError(None, "no class averages to score")
    model = scorer if scorer is not None else load_scorer(options.model_path)
    scores = model.predict(classes, on_batch=abort_check, device=options.device)
    mode = model.mode_for(classes)
    warnings: list[str] = []
    threshold, source = choose_threshold(scores, options, model, mode, warnings)
    low_score = scores < threshold
    counts = classes.field("particle_count")
    known = np.isfinite(counts)
    if options.min_particles > 0 and not known.all():
        log.warning(
            "particle counts unknown for %d classes: --min-particles not applied to them",
            int((~known).sum()),
        )
    # An empty class has nothing to pass on, whatever the minimum asked for.
    minimum = max(options.min_particles, 1)
    too_few = known & (np.nan_to_num(counts, nan=0.0) < minimum)
    reasons = tuple(
        ",".join(r for r, hit in (("score", s), ("min_particles", f)) if hit)
        for s, f in zip(low_score.tolist(), too_few.tolist(), strict=True)
    )
    selected = ~(low_score | too_few)
    log.info(
        "%d of %d classes selected (threshold %.4f from %s, %s)",
        int(selected.sum()),
        len(classes),
        threshold,
        source,
        mode,
    )
    selection = Selection(
        class_numbers=np.asarray(classes.class_numbers, dtype=np.int64),
        scores=scores,
        selected=selected,
        threshold=threshold,
        threshold_source=source,
        mode=mode,
        model_sha256=model.sha256,
        model_name=model.name,
        reasons=reasons,
        warnings=tuple(warnings),
    )
    if selection.n_selected == 0:
        text = nothing_kept_line(selection)
        log.warning("%s", text)
        selection = replace(selection, warnings=(*warnings, text))
    return selection


def nothing_kept_line(selection: Selection) -> str:
    """Why ``selection`` kept no class, in one line: best score (and its class), the
    threshold and its source, and the classes only the particle-count rule rejected."""
    if len(selection.scores) == 0:
        return "no class kept: no classes"
    best = int(np.argmax(selection.scores))
    text = (
        f"no class kept: best score {float(selection.scores[best]):.3f} "
        f"(class {int(selection.class_numbers[best])}), threshold "
        f"{selection.threshold:.3f} ({selection.threshold_source})"
    )
    few = sum(r == "min_particles" for r in selection.reasons)
    if few:
        text += f"; {few} class(es) at or above it have too few particles"
    return text


def require_selection(selection: Selection) -> None:
    """Raise :class:`~cryodiscovery.core.errors.NothingSelected` when ``selection`` kept
    no class: the one behaviour of every tool that passes a selection on (README, "When
    nothing is kept")."""
    if selection.n_selected == 0:
        raise NothingSelected(
            None,
            f"{nothing_kept_line(selection)}: nothing to pass on; lower the threshold "
            "(or the minimum particle count) or check the input",
        )
