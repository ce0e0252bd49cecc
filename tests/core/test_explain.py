"""Saliency: orientation and sign of the maps, the ensemble rule's weighting of members,
and that a trained net's gradient-x-input map points at the artefact that makes a junk
class junk."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.ensemble import combine_logits
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import (
    PreprocessConfig,
    input_windows,
    prepare_inputs,
)
from cryodiscovery.core.report import explain
from torch import nn

S = 16  # internal size of the toy scorer


class LinearCamNet(nn.Module):
    """logit = weight * mean over a region of relu(cam_layer(x)); cam_layer is identity."""

    def __init__(
        self, weight: float = 1.0, region: tuple[slice, slice] | None = None
    ) -> None:
        super().__init__()
        self.cam_layer = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.cam_layer.weight)
        self.weight = weight
        self.region = region or (slice(None), slice(None))

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.cam_layer(images))[:, 0]
        return self.weight * a[:, self.region[0], self.region[1]].mean(dim=(1, 2))


class ToyScorer:
    """The scorer protocol: images pooled to S px, a list of members, an ensemble rule."""

    def __init__(self, members: Sequence[nn.Module], rule: str = "single") -> None:
        self._members = list(members)
        self.rule = rule

    @property
    def members(self) -> list[nn.Module]:
        return self._members

    def prepare(self, classes: ClassAverages) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(classes.images)[:, None]
        with torch.inference_mode():  # as a scorer may do; explain must cope
            return F.adaptive_avg_pool2d(x, S), torch.zeros((len(classes), 0))

    def input_windows(self, classes: ClassAverages) -> np.ndarray:
        return np.full(len(classes), classes.box_size, dtype=np.int64)

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        return combine_logits(member_logits, self.rule)


def _spot(box: int = 48, corner: str = "top-left") -> ClassAverages:
    img = np.zeros((box, box), np.float32)
    q = box // 4
    if corner == "top-left":
        img[q // 2 : q // 2 + q, q // 2 : q // 2 + q] = 1.0
    else:
        img[-q - q // 2 : -q // 2, -q - q // 2 : -q // 2] = 1.0
    return ClassAverages.create(img[None])


@pytest.mark.parametrize("method", explain.METHODS)
def test_map_has_box_size_and_points_at_the_evidence(method: str) -> None:
    classes = _spot(48, "top-left")
    scorer = ToyScorer([LinearCamNet()])
    maps = explain.saliency_maps(scorer, classes, [True], method=method)
    assert maps.shape == (1, 48, 48) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert y < 24 and x < 24  # top-left, not transposed or flipped
    assert maps[0, 36:, 36:].max() < 0.05


@pytest.mark.parametrize("method", explain.METHODS)
def test_rejected_class_shows_evidence_for_junk_only(method: str) -> None:
    # The net only knows "bright = good": there is no evidence for junk anywhere.
    scorer = ToyScorer([LinearCamNet()])
    maps = explain.saliency_maps(scorer, _spot(), [False], method=method)
    assert np.all(maps == 0.0)
    # A net for which brightness means junk highlights the same spot as junk evidence.
    flipped = ToyScorer([LinearCamNet(weight=-1.0)])
    maps = explain.saliency_maps(flipped, _spot(), [False], method=method)
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert y < 24 and x < 24


def test_member_the_ensemble_ignores_adds_nothing() -> None:
    # Members 1 and 2 agree exactly, so the boosted rule gives member 3 weight 0; member 3
    # looks only at the bottom-right, member 1 and 2 everywhere.
    classes = ClassAverages.create(
        np.concatenate(
            [_spot(48, "top-left").images, _spot(48, "bottom-right").images]
        ).sum(axis=0, keepdims=True)
    )
    corner = (slice(S // 2, None), slice(S // 2, None))
    boosted = ToyScorer(
        [LinearCamNet(), LinearCamNet(), LinearCamNet(5.0, corner)], "boosted3"
    )
    single = ToyScorer([LinearCamNet()])
    for method in explain.METHODS:
        got = explain.saliency_maps(boosted, classes, [True], method=method)
        want = explain.saliency_maps(single, classes, [True], method=method)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert got[0, :24, :24].max() == pytest.approx(got[0, 24:, 24:].max(), rel=0.05)


def test_members_keep_their_mode_and_bad_calls_fail() -> None:
    net = LinearCamNet()
    net.train()
    scorer = ToyScorer([net])
    explain.saliency_maps(scorer, _spot(), [True])
    assert net.training
    with pytest.raises(ValueError, match="method"):
        explain.saliency_maps(scorer, _spot(), [True], method="guided")
    with pytest.raises(ValueError, match="decisions"):
        explain.saliency_maps(scorer, _spot(), [True, False])
    no_cam = ToyScorer([nn.Sequential()])
    with pytest.raises(ValueError, match="cam_layer"):
        explain.saliency_maps(no_cam, _spot(), [True], method="gradcam")


def test_overlay_leaves_zero_saliency_as_the_dimmed_image() -> None:
    greys = np.random.default_rng(0).uniform(0, 1, (2, 8, 8)).astype(np.float32)
    maps = np.zeros_like(greys)
    maps[1, 2:4, 2:4] = 1.0
    out = explain.overlay(greys, maps)
    assert out.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(
        out[0], np.repeat(0.55 * greys[0, ..., None], 3, -1), atol=1e-6
    )
    assert not np.allclose(out[1, 2:4, 2:4], 0.55 * greys[1, 2:4, 2:4, None])
    with pytest.raises(ValueError):
        explain.overlay(greys, maps[:, :4])


def test_class_overlays_are_named_by_class_number(tmp_path: Path) -> None:
    classes = ClassAverages.create(
        np.random.default_rng(1).normal(size=(2, 40, 40)), class_numbers=[5, 120]
    )
    maps = np.zeros((2, 40, 40), np.float32)
    paths = explain.write_class_overlays(
        tmp_path, classes, maps, [("Class 5", "a"), ("Class 120", "b")], [True, False]
    )
    assert [p.name for p in paths] == ["class_005.png", "class_120.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def _edge_set(n: int, seed: int, box: int = 64) -> tuple[ClassAverages, np.ndarray]:
    """Half good (a centred particle), half the same particle plus a carbon edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box / 2 + 0.5
    disc = np.hypot(yy, xx) < box * 0.45
    images, regions = [], []
    for i in range(n):
        a = rng.uniform(0, np.pi)
        u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
        img = np.exp(-2 * ((u / (box * 0.2)) ** 2 + (v / (box * 0.1)) ** 2))
        region = np.zeros((box, box), bool)
        if i % 2:
            b = rng.uniform(0, 2 * np.pi)
            region = (
                xx * np.cos(b) + yy * np.sin(b) > rng.uniform(0.22, 0.35) * box
            ) & disc
            img = img + 1.5 * region
        img = img + rng.normal(scale=0.25, size=img.shape)
        images.append(img * disc)
        regions.append(region)
    labels = (np.arange(n) % 2 == 0).astype(np.int8)
    return ClassAverages.create(np.array(images), labels=labels), np.array(regions)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny nets train faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_trained_net_gradient_x_input_points_at_the_carbon_edge() -> None:
    torch.manual_seed(0)
    # Whole-box framing: with particle framing this toy net tells the two kinds apart by
    # their windows alone (an edge doubles the measured extent), not by the edge itself.
    pre = PreprocessConfig(size=32, framing="box")
    cfg = NetConfig(
        in_size=32, stem=8, widths=(8, 16, 16), meta_features=0, dropout=0.0
    )
    train, _ = _edge_set(128, seed=0)
    x, _ = prepare_inputs(train, pre)
    meta = torch.zeros((len(train), 0))
    y = torch.from_numpy(train.labels.astype(np.float32))
    net = ClassNet(cfg)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(8):
        for idx in torch.randperm(len(y)).split(32):
            loss = F.binary_cross_entropy_with_logits(net(x[idx], meta[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    class Scorer(ToyScorer):
        def prepare(self, classes: ClassAverages) -> tuple[torch.Tensor, torch.Tensor]:
            images, _ = prepare_inputs(classes, pre)
            return images, torch.zeros((len(classes), 0))

        def input_windows(self, classes: ClassAverages) -> np.ndarray:
            return input_windows(classes, pre)

    test, regions = _edge_set(40, seed=1)
    scorer = Scorer([net])
    with torch.no_grad():
        p = torch.sigmoid(net(*scorer.prepare(test))).numpy()
    assert ((p >= 0.5) == (test.labels == 1)).mean() >= 0.9
    junk = np.flatnonzero(test.labels == 0)
    hit_rate = {}
    for method in explain.METHODS:
        maps = explain.saliency_maps(
            scorer, test.subset(junk), np.zeros(junk.size, bool), method=method
        )
        peaks = maps.reshape(junk.size, -1).argmax(axis=1)
        hits = regions[junk].reshape(junk.size, -1)[np.arange(junk.size), peaks]
        hit_rate[method] = hits.mean()
    # Chance is the edge's share of the box, about 8%; the 4x4 Grad-CAM of this net is
    # the reason gradient x input is the default.
    assert hit_rate["gradient-x-input"] >= 0.5
    assert hit_rate["gradient-x-input"] > hit_rate["gradcam"] + 0.2


@pytest.mark.parametrize("window", [32, 48, 96])
def test_maps_are_drawn_back_onto_the_window_each_input_shows(window: int) -> None:
    """An input that shows the centred ``window`` of a 64 px box: a hot input pixel lands
    where that pixel lies in the box (and nothing is drawn outside the window)."""
    maps = torch.zeros((1, 16, 16))
    maps[0, 4, 12] = 1.0
    out = explain._to_box(maps, 64, np.array([window]))
    peak = np.unravel_index(np.argmax(out[0]), out[0].shape)
    scale = window / 16
    expect = [(4 + 0.5) * scale - 0.5 + (64 - window) / 2, (12 + 0.5) * scale - 0.5]
    expect[1] += (64 - window) / 2
    assert np.allclose(peak, expect, atol=scale / 2 + 1)
    if window < 64:
        o = (64 - window) // 2
        inside = np.zeros((64, 64), bool)
        inside[o : o + window, o : o + window] = True
        assert out[0][~inside].max() == 0.0
