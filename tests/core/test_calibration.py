"""Threshold calibration for a target FNR and the per-job adaptive threshold."""

from __future__ import annotations

import numpy as np
import pytest
from cryodiscovery.core.model.calibration import (
    adaptive_threshold,
    fit_two_gaussians,
    robust_threshold_for_fnr,
    sigmoid,
    threshold_for_fnr,
)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.03, 0.1, 0.25])
def test_threshold_hits_the_requested_fnr_on_its_data(target: float) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    s = sigmoid(rng.normal(0, 1, 1000) + 2.5 * (2 * y - 1))
    t = threshold_for_fnr(y, s, target)
    good = np.sort(s[y == 1])
    fnr = np.mean(good < t)
    assert fnr <= target
    # The highest such threshold: the next good score up would lose too many.
    above = good[good > t]
    if above.size:
        assert np.mean(good < above[0]) > target


def test_threshold_checks_inputs() -> None:
    with pytest.raises(ValueError, match="no good"):
        threshold_for_fnr([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError):
        threshold_for_fnr([0, 1], [0.1, 0.2], 1.0)


def _job(
    n_good: int, n_junk: int, good_logit: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = np.concatenate(
        [rng.normal(good_logit, 0.8, n_good), rng.normal(-6, 1.0, n_junk)]
    )
    return np.concatenate([np.ones(n_good), np.zeros(n_junk)]), sigmoid(z)


def test_adaptive_threshold_rescues_good_classes_under_a_score_shift() -> None:
    # Good classes of a "real" job score far below the generated ones (logit -1.5,
    # p ~ 0.18) while a threshold of 0.6 was calibrated on generated data.
    y, s = _job(40, 60, good_logit=-1.5)
    stored = 0.6
    assert np.mean(s[y == 1] >= stored) < 0.1
    res = adaptive_threshold(s, stored, target_fnr=0.03)
    assert res.adapted
    assert np.mean(s[y == 1] >= res.threshold) >= 0.9
    assert np.mean(s[y == 0] >= res.threshold) <= 0.05


def test_adaptive_threshold_never_rejects_more_than_the_stored_one() -> None:
    _y, s = _job(40, 60, good_logit=6.0)
    res = adaptive_threshold(s, 0.2)
    assert res.threshold <= 0.2


@pytest.mark.parametrize(
    ("scores", "why"),
    [
        (sigmoid(np.random.default_rng(0).normal(0, 1, 100)), "bimodal"),
        (sigmoid(np.r_[np.full(98, -5.0), 3.0, 3.1]), "only"),
        (np.array([0.1, 0.9]), "classes"),
    ],
)
def test_adaptive_threshold_falls_back_without_two_clear_modes(
    scores: np.ndarray, why: str
) -> None:
    res = adaptive_threshold(scores, 0.42)
    assert not res.adapted and res.threshold == 0.42 and why in res.reason


def test_mixture_recovers_two_modes() -> None:
    rng = np.random.default_rng(3)
    z = np.r_[rng.normal(-4, 1, 300), rng.normal(2, 0.5, 200)]
    w, mu, sd = fit_two_gaussians(z)
    np.testing.assert_allclose(mu, [-4, 2], atol=0.15)
    np.testing.assert_allclose(sd, [1, 0.5], atol=0.1)
    np.testing.assert_allclose(w, [0.6, 0.4], atol=0.03)


def test_robust_threshold_protects_jobs_that_score_lower() -> None:
    # 20 jobs whose good classes sit at different score levels (job-to-job shift).
    rng = np.random.default_rng(4)
    y, s, g = [], [], []
    for job in range(20):
        shift = rng.normal(0, 1.0)
        labels = rng.integers(0, 2, 40)
        z = rng.normal(0, 1, 40) + (3.0 + shift) * (2 * labels - 1)
        y.append(labels)
        s.append(sigmoid(z))
        g.append(np.full(40, job))
    y, s, g = np.concatenate(y), np.concatenate(s), np.concatenate(g)
    plain = threshold_for_fnr(y, s, 0.03)
    robust = robust_threshold_for_fnr(y, s, g, 0.03)
    assert robust <= plain
    assert np.mean(s[y == 1] < robust) <= 0.03

    def worst_job_fnr(t: float) -> float:
        return max(np.mean(s[(g == j) & (y == 1)] < t) for j in range(20))

    assert worst_job_fnr(robust) <= worst_job_fnr(plain)
    assert robust_threshold_for_fnr(y, s, None, 0.03) == plain
    assert robust_threshold_for_fnr(y, s, g % 3, 0.03) == plain  # < 5 jobs: plain
    with pytest.raises(ValueError):
        robust_threshold_for_fnr(y, s, g[:10], 0.03)


def test_recalibrated_replaces_every_calibration_field_together() -> None:
    from cryodiscovery.core.errors import InputError
    from cryodiscovery.core.model.calibration import calibrate
    from model_fixtures import tiny_scorer

    old = tiny_scorer()  # 200 validation classes of 10 jobs
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s, s_image = rng.random(50), rng.random(50) * 0.5
    new = old.recalibrated(y, s, s_image, None, 0.05)
    assert new.members is old.members and new.target_fnr == 0.05
    assert new.threshold == threshold_for_fnr(y, s, 0.05)
    assert new.image_only_threshold == threshold_for_fnr(y, s_image, 0.05)
    assert new.validation_groups is None
    assert len(new.validation_scores_image_only) == len(new.validation_labels) == 50
    assert new.threshold_for_fnr(0.05, "image-only") == new.image_only_threshold
    assert "50 validation classes" in new.info["calibration"]
    with pytest.raises(ValueError, match="differ in length"):
        calibrate(y, s, s_image[:-1], None, 0.05)
    # a model half-replaced by an older federation: one line, not a crash
    old.validation_labels, old.validation_scores = y, s
    with pytest.raises(InputError, match="cannot be recalibrated") as info:
        old.threshold_for_fnr(0.05)
    assert "\n" not in str(info.value)


def test_image_only_threshold_has_its_own_target_and_survives_saving() -> None:
    from cryodiscovery.core.model.calibration import calibrate
    from cryodiscovery.core.model.scorer import ClassScorer
    from model_fixtures import tiny_scorer

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    s, s_image = rng.random(80), rng.random(80) * 0.5
    cal = calibrate(y, s, s_image, None, 0.05, image_only_target_fnr=0.2)
    assert cal.threshold == threshold_for_fnr(y, s, 0.05)
    assert cal.image_only_threshold == threshold_for_fnr(y, s_image, 0.2)
    assert cal.image_only_target_fnr == 0.2
    assert "image-only 20.0%" in cal.description
    # without image-only scores the image+metadata scores give both rates
    alone = calibrate(y, s, None, None, 0.05, image_only_target_fnr=0.2)
    assert alone.image_only_threshold == threshold_for_fnr(y, s, 0.2)
    with pytest.raises(ValueError, match="target false-negative rate"):
        calibrate(y, s, s_image, None, 0.05, image_only_target_fnr=1.5)

    new = tiny_scorer().recalibrated(y, s, s_image, None, 0.05, 0.2)
    assert new.image_only_target_fnr == 0.2
    again = ClassScorer.from_payload(new.payload())
    assert again.image_only_target_fnr == 0.2
    assert again.image_only_threshold == new.image_only_threshold
    # recalibrating with the model's own image-only rate keeps it (the federation does)
    kept = again.recalibrated(y, s, s_image, None, 0.03, again.image_only_target_fnr)
    assert kept.image_only_threshold == threshold_for_fnr(y, s_image, 0.2)
    assert kept.threshold == threshold_for_fnr(y, s, 0.03)
    # an older model without the field: one rate for both modes
    plain = tiny_scorer().recalibrated(y, s, s_image, None, 0.05)
    assert plain.image_only_target_fnr is None
    assert plain.image_only_threshold == threshold_for_fnr(y, s_image, 0.05)
