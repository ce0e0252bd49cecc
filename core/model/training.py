"""Training of one :class:`~cryodiscovery.core.model.nets.ClassNet`: augmentation, class balance,
early stopping on validation loss, deterministic seeds and a progress bar.

Each batch is augmented (:mod:`cryodiscovery.core.model.augment`), normalised, and its
metadata thinned at random (whole vectors and single features, with their flags), so one
network learns both the image-only and the image+metadata mode. The loss is class-balanced
binary cross-entropy with light label smoothing (scores are not pushed to 0 or 1, which
keeps them sortable and less overconfident on data unlike the training data).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from cryodiscovery.core.classes import ClassAverages, Label
from cryodiscovery.core.model.augment import AugmentConfig, augment_batch
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import (
    PreprocessConfig,
    metadata_features,
    normalise_images,
    resample_classes,
)
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


#: Learning-rate schedules within one training call (``TrainConfig.schedule``).
LR_SCHEDULES: tuple[str, ...] = ("onecycle", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one network."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4
    seed: int = 0
    label_smoothing: float = 0.05
    meta_dropout: float = 0.6
    feature_dropout: float = 0.15
    meta_noise: float = 0.15
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: "onecycle": warm up to ``lr`` then anneal to ~0 over the epochs; "constant":
    #: ``lr`` throughout (a federated round: the run, not each round, anneals).
    schedule: str = "onecycle"
    #: Where the network trains ("cpu", "cuda"): augmentation and the random streams stay
    #: on the CPU, so a seed gives the same batches on either; the result is on the CPU.
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown learning-rate schedule {self.schedule!r} "
                f"(one of {', '.join(LR_SCHEDULES)})"
            )


@dataclass(frozen=True)
class TrainingSet:
    """Labelled classes at the internal size, ready for augmentation.

    ``images`` are ``(n, s, s)`` float32 resampled but not normalised; ``radius`` ``(n,)``
    mask radii; ``meta`` ``(n, F)`` features; ``labels`` ``(n,)`` 0/1; ``kinds`` per class;
    ``groups`` ``(n,)`` int64, which job (set) each class came from.
    """

    images: torch.Tensor
    radius: torch.Tensor
    meta: torch.Tensor
    labels: torch.Tensor
    kinds: tuple[str, ...]
    groups: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: npt.ArrayLike) -> TrainingSet:
        """The classes at integer positions ``index``."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return TrainingSet(
            self.images[idx],
            self.radius[idx],
            self.meta[idx],
            self.labels[idx],
            tuple(self.kinds[i] for i in idx.tolist()),
            self.groups[idx],
        )


def build_training_set(
    sets: Sequence[ClassAverages], config: PreprocessConfig, group0: int = 0
) -> TrainingSet:
    """Resample and featurise every labelled class of ``sets`` (unknown labels dropped);
    the classes of ``sets[i]`` get group ``group0 + i``."""
    imgs: list[npt.NDArray[np.float32]] = []
    radii: list[npt.NDArray[np.float32]] = []
    metas: list[npt.NDArray[np.float32]] = []
    labels: list[npt.NDArray[np.float32]] = []
    kinds: list[str] = []
    groups: list[npt.NDArray[np.int64]] = []
    for i, classes in enumerate(sets):
        known = classes.labels != Label.UNKNOWN
        if not known.any():
            continue
        sub = classes.subset(known)
        im, rad = resample_classes(sub, config)
        imgs.append(im)
        radii.append(rad)
        # features relative to the job (a class's share) from the whole job, as scoring
        metas.append(metadata_features(classes)[known])
        labels.append((sub.labels == Label.SELECTED).astype(np.float32))
        kinds.extend(sub.kinds)
        groups.append(np.full(len(sub), group0 + i, dtype=np.int64))
    if not imgs:
        raise ValueError("no labelled classes to train on")
    return TrainingSet(
        torch.from_numpy(np.concatenate(imgs)),
        torch.from_numpy(np.concatenate(radii)),
        torch.from_numpy(np.concatenate(metas)),
        torch.from_numpy(np.concatenate(labels)),
        tuple(kinds),
        torch.from_numpy(np.concatenate(groups)),
    )


def drop_metadata(
    meta: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> torch.Tensor:
    """Remove all metadata of some classes, and single features of others, with their
    present flags, so the network learns to score image-only and partial inputs; jitter
    the values that stay (``cfg.meta_noise``), because generated metadata separate good
    from junk more cleanly than real ones do and the images must carry the decision."""
    b, f = meta.shape
    half = f // 2
    keep = (torch.rand(b, half, generator=gen) >= cfg.feature_dropout).float()
    keep = keep * (torch.rand(b, 1, generator=gen) >= cfg.meta_dropout).float()
    noise = cfg.meta_noise * torch.randn(b, half, generator=gen) * meta[:, half:]
    return torch.cat([(meta[:, :half] + noise) * keep, meta[:, half:] * keep], dim=1)


@dataclass
class TrainResult:
    """A trained network and how training went."""

    net: ClassNet
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def lr_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step schedule of ``cfg.schedule`` over ``steps`` optimiser steps."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15
    )


