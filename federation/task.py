"""Glue between Flower messages and the core model: what is exchanged, local training and
evaluation on top of :mod:`cryodiscovery.core.model.training`, and the acceptance gate.

What crosses the network is the floating-point state of every ensemble member (weights
and BatchNorm running statistics), keyed ``m<i>.<name>`` (:func:`named_arrays`) and
packed into one vector (:mod:`wire`); integer buffers (``num_batches_tracked``) stay
local. The server also sends a *model spec* (architecture,
preprocessing, ensemble rule, threshold) in its ConfigRecord, so a site can rebuild the
global model whatever model it uses itself.

Public API (client_app, server_app, cli, tests, benchmarks; keep it stable)::

    scorer_to_arrays(scorer: ClassScorer) -> ArrayRecord   # packed: what is sent
    named_arrays(scorer: ClassScorer) -> ArrayRecord       # m<i>.<name> -> tensor
    model_spec(scorer) -> str                       # JSON, server -> site
    scorer_from_spec(spec: str, arrays: ArrayRecord) -> ClassScorer
    scorer_shell(spec: str) -> ClassScorer          # fresh weights, that architecture
    with_arrays(base: ClassScorer, arrays: ArrayRecord) -> ClassScorer
    parameter_table(arrays) -> list[tuple[str, tuple[int, ...], str, int]]
    LocalTrainOptions(epochs, batch_size, lr, proximal_mu, seed, schedule)
    train_options(config, max_epochs, batch_size) -> LocalTrainOptions  # from a train config
    train_locally(scorer, train_sets, val_sets, options) -> LocalTrainResult
    prepare_sets(scorer, sets) -> PreparedSet      # inputs made once, reused each round
    evaluate_scorer(scorer, sets | PreparedSet) -> Evaluation
    recalibrate(scorer, sets | PreparedSet, target_fnr) -> tuple[ClassScorer, Evaluation]
    (the acceptance gate and model installation are in :mod:`gate`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.optim.optimizer as torch_optimizer
from cryodiscovery.core.classes import ClassAverages, Label
from cryodiscovery.core.model.ensemble import BoostConfig, train_members
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.model.training import (
    LR_SCHEDULES,
    TrainConfig,
    TrainingSet,
    build_training_set,
)
from cryodiscovery.core.report.metrics import classification_report
from cryodiscovery.federation.wire import is_packed, pack, unpack
from flwr.app import Array, ArrayRecord

log = logging.getLogger(__name__)


def scorer_to_arrays(scorer: ClassScorer) -> ArrayRecord:
    """What crosses the network: :func:`named_arrays` packed into one vector
    (:mod:`wire`)."""
    return pack(named_arrays(scorer))


def named_arrays(scorer: ClassScorer) -> ArrayRecord:
    """The exchanged state of ``scorer``: float tensors of each member, in order."""
    out = ArrayRecord()
    for i, member in enumerate(scorer.members):
        for name, tensor in member.state_dict().items():
            if tensor.is_floating_point():
                out[f"m{i}.{name}"] = Array(tensor.detach().cpu().numpy().copy())
    return out


def model_spec(scorer: ClassScorer) -> str:
    """JSON describing how to rebuild ``scorer`` from its arrays (sent to sites)."""
    return json.dumps(
        {
            "name": scorer.name,
            "net_config": scorer.net_config.to_dict(),
            "preprocess": scorer.preprocess.to_dict(),
            "rule": scorer.rule,
            "members": len(scorer.members),
            "threshold": scorer.threshold,
            "target_fnr": scorer.target_fnr,
        },
        sort_keys=True,
    )


def scorer_shell(spec: str) -> ClassScorer:
    """A freshly initialised scorer with the architecture of a :func:`model_spec`.

    Raises
    ------
    ValueError
        A malformed spec.
    """
    try:
        d = json.loads(spec)
        net_config = NetConfig.from_dict(dict(d["net_config"]))
        pre = PreprocessConfig.from_dict(dict(d["preprocess"]))
        n_members = int(d["members"])
        if not 1 <= n_members <= 16:
            raise ValueError(f"{n_members} members")
        return ClassScorer(
            [ClassNet(net_config) for _ in range(n_members)],
            net_config,
            pre,
            str(d["rule"]),
            float(d["threshold"]),
            target_fnr=float(d["target_fnr"]),
            name=str(d["name"]),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed model spec ({err})") from err


def scorer_from_spec(spec: str, arrays: ArrayRecord) -> ClassScorer:
    """Build a scorer from a :func:`model_spec` and exchanged arrays.

    Raises
    ------
    ValueError
        A malformed spec, or arrays that do not fit the architecture exactly.
    """
    return with_arrays(scorer_shell(spec), arrays)


def with_arrays(base: ClassScorer, arrays: ArrayRecord) -> ClassScorer:
    """A copy of ``base`` whose exchanged tensors are ``arrays`` (packed, or named with
    exact names/shapes)."""
    scorer = ClassScorer.from_payload(base.payload())
    expected = named_arrays(scorer)
    if is_packed(arrays):
        arrays = unpack(arrays, expected)
    if list(arrays.keys()) != list(expected.keys()):
        missing = sorted(set(expected.keys()) - set(arrays.keys()))[:3]
        extra = sorted(set(arrays.keys()) - set(expected.keys()))[:3]
        raise ValueError(
            f"arrays do not fit the model (missing {missing}, extra {extra})"
        )
    for i, member in enumerate(scorer.members):
        state = member.state_dict()
        for name, tensor in state.items():
            key = f"m{i}.{name}"
            if key in arrays:
                value = torch.from_numpy(np.array(arrays[key].numpy(), copy=True))
                if value.shape != tensor.shape:
                    raise ValueError(
                        f"'{key}' has shape {tuple(value.shape)}, "
                        f"the model needs {tuple(tensor.shape)}"
                    )
                state[name] = value.to(tensor.dtype)
        member.load_state_dict(state)
        member.eval()
    return scorer


def parameter_table(arrays: ArrayRecord) -> list[tuple[str, tuple[int, ...], str, int]]:
    """``(name, shape, dtype, bytes)`` of every exchanged array (raw tensor bytes)."""
    rows = []
    for key, arr in arrays.items():
        shape = tuple(int(s) for s in arr.shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
        rows.append((key, shape, arr.dtype, nbytes))
    return rows


@dataclass(frozen=True)
class LocalTrainOptions:
    """One site's training in one round.

    ``proximal_mu > 0`` adds FedProx's ``mu/2 * ||w - w_global||^2`` to the loss;
    ``schedule``: the learning rate within this training (``core.model.training.LR_SCHEDULES``).
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    proximal_mu: float = 0.0
    seed: int = 0
    schedule: str = "onecycle"


