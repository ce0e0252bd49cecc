"""The class scorer network: a compact residual CNN on the normalised class average, fused
with a small MLP on the metadata features, giving one logit of "good" per class; and the
rule that combines the members of the boosted ensemble (:func:`combine_logits`).

Metadata enter as values plus "present" flags; with no metadata at all (a bare stack) the
whole vector is zero, which the network is trained to handle (metadata are dropped at
random in training), so one network scores both modes.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from cryodiscovery.core.model.preprocess import N_META
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetConfig:
    """Architecture of :class:`ClassNet` (stored in every checkpoint).

    Parameters
    ----------
    in_size:
        Input box in pixels (the preprocessing ``size``).
    stem:
        Channels of the stride-2 5x5 stem convolution.
    widths:
        Channels of the residual stages; each stage halves the resolution.
    meta_features:
        Length of the metadata vector (0: image only).
    meta_hidden:
        Width of the metadata MLP.
    dropout:
        Dropout before the last layer.
    norm:
        ``"batch"`` (BatchNorm, the shipped model) or ``"group"`` (GroupNorm, up to 8
        groups; no running statistics, so a model averaged across sites whose batches
        come from different distributions normalises the same way at training and
        scoring time).
    """

    in_size: int = 64
    stem: int = 24
    widths: tuple[int, ...] = (32, 64, 128)
    meta_features: int = N_META
    meta_hidden: int = 32
    dropout: float = 0.2
    norm: str = "batch"

    def __post_init__(self) -> None:
        if not self.widths or min(self.widths) < 1 or self.stem < 1:
            raise ValueError(f"bad widths {self.widths} / stem {self.stem}")
        if self.in_size % (2 ** (len(self.widths) + 1)):
            raise ValueError(
                f"in_size {self.in_size} not divisible by 2**{len(self.widths) + 1}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown network keys {sorted(unknown)}")
        vals = dict(values)
        vals["widths"] = tuple(int(w) for w in vals.get("widths", (32, 64, 128)))
        return cls(**vals)


NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with the largest group count <= 8 dividing ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    groups = max(g for g in range(1, 9) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-norm layers with a (strided 1x1 when needed) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        out: torch.Tensor = self.act(y + self.shortcut(x))
        return out


class ClassNet(nn.Module):
    """Residual CNN + metadata MLP -> one logit per class.

    ``forward(images, meta)`` takes ``(n, 1, s, s)`` normalised images and
    ``(n, meta_features)`` metadata features and returns ``(n,)`` logits.
    ``cam_layer`` is the last convolutional stage (a hook point for Grad-CAM).
    """

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetConfig()
        cfg = self.config
        self.stem = nn.Sequential(
            nn.Conv2d(1, cfg.stem, 5, 2, 2, bias=False),
            norm_layer(cfg.norm, cfg.stem),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c_in = cfg.stem
        for width in cfg.widths:
            stages.append(ResidualBlock(c_in, width, stride=2, norm=cfg.norm))
            c_in = width
        self.stages = nn.Sequential(*stages[:-1])
        self.cam_layer: nn.Module = stages[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        fused = c_in
        self.meta: nn.Module | None = None
        if cfg.meta_features > 0:
            self.meta = nn.Sequential(
                nn.Linear(cfg.meta_features, cfg.meta_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(cfg.meta_hidden, cfg.meta_hidden),
                nn.ReLU(inplace=True),
            )
            fused += cfg.meta_hidden
        self.head = nn.Sequential(
            nn.Linear(fused, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(64, 1),
        )

    def forward(self, images: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """``(n, 1, s, s)`` images and ``(n, F)`` metadata -> ``(n,)`` logits."""
        x = self.cam_layer(self.stages(self.stem(images)))
        feats = [self.pool(x).flatten(1)]
        if self.meta is not None:
            feats.append(self.meta(meta))
        logits: torch.Tensor = self.head(torch.cat(feats, dim=1)).squeeze(1)
        return logits


def inference_copy(net: ClassNet) -> ClassNet:
    """A copy of an eval-mode ``net`` for scoring only: each BatchNorm folded into the
    convolution before it (``torch.nn.utils.fuse_conv_bn_eval``: the same
    affine map, one pass fewer) and the weights in ``channels_last`` memory format
    (faster convolutions on the CPU). Logits equal ``net``'s to float32 rounding
    (about 1e-6). ``net`` itself is left as it is: training and the federation keep the
    unfused modules, whose running statistics they update.

    Raises
    ------
    ValueError
        ``net`` is in training mode (its BatchNorm layers use batch statistics then).
    """
    if any(m.training for m in net.modules()):
        raise ValueError("only a network in eval mode can be fused for inference")
    fused = copy.deepcopy(net)
    for module in list(fused.modules()):
        if isinstance(module, ResidualBlock):
            if isinstance(module.bn1, nn.BatchNorm2d):
                module.conv1 = fuse_conv_bn_eval(module.conv1, module.bn1)
                module.bn1 = nn.Identity()
            if isinstance(module.bn2, nn.BatchNorm2d):
                module.conv2 = fuse_conv_bn_eval(module.conv2, module.bn2)
                module.bn2 = nn.Identity()
        elif isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = nn.Identity()
    # Module.to takes memory_format (documented; in place) but its type overloads do
    # not list it.
    fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return fused


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


BOOSTED = "boosted3"
MEAN = "mean3"
SINGLE = "single"
RULES = (BOOSTED, MEAN, SINGLE)


def combine_logits(member_logits: list[torch.Tensor], rule: str) -> torch.Tensor:
    """Ensemble probabilities from member logits.

    ``"boosted3"``: with ``p_i = sigmoid(z_i)`` and ``g = |p1 - p2|``, the result is
    ``(1 - g) * (p1 + p2) / 2 + g * p3``: the mean of the first two where they agree, the
    third member where they disagree, continuously in between (scores stay sortable).
    ``"mean3"``: the mean of the three members' probabilities (less variance than any
    one network: members trained from different seeds disagree most on real data).

    Parameters
    ----------
    member_logits:
        One ``(n,)`` logit tensor per member (1 for ``"single"``, 3 otherwise).
    rule:
        ``"single"``, ``"boosted3"`` or ``"mean3"``.

    Returns
    -------
    ``(n,)`` probabilities of "good".
    """
    if rule == SINGLE and len(member_logits) == 1:
        return torch.sigmoid(member_logits[0])
    if rule == BOOSTED and len(member_logits) == 3:
        p1, p2, p3 = (torch.sigmoid(z) for z in member_logits)
        g = (p1 - p2).abs()
        return (1 - g) * 0.5 * (p1 + p2) + g * p3
    if rule == MEAN and len(member_logits) == 3:
        return torch.stack([torch.sigmoid(z) for z in member_logits]).mean(dim=0)
    raise ValueError(f"rule {rule!r} does not take {len(member_logits)} members")