def predict_logits(
    net: nn.Module,
    data: TrainingSet,
    pre: PreprocessConfig,
    batch_size: int = 512,
    meta: bool = True,
) -> torch.Tensor:
    """``(n,)`` logits of ``net`` (eval mode, no augmentation) on a training set, on the
    CPU wherever ``net`` is."""
    net.eval()
    dev = next(net.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            x = normalise_images(data.images[sl], data.radius[sl], pre)
            m = data.meta[sl] if meta else torch.zeros_like(data.meta[sl])
            outs.append(net(x.to(dev), m.to(dev)).cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """``(n,)`` weights giving both labels equal total weight (mean 1)."""
    n = labels.numel()
    n_pos = labels.sum().clamp(min=1.0)
    n_neg = (n - labels.sum()).clamp(min=1.0)
    return torch.where(labels > 0.5, n / (2 * n_pos), n / (2 * n_neg))


def _loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, smoothing: float
) -> torch.Tensor:
    target = labels * (1 - smoothing) + 0.5 * smoothing
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per * weights).sum() / weights.sum()


def train_net(
    train: TrainingSet,
    val: TrainingSet,
    net_config: NetConfig,
    pre: PreprocessConfig,
    cfg: TrainConfig,
    sample_weights: torch.Tensor | None = None,
    init: dict[str, torch.Tensor] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train one network; stop when the validation loss has not improved for
    ``cfg.patience`` epochs and return the best state.

    Parameters
    ----------
    train, val:
        Training and validation classes.
    sample_weights:
        ``(n_train,)`` extra per-class weights (boosting); multiplied with class balance.
    init:
        A state dict to start from (fine-tuning).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = ClassNet(net_config)
    if init is not None:
        net.load_state_dict(init)
    net.to(cfg.device)
    weights = balanced_weights(train.labels)
    if sample_weights is not None:
        weights = weights * sample_weights / sample_weights.mean()
    val_w = balanced_weights(val.labels)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = lr_scheduler(opt, cfg, cfg.epochs * math.ceil(len(train) / cfg.batch_size))
    best, best_loss, best_epoch, history = (
        copy.deepcopy(net.state_dict()),
        math.inf,
        0,
        [],
    )
    start = time.perf_counter()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss = _train_epoch(
            net, train, weights, pre, cfg, opt, sched, gen, desc, epoch
        )
        val_logits = predict_logits(net, val, pre)
        val_loss = float(_loss(val_logits, val.labels, val_w, 0.0))
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "seconds": time.perf_counter() - t0,
            }
        )
        log.info(
            "%s epoch %d: train loss %.4f, val loss %.4f (%.1f s)",
            desc,
            epoch,
            train_loss,
            val_loss,
            history[-1]["seconds"],
        )
        if val_loss < best_loss - 1e-4:
            best, best_loss, best_epoch = (
                copy.deepcopy(net.state_dict()),
                val_loss,
                epoch,
            )
        elif epoch - best_epoch >= cfg.patience:
            log.info("%s: early stop, best epoch %d", desc, best_epoch)
            break
    net.load_state_dict(best)
    net.to("cpu").eval()
    return TrainResult(net, best_epoch, epoch, time.perf_counter() - start, history)


def _train_epoch(
    net: ClassNet,
    train: TrainingSet,
    weights: torch.Tensor,
    pre: PreprocessConfig,
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    desc: str,
    epoch: int,
) -> float:
    net.train()
    order = torch.randperm(len(train), generator=gen)
    batches = [
        order[i : i + cfg.batch_size] for i in range(0, len(train), cfg.batch_size)
    ]
    # Drop a last batch of one (BatchNorm cannot train on it).
    batches = [b for b in batches if b.numel() > 1]
    total, count = 0.0, 0
    bar = tqdm(
        batches,
        desc=f"{desc} epoch {epoch}",
        leave=False,
        unit="batch",
        disable=not sys.stderr.isatty(),
    )
    for idx in bar:
        imgs, rad = augment_batch(
            train.images[idx], train.radius[idx], cfg.augment, gen
        )
        dev = cfg.device
        x = normalise_images(imgs, rad, pre).to(dev)
        meta = drop_metadata(train.meta[idx], cfg, gen).to(dev)
        labels, w = train.labels[idx].to(dev), weights[idx].to(dev)
        loss = _loss(net(x, meta), labels, w, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        total += float(loss.detach()) * idx.numel()
        count += idx.numel()
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def split_training_set(
    data: TrainingSet, fractions: tuple[float, float], seed: int
) -> tuple[TrainingSet, TrainingSet, TrainingSet]:
    """Stratified random split into ``(train, val, test)``; ``fractions`` are the val and
    test shares (each label keeps at least one class in val and test when it can)."""
    val_f, test_f = fractions
    if not (0 < val_f < 1 and 0 < test_f < 1 and val_f + test_f < 1):
        raise ValueError(f"bad split fractions {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    labels = data.labels.numpy()
    for value in (0.0, 1.0):
        idx = rng.permutation(np.nonzero(labels == value)[0])
        n_val = max(round(val_f * idx.size), 1 if idx.size >= 3 else 0)
        n_test = max(round(test_f * idx.size), 1 if idx.size >= 3 else 0)
        parts[1].extend(idx[:n_val].tolist())
        parts[2].extend(idx[n_val : n_val + n_test].tolist())
        parts[0].extend(idx[n_val + n_test :].tolist())
    tr, va, te = (data.subset(sorted(p)) for p in parts)
    return tr, va, te
