"""Decision thresholds: one calibrated on validation data for a target false-negative rate,
and one adapted to a single job from that job's own score distribution.

Why the second: a network trained on generated class averages ranks real classes well but
scores real good classes lower than generated good ones, so a threshold calibrated on
generated data alone can reject most real good classes. A job usually holds two
populations of classes (good views and junk); a two-component Gaussian mixture on the
logit scores finds the job's own "good" mode, and the threshold is placed so that the
target fraction of that mode is lost. Safeguards fall back to the stored threshold when
the job does not show two clear modes, and the adaptive threshold never rejects more than
the stored one would (it only protects good classes from a scale shift).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

_EPS = 1e-6


def logit(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-6, 1 - 1e-6]``."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q), dtype=np.float64)


def sigmoid(z: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Inverse of :func:`logit`."""
    return np.asarray(
        0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64))), np.float64
    )


def _check_fnr(target_fnr: float) -> None:
    if not 0.0 <= target_fnr < 1.0:
        raise ValueError(
            f"target false-negative rate must be in [0, 1), got {target_fnr}"
        )


def threshold_for_fnr(
    labels: npt.ArrayLike, scores: npt.ArrayLike, target_fnr: float = 0.03
) -> float:
    """The highest threshold whose false-negative rate on these data is <= ``target_fnr``.

    A class is kept when ``score >= threshold``. With ``g`` the good classes' scores sorted
    ascending and ``k = floor(target_fnr * len(g))``, the threshold is ``g[k]``: exactly
    ``k`` good classes (fewer with ties) fall below it.

    Parameters
    ----------
    labels:
        ``(n,)`` 0/1 truth (1 = good) of validation classes.
    scores:
        ``(n,)`` scores of the same classes.
    target_fnr:
        Allowed fraction of good classes rejected, in ``[0, 1)``.
    """
    _check_fnr(target_fnr)
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(
            f"labels {y.shape} and scores {s.shape} must be equal 1-D shapes"
        )
    good = np.sort(s[y == 1])
    if good.size == 0:
        raise ValueError("no good (label 1) classes to calibrate a threshold on")
    k = math.floor(target_fnr * good.size + 1e-9)
    return float(good[min(k, good.size - 1)])


def robust_threshold_for_fnr(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    groups: npt.ArrayLike | None,
    target_fnr: float = 0.03,
    quantile: float = 0.1,
    n_boot: int = 200,
    seed: int = 0,
) -> float:
    """A threshold that keeps the false-negative rate at ``target_fnr`` across jobs.

    Jobs differ (molecule, SNR, conventions), so a threshold fitted to the pooled
    validation classes loses more than ``target_fnr`` of the good classes in many single
    jobs. The validation jobs (``groups``) are resampled with replacement ``n_boot`` times;
    the ``quantile`` (default the 10th percentile) of the per-resample thresholds of
    :func:`threshold_for_fnr` is returned: lower, hence safer, when jobs disagree. With
    fewer than 5 groups (or none) this is :func:`threshold_for_fnr`.
    """
    _check_fnr(target_fnr)
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    plain = threshold_for_fnr(y, s, target_fnr)
    if groups is None:
        return plain
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups {g.shape} and labels {y.shape} differ in shape")
    ids = np.unique(g)
    if ids.size < 5:
        return plain
    members = [np.nonzero(g == i)[0] for i in ids]
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, ids.size, ids.size)])
        if (y[idx] == 1).any():
            found.append(threshold_for_fnr(y[idx], s[idx], target_fnr))
    return float(np.quantile(found, quantile)) if found else plain


@dataclass(frozen=True)
class Calibration:
    """Thresholds of both scoring modes for one false-negative rate, and the validation
    data they were calibrated on (all arrays ``(n,)``, one entry per validation class).

    Made only by :func:`calibrate`, so that thresholds and data always belong together.
    """

    target_fnr: float
    threshold: float
    image_only_threshold: float
    image_only_target_fnr: float
    labels: npt.NDArray[np.int8]
    scores: npt.NDArray[np.float64]
    scores_image_only: npt.NDArray[np.float64] | None
    groups: npt.NDArray[np.int64] | None
    description: str

    def threshold_for(self, image_only: bool) -> float:
        """The threshold of image-only or image+metadata scoring."""
        return self.image_only_threshold if image_only else self.threshold


