"""Benchmark: do saliency maps point at what makes a junk class junk?

Trains the scorer's network (default architecture, 64 px input, image only) to tell a
centred particle from the same particle plus a carbon edge or an off-centre ice blob,
then asks each saliency method where the evidence for "junk" is. Prints, per artefact and
method, how often the map's strongest pixel falls on the artefact ("pointing"), the share
of the map's mass on it, and chance (the artefact's share of the box). Also prints
Grad-CAM one block earlier (the input of ``cam_layer``, 8x8) as a reference, and each
method on an untrained network (a map that still finds the artefact mirrors the image,
not the model), and a deletion test of faithfulness: how much "junk" log-odds the
trained net loses when the top 5% of map pixels are set to the class's median.

    python benchmarks/bench_saliency.py [--train 600] [--test 300] [--epochs 6] [--seed 0]

Reported in the docstring of ``cryodiscovery.core.report.explain``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.ensemble import combine_logits
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig, prepare_inputs
from cryodiscovery.core.report import explain

BOX = 128
DELETE = 0.05  # share of pixels deleted in the faithfulness test


def make_set(n: int, seed: int) -> tuple[ClassAverages, np.ndarray, np.ndarray]:
    """Images, artefact masks ``(n, BOX, BOX)`` and kinds ("good", "edge", "ice")."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:BOX, :BOX] - BOX / 2 + 0.5
    disc = np.hypot(yy, xx) < BOX * 0.45
    kinds = rng.choice(["good", "edge", "ice"], n, p=[0.5, 0.25, 0.25])
    images, regions = [], []
    for kind in kinds:
        a = rng.uniform(0, np.pi)
        u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
        img = np.exp(-2 * ((u / (BOX * 0.2)) ** 2 + (v / (BOX * 0.1)) ** 2))
        img += 0.6 * np.exp(-((u - BOX * 0.08) ** 2 + v**2) / (BOX * 0.04) ** 2)
        region = np.zeros((BOX, BOX), bool)
        if kind == "edge":
            b = rng.uniform(0, 2 * np.pi)
            region = xx * np.cos(b) + yy * np.sin(b) > rng.uniform(0.22, 0.35) * BOX
            img = img + 1.5 * region
        elif kind == "ice":
            b, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.22, 0.3) * BOX
            d2 = (xx - r * np.cos(b)) ** 2 + (yy - r * np.sin(b)) ** 2
            region = d2 < (BOX * 0.09) ** 2
            img = img + 2 * np.exp(-d2 / (BOX * 0.07) ** 2)
        img = img + rng.normal(scale=0.25, size=img.shape)
        images.append(img * disc)
        regions.append(region & disc)
    labels = (kinds == "good").astype(np.int8)
    classes = ClassAverages.create(np.array(images), labels=labels, kinds=list(kinds))
    return classes, np.array(regions), kinds


class Scorer:
    """The saliency protocol around one trained net."""

    def __init__(self, net: ClassNet, pre: PreprocessConfig) -> None:
        self.members = [net]
        self.pre = pre

    def prepare(self, classes: ClassAverages) -> tuple[torch.Tensor, torch.Tensor]:
        images, _ = prepare_inputs(classes, self.pre)
        return images, torch.zeros((len(classes), 0))

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        return combine_logits(member_logits, "single")