def train_options(
    config: Mapping[str, Any], max_epochs: int, batch_size: int
) -> LocalTrainOptions:
    """A site's options for one round from the server's train config: ``local-epochs``
    (at most ``max_epochs``, the site's cap), ``learning-rate``, ``proximal-mu``,
    ``seed`` (+ 7919 x ``server-round``: a new seed every round) and ``lr-schedule``
    (absent, as from older servers: one-cycle). ``ValueError`` on an unknown schedule.
    """

    def number(key: str, default: float) -> float:
        value = config.get(key, default)
        return float(value) if isinstance(value, int | float) else default

    fallback = LocalTrainOptions()  # for keys the server did not send
    schedule = config.get("lr-schedule", fallback.schedule)
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr-schedule {schedule!r} from the server")
    return LocalTrainOptions(
        epochs=max(1, min(int(number("local-epochs", fallback.epochs)), max_epochs)),
        batch_size=batch_size,
        lr=number("learning-rate", fallback.lr),
        proximal_mu=number("proximal-mu", fallback.proximal_mu),
        seed=int(number("seed", fallback.seed)) + 7919 * int(number("server-round", 0)),
        schedule=str(schedule),
    )


@dataclass(frozen=True)
class LocalTrainResult:
    """The locally trained scorer and scalar statistics (all that may be reported)."""

    scorer: ClassScorer
    num_examples: int
    loss: float
    seconds: float


