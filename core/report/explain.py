"""Per-class saliency: which part of a class average drove the scorer's decision.

Target
------
Every method explains the *decision* through the ensemble's own combination rule: all
members run on the class, ``combine`` turns their logits into the ensemble probability
``p``, and the gradient of the decision's log-odds (``log p/(1-p)`` for a class scored at
or above the threshold, its negative otherwise, so a rejected class shows the evidence for
"junk") flows back through ``combine`` into every member. A member the ensemble ignores for
a class (the boosting rule lets the third model decide only where the first two disagree)
gets no gradient, and each member counts in proportion to its influence on the score.
Log-odds rather than ``p`` keep the gradient alive for confident classes (``p`` = 0.001
saturates the sigmoid). Only positive evidence is shown, scaled to 0-1 per class.

Methods
-------
``"gradient-x-input"`` (default): the gradient of the decision with respect to the
prepared image times that image, i.e. each pixel's first-order share of the log-odds,
smoothed with a Gaussian of 1 px per 64 px of input to tame pixel noise, then resampled
onto the class box. ``"gradcam"``: Grad-CAM (Selvaraju et al. 2017) on each member's
``cam_layer``, ``sum_k mean(dY/dA_k) * A_k`` summed over members, ReLU, upsampled
bilinearly and restricted to the mask. Both cost one forward and one backward pass.
Guided back-propagation is not offered: it fails the model-randomisation sanity check of
Adebayo et al. (2018).

Why gradient x input is the default (``benchmarks/bench_saliency.py``): the scorer's
network (default architecture, 64 px input) was trained to tell a centred particle from
the same particle plus a carbon edge or an off-centre ice blob, and each map of a junk
class was checked two ways. Pointing: the map's strongest pixel fell on the artefact for
98% of carbon-edge and 45% of ice classes with gradient x input, 3% and 16% with
Grad-CAM on ``cam_layer`` (4x4 cells there) and 11% and 6% with Grad-CAM one block
earlier (8x8); chance, the artefact's share of the box, is 8% and 3%. Faithfulness
(deletion test, Petsiuk et al. 2018): setting the top 5% of map pixels to the class's
median removed a median 13 (edge) and 44 (ice) units of "junk" log-odds with gradient x
input, 0.1 and 0.3 with Grad-CAM, about what random pixels remove (0.1 and 0.4). The
limits: gradient x input partly mirrors the image (an *untrained* net's map still finds
a bright edge 59% of the time and removes 8 and 37 units), so bright artefacts get some
credit for being bright; and it is blind to features whose normalised value is near
zero, so the absence of detail that marks a featureless blob is not localised (nor by
Grad-CAM). Grad-CAM stays available as ``--explain-method gradcam``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.report.gallery import (
    KEPT_COLOUR,
    REJECTED_COLOUR,
    TextPainter,
    resample_tiles,
    stretch_to_tiles,
)
from matplotlib import colormaps
from matplotlib import image as mpl_image
from scipy import ndimage

log = logging.getLogger(__name__)

#: Saliency methods, the default first.
METHODS: tuple[str, ...] = ("gradient-x-input", "gradcam")
_EPS = 1e-6


class ExplainableScorer(Protocol):
    """What saliency needs from a scorer (``cryodiscovery.core.model.scorer.ClassScorer``)."""

    @property
    def members(self) -> Sequence[torch.nn.Module]: ...

    def prepare(self, classes: ClassAverages) -> tuple[torch.Tensor, torch.Tensor]: ...

    def input_windows(self, classes: ClassAverages) -> npt.NDArray[np.int64]: ...

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor: ...


def _decision_logodds(
    scorer: ExplainableScorer, logits: list[torch.Tensor], signs: torch.Tensor
) -> torch.Tensor | None:
    """``(n,)`` signed log-odds of the ensemble, or None if ``combine`` is not differentiable."""
    prob = scorer.combine(logits)
    if not prob.requires_grad:
        return None
    prob = prob.reshape(-1).clamp(_EPS, 1.0 - _EPS)
    return signs * (torch.log(prob) - torch.log1p(-prob))


def gradcam(
    scorer: ExplainableScorer,
    images: torch.Tensor,
    meta: torch.Tensor,
    signs: torch.Tensor,
) -> torch.Tensor:
    """Grad-CAM of the ensemble decision, summed over members.

    Parameters
    ----------
    scorer:
        Members with a ``cam_layer`` attribute and the ensemble's ``combine`` rule.
    images, meta:
        ``(n, 1, S, S)`` prepared images and ``(n, F)`` metadata features.
    signs:
        ``(n,)`` +1 to explain "good", -1 to explain "junk".

    Returns
    -------
    ``(n, S, S)`` non-negative maps (not yet normalised).
    """
    size = images.shape[-2:]
    with torch.enable_grad():
        logits, acts = _forward_with_activations(scorer, images, meta)
        target = _decision_logodds(scorer, logits, signs)
        if target is None:
            # combine() left autograd: explain each member's own logit, equally weighted.
            log.debug("ensemble combine is not differentiable; averaging member maps")
            grads = [
                torch.autograd.grad((signs * lg.reshape(-1)).sum(), act)[0]
                for lg, act in zip(logits, acts, strict=True)
            ]
        else:
            grads = list(torch.autograd.grad(target.sum(), acts, allow_unused=True))
    total = torch.zeros((images.shape[0], 1, *size), dtype=torch.float32)
    for act, grad in zip(acts, grads, strict=True):
        if grad is None:
            continue
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * act).sum(dim=1, keepdim=True).detach().float()
        total += F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    # Outside the mask the prepared image is exactly 0 and carries no information: evidence
    # there is bilinear spill-over from the coarse grid.
    support = (images.detach().abs() > 0).float()
    return (F.relu(total) * support)[:, 0]


def gradient_x_input(
    scorer: ExplainableScorer,
    images: torch.Tensor,
    meta: torch.Tensor,
    signs: torch.Tensor,
) -> torch.Tensor:
    """Positive part of gradient x input of the ensemble decision, lightly smoothed.

    Same parameters as :func:`gradcam`; returns ``(n, S, S)`` non-negative maps.
    """
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        logits = [member(x, meta).reshape(-1) for member in scorer.members]
        target = _decision_logodds(scorer, logits, signs)
        if target is None:
            target = torch.stack(logits).mean(dim=0) * signs
        (grad,) = torch.autograd.grad(target.sum(), x)
    attribution = F.relu(grad * x.detach())[:, 0].float().numpy()
    sigma = max(images.shape[-1] / 64.0, 1.0)
    smooth = ndimage.gaussian_filter(attribution, sigma=(0, sigma, sigma))
    return torch.from_numpy(np.ascontiguousarray(smooth, dtype=np.float32))


def _forward_with_activations(
    scorer: ExplainableScorer, images: torch.Tensor, meta: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each member's ``(n,)`` logits and its ``cam_layer`` output ``(n, C, h, w)``."""
    logits: list[torch.Tensor] = []
    acts: list[torch.Tensor] = []
    for number, member in enumerate(scorer.members, start=1):
        layer = getattr(member, "cam_layer", None)
        if not isinstance(layer, torch.nn.Module):
            raise ValueError(f"ensemble member {number} has no cam_layer module")
        captured: list[torch.Tensor] = []

        def hook(
            _module: torch.nn.Module,
            _inputs: tuple[torch.Tensor, ...],
            output: torch.Tensor,
            store: list[torch.Tensor] = captured,
        ) -> None:
            store.append(output)

        handle = layer.register_forward_hook(hook)
        try:
            logits.append(member(images, meta).reshape(-1))
        finally:
            handle.remove()
        if len(captured) != 1 or captured[0].ndim != 4:
            raise ValueError(
                f"cam_layer of ensemble member {number} must give one (n, C, h, w) output"
            )
        acts.append(captured[0])
    return logits, acts


