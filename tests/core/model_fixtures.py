"""Tiny, fast class-average sets for the model tests: obvious good classes (a textured,
centred multi-domain particle) and obvious junk (featureless blob, noise, stripes,
off-centre particle), with metadata that leans the same way."""

from __future__ import annotations

import numpy as np
import torch
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import N_META, PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer

JUNK_KINDS = ("blob", "noise", "stripes", "off_centre")


def _particle(
    rng: np.random.Generator, box: int, centre: tuple[float, float]
) -> np.ndarray:
    yy, xx = np.mgrid[:box, :box].astype(np.float64)
    img = np.zeros((box, box))
    size = box * rng.uniform(0.12, 0.2)
    for _ in range(rng.integers(4, 8)):
        cy = centre[0] + rng.normal(0, size * 0.8)
        cx = centre[1] + rng.normal(0, size * 0.8)
        sig = size * rng.uniform(0.25, 0.5)
        img += rng.uniform(0.6, 1.2) * np.exp(
            -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2)
        )
    # Fine internal texture: what distinguishes a sharp view from a featureless blob.
    texture = rng.normal(size=(box, box))
    spec = np.fft.fft2(texture)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(box), np.fft.fftfreq(box)))
    texture = np.fft.ifft2(spec * ((f > 0.08) & (f < 0.25))).real
    return img * (1 + 1.5 * texture / texture.std())


def _mask(box: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:box, :box]
    r = np.hypot(yy - (box - 1) / 2, xx - (box - 1) / 2)
    edge = 3.0
    t = np.clip((r - (radius - edge)) / edge, 0, 1)
    return 0.5 * (1 + np.cos(np.pi * t))


def make_toy_classes(
    n: int, seed: int, box: int = 64, metadata: bool = True, good_fraction: float = 0.5
) -> ClassAverages:
    """``n`` toy classes, about ``good_fraction`` good, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, box, box), dtype=np.float32)
    kinds: list[str] = []
    c = (box - 1) / 2
    yy, xx = np.mgrid[:box, :box].astype(np.float64)
    for i in range(n):
        good = rng.random() < good_fraction
        kind = "good" if good else str(rng.choice(JUNK_KINDS))
        if kind == "good":
            img = _particle(rng, box, (c, c))
        elif kind == "blob":
            sig = box * rng.uniform(0.1, 0.18)
            img = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * sig**2))
        elif kind == "noise":
            img = np.zeros((box, box))
        elif kind == "stripes":
            ang = rng.uniform(0, np.pi)
            img = np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * rng.uniform(0.8, 1.6))
        else:
            off = box * 0.3
            a = rng.uniform(0, 2 * np.pi)
            img = _particle(rng, box, (c + off * np.sin(a), c + off * np.cos(a)))
        img = img / (img.std() + 1e-9) if img.std() > 0 else img
        img = img + rng.normal(0, 0.3 if good else 1.0, size=(box, box))
        radius = box / 2 * rng.uniform(0.8, 0.95)
        images[i] = (img * _mask(box, radius) * rng.choice([-1.0, 1.0])).astype(
            np.float32
        )
        kinds.append(kind)
    good_mask = np.array([k == "good" for k in kinds])
    meta: dict[str, np.ndarray] | None = None
    if metadata:
        meta = {
            "particle_count": np.where(
                good_mask, rng.integers(200, 2000, n), rng.integers(20, 600, n)
            ).astype(float),
            "resolution_A": np.where(
                good_mask, rng.uniform(6, 14, n), rng.uniform(12, 40, n)
            ),
            "accuracy_rotation_deg": np.where(
                good_mask, rng.uniform(1, 4, n), rng.choice([5.0, 999.0], n)
            ),
        }
        meta["class_distribution"] = (
            meta["particle_count"] / meta["particle_count"].sum()
        )
    return ClassAverages.create(
        images,
        pixel_size=2.0,
        metadata=meta,
        labels=good_mask.astype(np.int8),
        kinds=kinds,
        provenance=Provenance("synthetic", job=f"toy-seed{seed}"),
    )


def tiny_net_config(meta: bool = True) -> NetConfig:
    """A network small enough to train in a second or two on one core."""
    return NetConfig(
        stem=8, widths=(8, 16, 16), meta_features=N_META if meta else 0, meta_hidden=8
    )


def tiny_scorer(
    rule: str = "boosted3", meta: bool = True, seed: int = 0
) -> ClassScorer:
    """An untrained but complete scorer (random weights), with validation scores."""
    torch.manual_seed(seed)
    cfg = tiny_net_config(meta)
    n_members = 3 if rule == "boosted3" else 1
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(0.3 * labels + rng.uniform(0, 0.7, 200), 0, 1)
    return ClassScorer(
        [ClassNet(cfg) for _ in range(n_members)],
        cfg,
        PreprocessConfig(),
        rule,
        0.5,
        validation_labels=labels,
        validation_scores=scores,
        image_only_threshold=0.4,
        validation_scores_image_only=scores * 0.8,
        validation_groups=np.arange(200) // 20,
        name="tiny-test-model",
        info={"training_data": "none (random weights)"},
    )