@contextlib.contextmanager
def _proximal_term(reference: list[torch.Tensor], mu: float) -> Iterator[None]:
    """Add FedProx's gradient ``mu * (w - w_ref)`` before each optimizer step of this
    thread whose parameters match ``reference``, so ``core.model.training`` is used unchanged."""
    if mu <= 0:
        yield
        return
    thread = threading.get_ident()

    def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        if threading.get_ident() != thread:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if len(params) != len(reference) or any(
            p.shape != r.shape for p, r in zip(params, reference, strict=True)
        ):
            return
        with torch.no_grad():
            for p, r in zip(params, reference, strict=True):
                if p.grad is not None:
                    p.grad.add_(p.detach() - r, alpha=mu)

    handle = torch_optimizer.register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


_TRAINING_SETS: dict[
    tuple[tuple[int, ...], PreprocessConfig], tuple[Any, TrainingSet]
] = {}


def _training_set(sets: Sequence[ClassAverages], pre: PreprocessConfig) -> TrainingSet:
    """:func:`build_training_set`, memoised for the same set objects in this process
    (a site's harvest is reused across rounds; the cache keeps the sets alive, so their
    ids cannot be reused while cached)."""
    key = (tuple(id(s) for s in sets), pre)
    if key not in _TRAINING_SETS:
        if len(_TRAINING_SETS) >= 16:
            _TRAINING_SETS.clear()
        _TRAINING_SETS[key] = (tuple(sets), build_training_set(sets, pre))
    return _TRAINING_SETS[key][1]


def train_locally(
    scorer: ClassScorer,
    train_sets: Sequence[ClassAverages],
    val_sets: Sequence[ClassAverages],
    options: LocalTrainOptions,
) -> LocalTrainResult:
    """Fine-tune every member of ``scorer`` on the site's classes for ``options.epochs``.

    Members are trained in order as in :func:`~cryodiscovery.core.model.ensemble.train_boosted`
    (the second with emphasis on the first one's errors, the third on their
    disagreement), each by :func:`~cryodiscovery.core.model.training.train_net` starting from
    the received weights; the ensemble rule and member count never change.
    """
    start = time.perf_counter()
    pre, net_config = scorer.preprocess, scorer.net_config
    train = _training_set(train_sets, pre)
    val = _training_set(val_sets, pre)
    if len(train) < 4 or len(val) < 1:
        raise ValueError(
            f"too few labelled classes ({len(train)} train, {len(val)} validation)"
        )
    boost = BoostConfig()
    cfg = TrainConfig(
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        patience=options.epochs + 1,
        seed=options.seed,
        schedule=options.schedule,
    )
    members = scorer.members

    def proximal(k: int) -> contextlib.AbstractContextManager[None]:
        reference = [p.detach().clone() for p in members[k].parameters()]
        return _proximal_term(reference, options.proximal_mu)

    results = train_members(
        train,
        val,
        net_config,
        pre,
        cfg,
        [m.state_dict() for m in members],
        boost,
        label="local member",
        around=proximal,
    )
    losses = [r.history[-1]["train_loss"] if r.history else math.nan for r in results]
    trained = ClassScorer(
        [r.net for r in results],
        net_config,
        pre,
        scorer.rule,
        scorer.threshold,
        target_fnr=scorer.target_fnr,
        name=scorer.name,
    )
    return LocalTrainResult(
        trained, len(train), float(np.mean(losses)), time.perf_counter() - start
    )


@dataclass(frozen=True)
class Evaluation:
    """Scalar metrics of a scorer on labelled classes (rates NaN when undefined)."""

    n: int
    n_good: int
    auc: float
    balanced_accuracy: float
    fnr: float
    loss: float
    threshold: float

    def metric(self, name: str) -> float:
        """``"auc"`` or ``"balanced_accuracy"``."""
        return float(getattr(self, name))


@dataclass(frozen=True, eq=False)
class PreparedSet:
    """Labelled classes turned into network inputs once (they do not change between
    rounds): ``labels`` ``(n,)`` 0/1, ``images`` ``(n, 1, s, s)``, ``meta`` ``(n, F)``."""

    labels: np.ndarray
    images: torch.Tensor
    meta: torch.Tensor
    preprocess: PreprocessConfig


