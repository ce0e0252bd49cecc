"""select_classes: threshold precedence, particle-count rule, modes, abort, bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError, NothingSelected
from cryodiscovery.core.model.calibration import sigmoid
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.selection import (
    SelectionOptions,
    require_selection,
    select_classes,
)
from model_fixtures import make_toy_classes, tiny_scorer


class FixedScorer(ClassScorer):
    """A real scorer whose predictions are replaced by given scores."""

    def __init__(self, scores: npt.NDArray[np.float64], threshold: float = 0.5) -> None:
        base = tiny_scorer()
        super().__init__(
            base.members,
            base.net_config,
            base.preprocess,
            base.rule,
            threshold,
            validation_labels=base.validation_labels,
            validation_scores=base.validation_scores,
            name="fixed",
        )
        self.fixed = scores
        self.batches = 0

    def predict(self, classes, batch_size=256, on_batch=None, device=None):  # type: ignore[no-untyped-def]
        for _ in range(0, len(classes), batch_size):
            if on_batch is not None:
                on_batch()
            self.batches += 1
        return self.fixed[: len(classes)]


def _bimodal(n_good: int, n_junk: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return sigmoid(np.r_[rng.normal(-1.5, 0.6, n_good), rng.normal(-7, 1, n_junk)])


def test_threshold_precedence() -> None:
    classes = make_toy_classes(40, seed=2)
    scores = _bimodal(16, 24)
    scorer = FixedScorer(scores, threshold=0.6)
    s = select_classes(classes, SelectionOptions(adaptive=False), scorer)
    assert (s.threshold, s.threshold_source) == (0.6, "model")
    s = select_classes(classes, SelectionOptions(), scorer)  # adaptive by default
    assert s.threshold_source == "adaptive" and s.threshold < 0.6
    assert s.selected[:16].mean() >= 0.9 and not s.selected[16:].any()
    s = select_classes(classes, SelectionOptions(adaptive=True, target_fnr=0.1), scorer)
    assert s.threshold_source == "target-fnr"
    assert s.threshold == scorer.threshold_for_fnr(0.1)
    s = select_classes(classes, SelectionOptions(threshold=0.25), scorer)
    assert (s.threshold, s.threshold_source) == (0.25, "user")
    np.testing.assert_array_equal(s.selected, scores >= 0.25)


def test_min_particles_and_reasons() -> None:
    base = make_toy_classes(6, seed=3)
    counts = np.array([500.0, 10.0, 500.0, 10.0, np.nan, np.nan])
    meta = {"particle_count": counts}
    classes = ClassAverages.create(base.images, metadata=meta)
    scores = np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.1])
    s = select_classes(
        classes, SelectionOptions(min_particles=100), FixedScorer(scores)
    )
    assert s.reasons == (
        "",
        "min_particles",
        "score",
        "score,min_particles",
        "",
        "score",
    )
    np.testing.assert_array_equal(s.selected, [True, False, False, False, True, False])
    np.testing.assert_array_equal(s.class_numbers, np.arange(1, 7))


def test_abort_check_is_called_between_batches_and_can_abort(tmp_path: Path) -> None:
    classes = make_toy_classes(5, seed=4)
    path = tmp_path / "m.pt"
    save_scorer(tiny_scorer(), path)
    calls: list[int] = []
    s = select_classes(
        classes, SelectionOptions(model_path=path), abort_check=lambda: calls.append(1)
    )
    assert calls and s.model_name == "tiny-test-model" and len(s.model_sha256) == 64
    assert s.scores.dtype == np.float64 and ((s.scores >= 0) & (s.scores <= 1)).all()

    def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        select_classes(classes, SelectionOptions(model_path=path), abort_check=stop)


def test_modes_use_their_own_stored_threshold() -> None:
    classes = make_toy_classes(4, seed=5)
    scorer = tiny_scorer()
    s = select_classes(classes, scorer=scorer)
    assert (s.mode, s.threshold) == ("image+metadata", scorer.threshold)
    bare = ClassAverages.create(classes.images)
    s = select_classes(bare, scorer=scorer)
    assert (s.mode, s.threshold) == ("image-only", scorer.image_only_threshold)
    s = select_classes(bare, SelectionOptions(target_fnr=0.1), scorer=scorer)
    assert s.threshold == scorer.threshold_for_fnr(0.1, "image-only")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "threshold must be"),
        ({"target_fnr": -0.1}, "target false-negative rate must be"),
        ({"min_particles": -1}, "minimum particle count"),
        ({"threshold": 0.3, "target_fnr": 0.1}, "give one of them"),
    ],
)
def test_bad_options_are_refused_when_made(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        SelectionOptions(**options)
    assert "\n" not in str(info.value)


def test_missing_model_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        select_classes(
            make_toy_classes(2, seed=0), SelectionOptions(model_path=tmp_path / "x.pt")
        )


def test_an_empty_class_is_never_selected() -> None:
    base = make_toy_classes(4, seed=6)
    counts = np.array([0.0, 1.0, np.nan, 300.0])
    classes = ClassAverages.create(base.images, metadata={"particle_count": counts})
    s = select_classes(classes, SelectionOptions(), FixedScorer(np.full(4, 0.99)))
    np.testing.assert_array_equal(s.selected, [False, True, True, True])
    assert s.reasons == ("min_particles", "", "", "")


def test_nothing_kept_warns_and_require_selection_names_the_best_score(
    caplog: pytest.LogCaptureFixture,
) -> None:
    classes = make_toy_classes(12, seed=7)
    scores = np.linspace(0.05, 0.3, 12)
    with caplog.at_level("WARNING"):
        s = select_classes(
            classes, SelectionOptions(threshold=0.5), FixedScorer(scores)
        )
    assert s.n_selected == 0
    line = "no class kept: best score 0.300 (class 12), threshold 0.500 (user)"
    assert line in s.warnings and line in caplog.text
    with pytest.raises(NothingSelected, match="nothing to pass on") as info:
        require_selection(s)
    assert str(info.value).startswith(line) and "\n" not in str(info.value)
    kept = select_classes(classes, SelectionOptions(threshold=0.2), FixedScorer(scores))
    require_selection(kept)  # something kept: no error, no warning
    assert not kept.warnings


def test_adaptive_fallback_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    classes = make_toy_classes(6, seed=8)  # too few classes to adapt
    scorer = FixedScorer(np.full(6, 0.9), threshold=0.6)
    with caplog.at_level("WARNING"):
        s = select_classes(classes, SelectionOptions(), scorer)
    assert s.threshold_source == "model"
    assert any("adaptive threshold not used" in w for w in s.warnings)
    assert "adaptive threshold not used (only 6 classes)" in caplog.text
    assert "0.600 applies" in caplog.text
