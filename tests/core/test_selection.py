"""select_classes: threshold precedence, particle-count rule, modes, abort, bad options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.calibration import sigmoid
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.selection import SelectionOptions, select_classes
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

    def predict(self, classes, batch_size=256, on_batch=None):  # type: ignore[no-untyped-def]
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
    opts = SelectionOptions(adaptive=True, target_fnr=0.1, threshold=0.25)
    s = select_classes(classes, opts, scorer)
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
        (SelectionOptions(threshold=1.5), "--threshold"),
        (SelectionOptions(target_fnr=-0.1), "--target-fnr"),
        (SelectionOptions(min_particles=-1), "--min-particles"),
    ],
)
def test_bad_options_are_input_errors(options: SelectionOptions, message: str) -> None:
    with pytest.raises(InputError, match=message):
        select_classes(make_toy_classes(2, seed=0), options, tiny_scorer())


def test_missing_model_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        select_classes(
            make_toy_classes(2, seed=0), SelectionOptions(model_path=tmp_path / "x.pt")
        )
