"""Secure aggregation (SecAgg+): the server learns only the example-weighted mean of the
sites' updates, never one site's update.

Flower 1.41 offers SecAgg+ only through its older record API: ``SecAggPlusWorkflow``
inside the legacy ``DefaultWorkflow`` on the server, ``secaggplus_mod`` on the client
with fit/evaluate instructions in the legacy record layout. This module holds both ends;
``server_app`` and ``client_app`` switch to it when the run config says ``secagg = true``.

Differences from the default path (documented for operators):

- Sites send the *weights delta* (masked), so SecAgg+'s fixed-point range
  (``secagg-clipping-range``, default 1.0) covers it; the server adds the mean delta to the
  global model.
- Per-site screening is impossible (that is the point); the *aggregate* is screened
  instead (finite, the model's shapes, delta norm within the bound) and the run stops if
  it fails, without being able to say which site was at fault. Robust strategies and
  central DP do not apply; a site's own local DP (``privacy.dp``) still does.
- Sites do not evaluate or gate during the run (Flower's legacy evaluation phase has no
  timeout); they install the model with ``cryodiscovery federation pull --config``, which
  applies the acceptance gate. Flower's legacy client manager waits for ``min-sites``
  without a deadline, so the server checks the connected sites once before starting.

Public API::

    is_secagg_message(msg) -> bool                          # ClientApp side
    legacy_train(msg, config: FacilityConfig, data: Harvest) -> Message
    DeltaFedAvg(start, bounds, fit_config, on_round, min_sites)   # ServerApp side
    run_secagg_rounds(grid, context, strategy, rounds, timeout, clipping_range)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import task
from cryodiscovery.federation.config import FacilityConfig
from cryodiscovery.federation.harvest import Harvest
from cryodiscovery.federation.ledger import check_privacy_budget, record_release
from cryodiscovery.federation.validation import UpdateBounds, check_update
from cryodiscovery.federation.wire import statistics_mask
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

log = logging.getLogger(__name__)


def is_secagg_message(msg: Message) -> bool:
    """True for a message of the SecAgg+ protocol (it carries the protocol's configs)."""
    return msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records


def _named(spec: str, ndarrays: list[np.ndarray]) -> tuple[ClassScorer, ArrayRecord]:
    """Rebuild the global model from legacy (unnamed, ordered) parameters."""
    shell = task.scorer_shell(spec)
    names = list(task.scorer_to_arrays(shell).keys())
    if len(names) != len(ndarrays):
        raise ValueError(f"{len(ndarrays)} arrays for a model of {len(names)}")
    arrays = ArrayRecord(
        {k: Array(np.asarray(v)) for k, v in zip(names, ndarrays, strict=True)}
    )
    return task.with_arrays(shell, arrays), arrays


def _clip_and_noise(delta: list[np.ndarray], clipping_norm: float, std: float) -> None:
    """Scale ``delta`` (in place) to an L2 norm of at most ``clipping_norm``, then add
    Gaussian noise of ``std``: the flat clipping and noise of Flower's ``LocalDpMod``
    (arXiv:1710.06963), which Flower exposes only through private modules."""
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in delta))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    rng = np.random.default_rng()  # fresh OS entropy: noise must not be reproducible
    for array in delta:
        array *= scale
        array += rng.normal(0.0, std, array.shape).astype(array.dtype)


def legacy_train(msg: Message, cfg: FacilityConfig, data: Harvest) -> Message:
    """Train on a SecAgg+ fit instruction; reply the (optionally noised) weights delta."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    conf = fitins.config
    spec = conf.get("model-spec")
    if not isinstance(spec, str):
        raise ValueError("the server sent no model spec")
    dp = cfg.privacy.dp
    if dp is not None:
        check_privacy_budget(dp)
    scorer, arrays = _named(spec, parameters_to_ndarrays(fitins.parameters))
    options = task.train_options(conf, cfg.caps.local_epochs, cfg.caps.batch_size)
    result = task.train_locally(scorer, data.train, data.validation, options)
    trained = task.scorer_to_arrays(result.scorer)
    delta = [trained[k].numpy() - arrays[k].numpy() for k in arrays]
    if dp is not None:  # LocalDpMod's clipping and noise, on the delta
        stats = statistics_mask(task.named_arrays(scorer))  # kept global (see wire)
        delta[0][stats] = 0
        _clip_and_noise(delta, dp.clipping_norm, dp.noise_multiplier * dp.clipping_norm)
        delta[0][stats] = 0
        record_release(dp, msg.metadata.run_id, int(conf.get("server-round", 0)))
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(delta),
        result.num_examples,
        {"loss": result.loss},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


class DeltaFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg for sites that send deltas: the securely aggregated mean
    delta is screened, added to the global model and handed to ``on_round``.

    ``on_round(server_round, new_global_arrays, [(node_id, num_examples), ...])`` runs
    the server's central evaluation and registry publication.
    """

    def __init__(
        self,
        start: ArrayRecord,
        bounds: UpdateBounds,
        fit_config: Callable[[int], dict[str, Any]],
        on_round: Callable[[int, ArrayRecord, list[tuple[int, int]]], None],
        min_sites: int,
    ) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=min_sites,
            min_available_clients=min_sites,
            on_fit_config_fn=fit_config,
            initial_parameters=ndarrays_to_parameters(start.to_numpy_ndarrays()),
        )
        self.global_arrays, self.bounds, self.on_round = start, bounds, on_round

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        mean, metrics = super().aggregate_fit(server_round, results, failures)
        if mean is None:
            raise RuntimeError(
                f"round {server_round}: secure aggregation gave no result"
            )
        deltas = parameters_to_ndarrays(mean)
        ref = self.global_arrays
        if len(deltas) != len(ref):
            raise RuntimeError(
                f"round {server_round}: aggregate has {len(deltas)} arrays"
            )
        new = ArrayRecord(
            {
                k: Array(np.asarray(ref[k].numpy() + d, dtype=ref[k].dtype))
                for k, d in zip(ref.keys(), deltas, strict=True)
            }
        )
        sites = [(int(proxy.node_id), int(res.num_examples)) for proxy, res in results]
        probe = RecordDict(
            {"arrays": new, "metrics": MetricRecord({"num-examples": 1})}
        )
        verdict = check_update(probe, ref, self.bounds)
        if not verdict.accepted:
            raise RuntimeError(
                f"round {server_round}: the securely aggregated update was rejected "
                f"({verdict.reason}); the site at fault cannot be named"
            )
        self.global_arrays = new
        self.on_round(server_round, new, sites)
        return ndarrays_to_parameters(new.to_numpy_ndarrays()), metrics


def run_secagg_rounds(
    grid: Grid,
    context: Context,
    strategy: DeltaFedAvg,
    rounds: int,
    timeout: float,
    clipping_range: float,
) -> None:
    """Run ``rounds`` SecAgg+ rounds with Flower's legacy workflow."""
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=rounds, round_timeout=timeout),
        strategy=strategy,
    )
    secagg = SecAggPlusWorkflow(
        num_shares=1.0,
        reconstruction_threshold=0.7,
        clipping_range=clipping_range,
        max_weight=1e6,
        timeout=timeout,
    )
    DefaultWorkflow(fit_workflow=secagg)(grid, legacy)