def calibrate(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    scores_image_only: npt.ArrayLike | None = None,
    groups: npt.ArrayLike | None = None,
    target_fnr: float = 0.03,
    image_only_target_fnr: float | None = None,
) -> Calibration:
    """The one calibration of a model: thresholds of both scoring modes for
    ``target_fnr`` (image-only: ``image_only_target_fnr``) on validation classes, robust
    across validation jobs (:func:`robust_threshold_for_fnr`), with the data they came
    from.

    Parameters
    ----------
    labels:
        ``(n,)`` 0/1 truth (1 = good).
    scores:
        ``(n,)`` image+metadata scores of the same classes.
    scores_image_only:
        ``(n,)`` image-only scores; None: the image-only threshold is ``scores``'.
    groups:
        ``(n,)`` validation job of each class; None: no job bootstrap.
    target_fnr:
        Allowed fraction of good classes rejected, in ``[0, 1)``.
    image_only_target_fnr:
        The same for image-only scoring; None: ``target_fnr``. Image-only scores of
        generated validation classes run lower than those of real classes, so the rule
        chosen on real sets (``benchmarks/bench_threshold.py``) may ask for a higher
        rate on generated validation data than the image+metadata rule.

    Raises
    ------
    ValueError
        Arrays of different lengths, no good class, or ``target_fnr`` out of range.
    """
    _check_fnr(target_fnr)
    image_fnr = target_fnr if image_only_target_fnr is None else image_only_target_fnr
    _check_fnr(image_fnr)
    y = np.asarray(labels).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64)
    s_image = (
        None
        if scores_image_only is None
        else np.asarray(scores_image_only, dtype=np.float64)
    )
    g = None if groups is None else np.asarray(groups).astype(np.int64)
    for what, a in (("scores", s), ("image-only scores", s_image), ("groups", g)):
        if a is not None and (a.ndim != 1 or a.shape != y.shape):
            raise ValueError(
                f"calibration data differ in length: {y.shape} labels, {a.shape} {what}"
            )
    threshold = robust_threshold_for_fnr(y, s, g, target_fnr)
    if s_image is not None:
        image_only = robust_threshold_for_fnr(y, s_image, g, image_fnr)
    elif image_fnr == target_fnr:
        image_only = threshold
    else:
        image_only = robust_threshold_for_fnr(y, s, g, image_fnr)
    jobs = 0 if g is None else int(np.unique(g).size)
    rates = (
        f"{target_fnr:.1%}"
        if image_fnr == target_fnr
        else f"{target_fnr:.1%} (image-only {image_fnr:.1%})"
    )
    description = (
        f"thresholds at {rates} FNR on {jobs} validation jobs: 10th "
        "percentile of job-bootstrap thresholds"
        if jobs >= 5
        else f"thresholds at {rates} FNR on {y.size} validation classes"
    )
    return Calibration(
        float(target_fnr),
        float(threshold),
        float(image_only),
        float(image_fnr),
        y,
        s,
        s_image,
        g,
        description,
    )


@dataclass(frozen=True)
class AdaptiveConfig:
    """Safeguards of the per-job adaptive threshold.

    Parameters
    ----------
    min_classes:
        Fewer classes than this: no adaptation.
    min_weight:
        Each mixture component must hold at least this fraction of the classes.
    min_separation:
        Ashman's D between the components (``sqrt(2)|mu1 - mu2| / sqrt(s1^2 + s2^2)``);
        below it the scores are not clearly bimodal.
    min_bic_gain:
        The two-component fit must beat one Gaussian by this much BIC (10: "very
        strong" evidence), so that a skewed single mode is not split in two.
    floor:
        Lowest threshold (probability) the adaptation may set.
    """

    min_classes: int = 10
    min_weight: float = 0.05
    min_separation: float = 2.0
    min_bic_gain: float = 10.0
    floor: float = 0.01


@dataclass(frozen=True)
class AdaptiveThreshold:
    """Result of :func:`adaptive_threshold`; ``threshold`` is a probability."""

    threshold: float
    adapted: bool
    reason: str
    good_mean: float = float("nan")
    good_std: float = float("nan")
    separation: float = float("nan")