def gradcam_earlier(
    scorer: Scorer, images: torch.Tensor, meta: torch.Tensor, signs: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM on the input of ``cam_layer`` (one block earlier), for reference."""
    net = scorer.members[0]
    acts: list[torch.Tensor] = []
    handle = net.cam_layer.register_forward_hook(lambda _m, i, _o: acts.append(i[0]))
    with torch.enable_grad():
        prob = torch.sigmoid(net(images, meta)).clamp(1e-6, 1 - 1e-6)
        handle.remove()
        target = signs * (torch.log(prob) - torch.log1p(-prob))
        (grad,) = torch.autograd.grad(target.sum(), acts)
    cam = (grad.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True).detach()
    up = F.interpolate(
        cam, size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    return (F.relu(up) * (images.abs() > 0))[:, 0]


def train(
    classes: ClassAverages, pre: PreprocessConfig, epochs: int, seed: int
) -> ClassNet:
    torch.manual_seed(seed)
    x, _ = prepare_inputs(classes, pre)
    meta = torch.zeros((len(classes), 0))
    y = torch.from_numpy(classes.labels.astype(np.float32))
    net = ClassNet(NetConfig(in_size=pre.size, meta_features=0))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            loss = F.binary_cross_entropy_with_logits(net(x[idx], meta[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pre = PreprocessConfig(size=64)
    t0 = time.perf_counter()
    net = train(make_set(args.train, args.seed)[0], pre, args.epochs, args.seed)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    test, regions, kinds = make_set(args.test, args.seed + 1000)
    scorer = Scorer(net, pre)
    with torch.no_grad():
        p = torch.sigmoid(net(*scorer.prepare(test))).numpy()
    print(f"test accuracy {((p >= 0.5) == (test.labels == 1)).mean():.3f}")
    junk = np.flatnonzero(kinds != "good")
    sub = test.subset(junk)
    maps = {m: timed(scorer, sub, m) for m in explain.METHODS}
    maps["gradcam 8x8 (reference)"] = timed(scorer, sub, "earlier")
    # Sanity check (Adebayo et al. 2018): maps of an untrained net show what a method
    # finds from the image alone; a faithful map must beat them on the trained model.
    torch.manual_seed(args.seed)
    untrained = Scorer(
        ClassNet(NetConfig(in_size=pre.size, meta_features=0)).eval(), pre
    )
    for m in explain.METHODS:
        maps[f"{m}, untrained net"] = timed(untrained, sub, m)
    rng = np.random.default_rng(args.seed)
    maps["random pixels"] = rng.uniform(size=maps["gradcam"].shape).astype(np.float32)
    print(
        f"{'map':32s} {'artefact':8s} pointing  mass-on-it  chance  "
        f"junk log-odds removed by deleting the top {DELETE:.0%}"
    )
    reg = regions[junk]
    chance = reg.mean((1, 2))
    for label, m in maps.items():
        peaks = m.reshape(junk.size, -1).argmax(axis=1)
        hit = reg.reshape(junk.size, -1)[np.arange(junk.size), peaks]
        mass = (m * reg).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1e-12)
        drop = deletion_drop(scorer, sub, m)
        for kind in ("edge", "ice"):
            k = kinds[junk] == kind
            print(
                f"{label:32s} {kind:8s} {hit[k].mean():8.2f}  {mass[k].mean():10.2f}  "
                f"{chance[k].mean():6.2f}  {np.median(drop[k]):8.2f}"
            )


def timed(scorer: Scorer, classes: ClassAverages, method: str) -> np.ndarray:
    """Maps explaining "junk" for every class, with the time per class printed."""
    t0 = time.perf_counter()
    junk = np.zeros(len(classes), bool)
    if method == "earlier":
        original = explain.gradcam
        explain.gradcam = gradcam_earlier  # type: ignore[assignment]
        try:
            out = explain.saliency_maps(scorer, classes, junk, method="gradcam")
        finally:
            explain.gradcam = original
    else:
        out = explain.saliency_maps(scorer, classes, junk, method=method)
    print(f"  {method}: {(time.perf_counter() - t0) / len(classes) * 1e3:.1f} ms/class")
    return out


def junk_logodds(scorer: Scorer, classes: ClassAverages) -> np.ndarray:
    with torch.no_grad():
        logits = scorer.members[0](*scorer.prepare(classes))
    return -logits.double().numpy()


def deletion_drop(
    scorer: Scorer, classes: ClassAverages, maps: np.ndarray
) -> np.ndarray:
    """Fall of the trained scorer's "junk" log-odds when each class's top ``DELETE`` of
    map pixels are set to the class's median (the deletion test of Petsiuk et al. 2018)."""
    images = classes.images.copy()
    k = int(DELETE * images[0].size)
    for img, m in zip(images, maps, strict=True):
        top = np.argsort(m.ravel(), kind="stable")[-k:]
        img.flat[top] = np.median(img)
    edited = ClassAverages.create(images, labels=classes.labels)
    return junk_logodds(scorer, classes) - junk_logodds(scorer, edited)


if __name__ == "__main__":
    main()