def prepare_sets(scorer: ClassScorer, sets: Sequence[ClassAverages]) -> PreparedSet:
    """Network inputs for the labelled classes of ``sets`` (unknown labels dropped)."""
    whole = [s for s in sets if len(s) and (s.labels != Label.UNKNOWN).any()]
    parts = [s.subset(s.labels != Label.UNKNOWN) for s in whole]
    if not parts:
        size = scorer.preprocess.size
        return PreparedSet(
            np.zeros(0, np.int64),
            torch.zeros(0, 1, size, size),
            torch.zeros(0, scorer.net_config.meta_features),
            scorer.preprocess,
        )
    # images of the labelled classes; metadata features (some relative to the job, a
    # class's share of its particles) from the whole job, as scoring computes them
    inputs = [
        (
            scorer.prepare(part)[0],
            scorer.metadata(job)[torch.from_numpy(job.labels != Label.UNKNOWN)],
        )
        for job, part in zip(whole, parts, strict=True)
    ]
    labels = np.concatenate(
        [(s.labels == Label.SELECTED).astype(np.int64) for s in parts]
    )
    return PreparedSet(
        labels,
        torch.cat([i for i, _ in inputs]),
        torch.cat([m for _, m in inputs]),
        scorer.preprocess,
    )


def _prepared(
    scorer: ClassScorer, data: Sequence[ClassAverages] | PreparedSet
) -> PreparedSet:
    if isinstance(data, PreparedSet):
        if data.preprocess != scorer.preprocess:
            raise ValueError("prepared inputs were made with another preprocessing")
        return data
    return prepare_sets(scorer, data)


def predict_sets(
    scorer: ClassScorer,
    data: Sequence[ClassAverages] | PreparedSet,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels 0/1, scores)`` over the labelled classes of ``data``."""
    prepared = _prepared(scorer, data)
    scores = [
        scorer.combine(
            scorer.member_logits(
                prepared.images[i : i + batch_size], prepared.meta[i : i + batch_size]
            )
        )
        .double()
        .numpy()
        for i in range(0, len(prepared.labels), batch_size)
    ]
    return prepared.labels, (np.concatenate(scores) if scores else np.zeros(0))


def _evaluation(y: np.ndarray, p: np.ndarray, threshold: float) -> Evaluation:
    if len(y) == 0:
        return Evaluation(0, 0, math.nan, math.nan, math.nan, math.nan, threshold)
    rep = classification_report(y, p, threshold)
    q = np.clip(p, 1e-6, 1 - 1e-6)
    loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return Evaluation(
        len(y), int(y.sum()), rep.auc, rep.balanced_accuracy, rep.fnr, loss, threshold
    )


def evaluate_scorer(
    scorer: ClassScorer, data: Sequence[ClassAverages] | PreparedSet
) -> Evaluation:
    """AUC, balanced accuracy and FNR at the scorer's threshold, and mean BCE loss."""
    y, p = predict_sets(scorer, data)
    return _evaluation(y, p, scorer.threshold)


def recalibrate(
    scorer: ClassScorer, data: Sequence[ClassAverages] | PreparedSet, target_fnr: float
) -> tuple[ClassScorer, Evaluation]:
    """A copy of ``scorer`` calibrated for ``target_fnr`` on ``data`` by core's one
    calibration path (:meth:`ClassScorer.recalibrated`): both thresholds and every stored
    validation field (labels, scores with and without metadata, no job ids) replaced
    together, so users can ask for another FNR; and its evaluation there."""
    prepared = _prepared(scorer, data)
    y, p = predict_sets(scorer, prepared)
    if y.sum() == 0:
        log.warning(
            "no good classes to calibrate on; threshold kept at %.3f", scorer.threshold
        )
        copy = ClassScorer.from_payload(scorer.payload())
        return copy, _evaluation(y, p, copy.threshold)
    image_only = predict_sets(scorer, _without_metadata(prepared))[1]
    # The image-only rate stays the model's own (chosen on real class averages).
    calibrated = scorer.recalibrated(
        y, p, image_only, None, target_fnr, scorer.image_only_target_fnr
    )
    return calibrated, _evaluation(y, p, calibrated.threshold)


def _without_metadata(prepared: PreparedSet) -> PreparedSet:
    """The same classes as a bare stack gives them: metadata features all zero (as
    training scores its image-only validation)."""
    return dataclasses.replace(prepared, meta=torch.zeros_like(prepared.meta))