def saliency_maps(
    scorer: ExplainableScorer,
    classes: ClassAverages,
    toward_good: npt.ArrayLike,
    *,
    method: str = "gradient-x-input",
    batch_size: int = 64,
) -> npt.NDArray[np.float32]:
    """Saliency of each class average for the scorer's decision, at the class box size.

    Parameters
    ----------
    scorer:
        The scorer that made the decision (its members are set to eval mode meanwhile).
    classes:
        ``n`` class averages of box ``B``.
    toward_good:
        ``(n,)`` bool: True to show the evidence for "good" (score at or above the
        threshold), False for the evidence for "junk".
    method:
        One of :data:`METHODS`.
    batch_size:
        Classes per forward/backward pass (bounds memory).

    Returns
    -------
    ``(n, B, B)`` float32 in [0, 1], 1 at each class's strongest evidence; all zero for a
    class with no positive evidence.
    """
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose from {METHODS}")
    good = np.asarray(toward_good, dtype=bool).reshape(-1)
    if good.size != len(classes):
        raise ValueError(f"{good.size} decisions for {len(classes)} classes")
    box = classes.box_size
    out = np.zeros((len(classes), box, box), dtype=np.float32)
    if len(classes) == 0:
        return out
    images, meta = scorer.prepare(classes)
    windows = scorer.input_windows(classes)
    signs = torch.from_numpy(np.where(good, 1.0, -1.0).astype(np.float32))
    compute = gradient_x_input if method == "gradient-x-input" else gradcam
    modes = [m.training for m in scorer.members]
    for member in scorer.members:
        member.eval()
    try:
        for start in range(0, len(classes), batch_size):
            sl = slice(start, start + batch_size)
            # clone(): prepare() may have run under inference_mode, which autograd refuses.
            maps = compute(scorer, images[sl].clone(), meta[sl].clone(), signs[sl])
            out[sl] = _to_box(maps, box, windows[sl])
    finally:
        for member, mode in zip(scorer.members, modes, strict=True):
            member.train(mode)
    return out