def fit_two_gaussians(
    z: npt.ArrayLike, iterations: int = 200
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """EM fit of a two-component 1-D Gaussian mixture, started from an Otsu split.

    Returns
    -------
    ``(weights, means, stds)``, each ``(2,)``, sorted by mean (junk first).
    """
    x = np.asarray(z, dtype=np.float64)
    split = otsu_split(x)
    lo, hi = x[x < split], x[x >= split]
    if lo.size == 0 or hi.size == 0:
        lo, hi = np.sort(x)[: x.size // 2], np.sort(x)[x.size // 2 :]
    floor = max(0.05 * float(np.std(x)), 1e-3)
    w = np.array([lo.size, hi.size], dtype=np.float64) / x.size
    mu = np.array([lo.mean(), hi.mean()])
    sd = np.maximum(np.array([lo.std(), hi.std()]), floor)
    for _ in range(iterations):
        dens = (
            w
            / (sd * math.sqrt(2 * math.pi))
            * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2)
        )
        resp = dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        nk = np.maximum(resp.sum(axis=0), 1e-9)
        new_mu = (resp * x[:, None]).sum(axis=0) / nk
        new_sd = np.sqrt((resp * (x[:, None] - new_mu) ** 2).sum(axis=0) / nk)
        new_sd = np.maximum(new_sd, floor)
        converged = np.allclose(new_mu, mu, atol=1e-6) and np.allclose(
            new_sd, sd, atol=1e-6
        )
        w, mu, sd = nk / x.size, new_mu, new_sd
        if converged:
            break
    order = np.argsort(mu)
    return w[order], mu[order], sd[order]


def otsu_split(z: npt.ArrayLike, bins: int = 64) -> float:
    """Otsu's threshold: the split maximising the between-class variance of ``z``."""
    x = np.asarray(z, dtype=np.float64)
    hist, edges = np.histogram(x, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def adaptive_threshold(
    scores: npt.ArrayLike,
    stored_threshold: float,
    target_fnr: float = 0.03,
    config: AdaptiveConfig | None = None,
) -> AdaptiveThreshold:
    """A threshold for one job from the distribution of its own scores.

    Fits two Gaussians to the logit scores; the upper one models the job's good classes.
    The threshold is ``mu_good + sd_good * Phi^-1(target_fnr)`` (losing ``target_fnr`` of
    that mode), capped at the mixture's decision boundary and at ``stored_threshold`` and
    floored at ``config.floor``. Without two clear modes, the stored threshold is returned
    with ``adapted=False`` and the reason.

    Parameters
    ----------
    scores:
        ``(n,)`` probabilities of "good" of one job's classes.
    stored_threshold:
        The model's calibrated threshold (probability), used as fallback and cap.
    target_fnr:
        Fraction of the good mode allowed below the threshold.
    """
    _check_fnr(target_fnr)
    cfg = config or AdaptiveConfig()
    z = logit(scores)
    if z.size < cfg.min_classes:
        return AdaptiveThreshold(stored_threshold, False, f"only {z.size} classes")
    w, mu, sd = fit_two_gaussians(z)
    sep = float(math.sqrt(2.0) * abs(mu[1] - mu[0]) / math.hypot(sd[0], sd[1]))
    if w.min() < cfg.min_weight:
        why = f"one score mode holds only {w.min():.0%} of classes"
        return AdaptiveThreshold(stored_threshold, False, why, separation=sep)
    gain = _bic_gain(z, w, mu, sd)
    if sep < cfg.min_separation or gain < cfg.min_bic_gain:
        why = f"scores not bimodal (separation {sep:.2f}, BIC gain {gain:.1f})"
        return AdaptiveThreshold(stored_threshold, False, why, separation=sep)
    # the normal quantile (stdlib: scipy.special costs 0.15 s of import per command)
    t_fnr = float(mu[1] + sd[1] * NormalDist().inv_cdf(max(target_fnr, 1e-4)))
    t_z = min(t_fnr, _boundary(w, mu, sd))
    t = float(sigmoid(t_z))
    t = min(max(t, cfg.floor), stored_threshold)
    return AdaptiveThreshold(
        t, True, "two score modes", float(sigmoid(mu[1])), float(sd[1]), sep
    )


def _bic_gain(
    z: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
    mu: npt.NDArray[np.float64],
    sd: npt.NDArray[np.float64],
) -> float:
    """BIC of one Gaussian minus BIC of the two-component mixture (positive: two fit
    better, after the penalty for three extra parameters)."""
    n = z.size
    sd1 = max(float(np.std(z)), 1e-3)
    ll1 = float(np.sum(-0.5 * ((z - z.mean()) / sd1) ** 2 - np.log(sd1)))
    dens = w / sd * np.exp(-0.5 * ((z[:, None] - mu) / sd) ** 2)
    ll2 = float(np.sum(np.log(np.maximum(dens.sum(axis=1), 1e-300))))
    return (2 * ll2 - 5 * math.log(n)) - (2 * ll1 - 2 * math.log(n))


def _boundary(
    w: npt.NDArray[np.float64], mu: npt.NDArray[np.float64], sd: npt.NDArray[np.float64]
) -> float:
    """Logit where the two weighted components are equally likely (between the means)."""
    grid = np.linspace(mu[0], mu[1], 512)
    dens = w / sd * np.exp(-0.5 * ((grid[:, None] - mu) / sd) ** 2)
    above = np.nonzero(dens[:, 1] >= dens[:, 0])[0]
    return float(grid[above[0]]) if above.size else float(mu[1])
