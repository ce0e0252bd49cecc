"""The :class:`ClassScorer`: one network or a boosted ensemble, its preprocessing, the
calibrated thresholds and the validation scores they came from. Model files holding a
scorer are written and read by :mod:`cryodiscovery.core.model.checkpoint`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.calibration import calibrate
from cryodiscovery.core.model.device import resolve_device
from cryodiscovery.core.model.nets import (
    RULES,
    ClassNet,
    NetConfig,
    combine_logits,
    inference_copy,
)
from cryodiscovery.core.model.preprocess import (
    PreprocessConfig,
    input_windows,
    metadata_features,
    prepare_inputs,
)

IMAGE_ONLY = "image-only"
IMAGE_AND_METADATA = "image+metadata"


class ClassScorer:
    """Scores class averages with one network or the boosted ensemble.

    Attributes
    ----------
    members:
        The networks; each ``forward(images, meta) -> (n,)`` logits, with ``cam_layer``.
    rule:
        ``"boosted3"`` or ``"single"`` (see :func:`~cryodiscovery.core.model.ensemble.combine_logits`).
    threshold:
        Stored decision threshold (probability) for image+metadata scoring, calibrated
        for ``target_fnr`` on the validation jobs.
    image_only_threshold:
        The same for image-only scoring (a bare stack), whose scores run lower.
    image_only_target_fnr:
        The false-negative rate ``image_only_threshold`` was calibrated for on the
        validation jobs, when it differs from ``target_fnr`` (chosen on real class
        averages, ``benchmarks/bench_threshold.py``); None: ``target_fnr``.
    validation_labels, validation_scores, validation_scores_image_only, validation_groups:
        ``(n,)`` validation truth, scores in both modes and job ids, kept so that any other
        false-negative rate can be recalibrated (:meth:`threshold_for_fnr`).
    sha256, name:
        Checksum of the model file (empty before saving/loading) and the model's name.
    info:
        Metrics, ensemble decision, training data description (JSON-ready).
    """

    def __init__(
        self,
        members: list[ClassNet],
        net_config: NetConfig,
        preprocess: PreprocessConfig,
        rule: str,
        threshold: float,
        *,
        target_fnr: float = 0.03,
        validation_labels: npt.ArrayLike | None = None,
        validation_scores: npt.ArrayLike | None = None,
        image_only_threshold: float | None = None,
        validation_scores_image_only: npt.ArrayLike | None = None,
        validation_groups: npt.ArrayLike | None = None,
        image_only_target_fnr: float | None = None,
        name: str = "cryodiscovery-model",
        info: dict[str, Any] | None = None,
        sha256: str = "",
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown ensemble rule {rule!r}")
        for t in (threshold, image_only_threshold):
            if t is not None and not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {t}")
        self.members = members
        self.net_config = net_config
        self.preprocess = preprocess
        self.rule = rule
        self.threshold = float(threshold)
        self.target_fnr = float(target_fnr)
        self.image_only_target_fnr = (
            None if image_only_target_fnr is None else float(image_only_target_fnr)
        )
        self.image_only_threshold = (
            self.threshold
            if image_only_threshold is None
            else float(image_only_threshold)
        )
        self.validation_labels = _array_or_none(validation_labels, np.int8)
        self.validation_scores = _array_or_none(validation_scores, np.float64)
        self.validation_scores_image_only = _array_or_none(
            validation_scores_image_only, np.float64
        )
        self.validation_groups = _array_or_none(validation_groups, np.int64)
        self.name = name
        self.info: dict[str, Any] = dict(info or {})
        self.sha256 = sha256
        combine_logits([torch.zeros(1)] * len(members), rule)  # rule/member count check
        for m in self.members:
            m.eval()

    @property
    def uses_metadata(self) -> bool:
        """True when the networks take metadata features."""
        return self.net_config.meta_features > 0

    def mode_for(self, classes: ClassAverages) -> str:
        """``"image+metadata"`` when metadata are used for these classes, else ``"image-only"``."""
        return (
            IMAGE_AND_METADATA
            if self.uses_metadata and classes.has_metadata
            else IMAGE_ONLY
        )

    def metadata(self, classes: ClassAverages) -> torch.Tensor:
        """``(n, F)`` metadata features of a whole job (``(n, 0)`` for an image-only
        model); some are relative to the job (a class's share of its particles)."""
        if not self.uses_metadata:
            return torch.zeros((len(classes), 0))
        return torch.from_numpy(metadata_features(classes))

    def prepare(self, classes: ClassAverages) -> tuple[torch.Tensor, torch.Tensor]:
        """Network inputs: ``(n, 1, s, s)`` images and ``(n, F)`` metadata features."""
        images, meta = prepare_inputs(classes, self.preprocess)
        if not self.uses_metadata:
            meta = torch.zeros((len(classes), 0))
        return images, meta

    def input_windows(self, classes: ClassAverages) -> npt.NDArray[np.int64]:
        """``(n,)`` side (px of the class box) of the centred square each input shows."""
        return input_windows(classes, self.preprocess)

    @property
    def device(self) -> torch.device:
        """Where the networks are (the CPU except inside :meth:`predict`)."""
        return next(self.members[0].parameters()).device

    def member_logits(
        self,
        images: torch.Tensor,
        meta: torch.Tensor,
        networks: list[ClassNet] | None = None,
    ) -> list[torch.Tensor]:
        """Each member's ``(n,)`` logits for prepared inputs (no gradient), on the CPU
        whatever :attr:`device` the networks run on. ``networks``: the members to run
        instead of :attr:`members`, e.g. :meth:`inference_networks`."""
        nets = self.members if networks is None else networks
        dev = next(nets[0].parameters()).device
        with torch.inference_mode():
            return [m(images.to(dev), meta.to(dev)).cpu() for m in nets]

    def inference_networks(self) -> list[ClassNet]:
        """The members as they score fastest: BatchNorm folded into the convolutions and
        ``channels_last`` weights (:func:`~cryodiscovery.core.model.nets.inference_copy`),
        made afresh from the current weights on each call; the members themselves when
        any is in training mode or uses GroupNorm (nothing to fold)."""
        if self.net_config.norm != "batch" or any(
            m.training for member in self.members for m in member.modules()
        ):
            return list(self.members)
        return [inference_copy(m) for m in self.members]

    def combine(self, member_logits: list[torch.Tensor]) -> torch.Tensor:
        """The ensemble rule: member logits -> ``(n,)`` probabilities."""
        return combine_logits(member_logits, self.rule)

    def predict(
        self,
        classes: ClassAverages,
        batch_size: int = 256,
        on_batch: Callable[[], None] | None = None,
        device: str = "cpu",
    ) -> npt.NDArray[np.float64]:
        """``(n,)`` float64 probabilities of "good"; ``on_batch`` is called between batches
        (it may raise to abort). The networks run on ``device`` (``"auto"``, ``"cpu"``,
        ``"cuda"``) and are back on the CPU afterwards."""
        dev = resolve_device(device)
        scores = []
        networks = self.inference_networks()
        # Metadata features are relative to the whole job (a class's share of the
        # particles, as in training): computed once, never per batch.
        meta_all = self.metadata(classes)
        try:
            for m in networks:
                m.to(dev)
            for start in range(0, len(classes), batch_size):
                if on_batch is not None:
                    on_batch()
                part = (
                    classes  # one batch: no copy of the images
                    if len(classes) <= batch_size
                    else classes.subset(
                        np.arange(start, min(start + batch_size, len(classes)))
                    )
                )
                images, _ = self.prepare(part)
                meta = meta_all[start : start + len(part)]
                logits = self.member_logits(images, meta, networks)
                scores.append(self.combine(logits).double().numpy())
        finally:
            for m in networks:
                m.to("cpu")
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64)

    def stored_threshold(self, mode: str = IMAGE_AND_METADATA) -> float:
        """The stored threshold for ``"image+metadata"`` or ``"image-only"`` scoring."""
        return self.image_only_threshold if mode == IMAGE_ONLY else self.threshold

    def threshold_for_fnr(
        self, target_fnr: float, mode: str = IMAGE_AND_METADATA
    ) -> float:
        """Recalibrate the threshold for another false-negative rate on the stored
        validation scores of ``mode``, by :func:`~cryodiscovery.core.model.calibration.
        calibrate` (robust across validation jobs when their ids are stored);
        ``InputError`` when the model has none, or stored data that do not belong
        together."""
        if self.validation_scores is None or self.validation_labels is None:
            raise InputError(
                None,
                f"model {self.name} stores no validation scores: "
                "use --threshold instead of --target-fnr",
            )
        if not 0.0 <= target_fnr < 1.0:
            raise InputError(None, f"--target-fnr must be in [0, 1), got {target_fnr}")
        try:
            calibration = calibrate(
                self.validation_labels,
                self.validation_scores,
                self.validation_scores_image_only,
                self.validation_groups,
                target_fnr,
            )
        except ValueError as err:
            raise InputError(
                None,
                f"model {self.name} cannot be recalibrated ({err}): "
                "use --threshold instead of --target-fnr",
            ) from err
        return calibration.threshold_for(mode == IMAGE_ONLY)

    def recalibrated(
        self,
        labels: npt.ArrayLike,
        scores: npt.ArrayLike,
        scores_image_only: npt.ArrayLike | None,
        groups: npt.ArrayLike | None,
        target_fnr: float,
        image_only_target_fnr: float | None = None,
    ) -> ClassScorer:
        """A scorer with the same networks whose every calibration field (both
        thresholds, target FNR, validation labels, scores of both modes, job ids) comes
        from one :func:`~cryodiscovery.core.model.calibration.calibrate` of these
        ``(n,)`` validation data; the one way training and the federation calibrate.
        ``image_only_target_fnr`` (None: ``target_fnr``) sets the image-only rate.

        Raises
        ------
        ValueError
            Arrays of different lengths, or no good class among ``labels``.
        """
        cal = calibrate(
            labels, scores, scores_image_only, groups, target_fnr, image_only_target_fnr
        )
        return ClassScorer(
            self.members,
            self.net_config,
            self.preprocess,
            self.rule,
            cal.threshold,
            target_fnr=cal.target_fnr,
            validation_labels=cal.labels,
            validation_scores=cal.scores,
            image_only_threshold=cal.image_only_threshold,
            validation_scores_image_only=cal.scores_image_only,
            validation_groups=cal.groups,
            image_only_target_fnr=(
                None if image_only_target_fnr is None else cal.image_only_target_fnr
            ),
            name=self.name,
            info={**self.info, "calibration": cal.description},
            sha256="",
        )

    def payload(self) -> dict[str, Any]:
        """Everything saved in a model file (plain values and tensors)."""
        return {
            "name": self.name,
            "net_config": json.dumps(self.net_config.to_dict()),
            "preprocess": json.dumps(self.preprocess.to_dict()),
            "rule": self.rule,
            "threshold": self.threshold,
            "target_fnr": self.target_fnr,
            "members": [
                {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
                for m in self.members
            ],
            "image_only_threshold": self.image_only_threshold,
            "image_only_target_fnr": self.image_only_target_fnr,
            "validation_labels": _tensor_or_none(self.validation_labels),
            "validation_scores": _tensor_or_none(self.validation_scores),
            "validation_scores_image_only": _tensor_or_none(
                self.validation_scores_image_only
            ),
            "validation_groups": _tensor_or_none(self.validation_groups),
            "info": json.dumps(self.info, default=json_default),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], sha256: str = "") -> ClassScorer:
        """Build a scorer from :meth:`payload` output; ``ValueError``/``KeyError`` if bad."""
        net_config = NetConfig.from_dict(json.loads(payload["net_config"]))
        pre = PreprocessConfig.from_dict(json.loads(payload["preprocess"]))
        members = []
        for state in payload["members"]:
            net = ClassNet(net_config)
            net.load_state_dict(state, strict=True)
            members.append(net)
        arrays = {
            k: None if payload.get(k) is None else payload[k].numpy()
            for k in (
                "validation_labels",
                "validation_scores",
                "validation_scores_image_only",
                "validation_groups",
            )
        }
        image_only = payload.get("image_only_threshold")
        image_only_fnr = payload.get("image_only_target_fnr")
        return cls(
            members,
            net_config,
            pre,
            str(payload["rule"]),
            float(payload["threshold"]),
            target_fnr=float(payload["target_fnr"]),
            image_only_threshold=None if image_only is None else float(image_only),
            **arrays,
            image_only_target_fnr=(
                None if image_only_fnr is None else float(image_only_fnr)
            ),
            name=str(payload["name"]),
            info=json.loads(payload["info"]),
            sha256=sha256,
        )


def _array_or_none(a: npt.ArrayLike | None, dtype: type) -> npt.NDArray[Any] | None:
    return None if a is None else np.asarray(a, dtype=dtype)


def _tensor_or_none(a: npt.NDArray[Any] | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def json_default(o: object) -> Any:
    """``json.dumps`` fallback for numpy and torch values."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray | torch.Tensor):
        return o.tolist()
    return str(o)