def _to_box(
    maps: torch.Tensor, box: int, windows: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """``(n, S, S)`` maps -> ``(n, box, box)`` scaled to 0-1 per class.

    Input ``i`` shows the centred ``windows[i]``-pixel square of its class (the whole box,
    or the particle window of particle framing), so its map is resampled to that square
    and then cropped to the box or placed in its centre (zero outside the window).
    """
    n = maps.shape[0]
    out = np.zeros((n, box, box), dtype=np.float32)
    for size in np.unique(windows).tolist():
        pick = np.flatnonzero(windows == size)
        up = F.relu(
            F.interpolate(
                maps[pick][:, None].float(),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
            )[:, 0]
        ).numpy()
        o = abs(size - box) // 2
        if size >= box:
            out[pick] = up[:, o : o + box, o : o + box]
        else:
            out[pick, o : o + size, o : o + size] = up
    peak = np.percentile(out.reshape(n, -1), 99.5, axis=1)
    peak = np.where(peak > 0, peak, 1.0)
    scaled: npt.NDArray[np.float32] = np.clip(out / peak[:, None, None], 0.0, 1.0)
    return scaled


def overlay(greys: npt.ArrayLike, maps: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Blend saliency onto class averages.

    Parameters
    ----------
    greys:
        ``(n, h, w)`` contrast-stretched class averages in [0, 1].
    maps:
        ``(n, h, w)`` saliency in [0, 1].

    Returns
    -------
    ``(n, h, w, 3)`` float32 RGB in [0, 1]. The class average is dimmed to 55% so that
    colour stands out even on a bright carbon edge; saliency below 0.1 is not drawn (the
    weak, diffuse part of any gradient map), above it "plasma" colours (purple = weak,
    yellow = strong) cover the image with an opacity rising to 85% at 0.6 and above.
    """
    g = np.asarray(greys, dtype=np.float32)
    m = np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0)
    if g.shape != m.shape:
        raise ValueError(f"images {g.shape} and maps {m.shape} differ in shape")
    heat = colormaps["plasma"](0.35 + 0.65 * m)[..., :3].astype(np.float32)
    weight = (0.85 * np.clip((m - 0.1) / 0.5, 0.0, 1.0))[..., None]
    return np.asarray(0.55 * g[..., None] * (1.0 - weight) + heat * weight, np.float32)


def write_class_overlays(
    out_dir: Path,
    classes: ClassAverages,
    maps: npt.NDArray[np.float32],
    captions: Sequence[tuple[str, str]],
    kept: npt.ArrayLike,
) -> list[Path]:
    """Write ``out_dir/class_NNN.png``: the class average beside its saliency overlay.

    Parameters
    ----------
    out_dir:
        Folder for the PNGs (created).
    classes:
        ``n`` class averages; NNN is the 1-based class number, zero-padded to 3 digits.
    maps:
        ``(n, B, B)`` saliency in [0, 1] from :func:`saliency_maps`.
    captions:
        Per class, two caption lines.
    kept:
        ``(n,)`` bool, colours the first caption line (kept blue, rejected vermillion).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    size = int(np.clip(classes.box_size, 192, 256))
    greys = stretch_to_tiles(classes.images, size)
    blended = overlay(greys, resample_tiles(maps, size))
    painter = TextPainter()
    keep = np.asarray(kept, dtype=bool)
    pad, caption_h = 12, 46
    paths = []
    for i, number in enumerate(classes.class_numbers):
        text_w = max(
            painter.width(captions[i][0], 14, True), painter.width(captions[i][1], 12)
        )
        width = max(2 * size + 3 * pad, text_w + 2 * pad)
        canvas = np.full((caption_h + size + pad, width, 3), 255, np.uint8)
        top = slice(caption_h, caption_h + size)
        canvas[top, pad : pad + size] = np.round(greys[i, ..., None] * 255).astype(
            np.uint8
        )
        x1 = 2 * pad + size
        canvas[top, x1 : x1 + size] = np.round(blended[i] * 255).astype(np.uint8)
        colour = KEPT_COLOUR if keep[i] else REJECTED_COLOUR
        painter.draw(canvas, captions[i][0], pad, 19, 14, colour, bold=True)
        painter.draw(canvas, captions[i][1], pad, 37, 12)
        path = out_dir / f"class_{int(number):03d}.png"
        mpl_image.imsave(path, canvas, format="png")
        paths.append(path)
    return paths
