"""The facility "sidecar": a Flower ClientApp that trains the shared model on the
facility's own labelled classes and sends back only weights and scalar metrics.

Deployment: ``flower-supernode ... --node-config 'facility-config="/etc/cryodiscovery/
federation.yaml"'``; the ClientApp reads that file (see :mod:`config`) for every message
and refuses to work while ``enabled`` is false.

- **train**: rebuild the global model from the received arrays and the server's model
  spec, fine-tune it locally (:func:`task.train_locally`, at most ``caps.local_epochs``),
  reply with one ArrayRecord of weights and one MetricRecord ``num-examples``, ``loss``
  (plus ``received-*`` metrics of the received model on the local validation split, when
  the config asks with ``evaluate-received``; see :mod:`evaluation`).
- **evaluate**: metrics of the global model on the local validation split
  (``num-examples``, ``loss``, ``auc``, ``balanced-accuracy``, ``fnr``). On the last round
  the *acceptance gate* runs (on the global model fine-tuned on the site's own classes
  first, with ``personalise.epochs``): the global model replaces the site's model at
  ``model_path`` only if it is not worse than the current one (or the shipped default)
  by more than ``acceptance.tolerance``; otherwise the site keeps its model and logs why.
- **privacy**: with ``privacy.dp`` the update delta is clipped and noised on the site by
  Flower's ``LocalDpMod``; when the server asks for central DP (its config carries a
  clipping norm) Flower's ``fixedclipping_mod`` then clips the (noised) delta. Under
  either, the update's BatchNorm running statistics are the received global ones (before
  clipping and after the noise). The DP guarantee covers the weights; the scalar
  metrics (``num-examples``, ``loss``, validation metrics) are not noised. When the
  server runs SecAgg+,
  Flower's ``secaggplus_mod`` masks the update (the weights delta, see :mod:`secagg`); a
  site with ``privacy.secagg: true`` refuses to send an update any other way.
- **errors** reach the server as one generic line (no paths, no data); the details stay in
  the site's log.

Public API: ``app`` (the ClientApp), ``NODE_CONFIG_KEY``, ``facility_config(context)``,
``apply_caps(cfg)``, ``current_model(cfg)``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import gate, task
from cryodiscovery.federation.accounting import DP_DELTA
from cryodiscovery.federation.config import (
    NODE_CONFIG_KEY,
    FacilityConfig,
    load_facility_config,
)
from cryodiscovery.federation.evaluation import (
    EVALUATE_RECEIVED,
    RECEIVED_PREFIX,
    site_metrics,
)
from cryodiscovery.federation.harvest import Harvest
from cryodiscovery.federation.harvest_cache import cached_harvest
from cryodiscovery.federation.ledger import (
    BudgetExceeded,
    check_privacy_budget,
    record_release,
)
from cryodiscovery.federation.logsetup import ensure_logging, process_age_s
from cryodiscovery.federation.secagg import is_secagg_message, legacy_train
from cryodiscovery.federation.wire import is_packed, keep_statistics
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

log = logging.getLogger(__name__)

#: Train-config key by which Flower's ``DifferentialPrivacyClientSideFixedClipping``
#: asks sites for clipping (what ``fixedclipping_mod`` reads; its constant is private).
KEY_CLIPPING_NORM = "clipping_norm"


class SiteRefusal(RuntimeError):
    """The site declines a message; the text is safe to send to the server."""


def facility_config(context: Context) -> FacilityConfig:
    """The facility configuration named by the node config (enabled, else refused)."""
    path = context.node_config.get(NODE_CONFIG_KEY)
    if not isinstance(path, str) or not path:
        raise SiteRefusal(f"node config has no '{NODE_CONFIG_KEY}'")
    cfg = load_facility_config(Path(path))
    if not cfg.enabled:
        raise SiteRefusal("federation is disabled at this site")
    apply_caps(cfg)
    return cfg


def apply_caps(cfg: FacilityConfig) -> None:
    """Apply the site's CPU thread cap (``caps.threads``; 0 leaves torch's default)."""
    if cfg.caps.threads > 0 and torch.get_num_threads() != cfg.caps.threads:
        torch.set_num_threads(cfg.caps.threads)


def _guard_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Turn any failure into an error reply that names no file and holds no data; log
    how long the message took and how old the process was when it arrived (a deployment
    starts one ClientApp process per message, so that age is the start-up cost)."""
    age, start = process_age_s(), time.perf_counter()
    ensure_logging()
    try:
        reply = call_next(msg, context)
        log.info(
            "%s message handled in %.2f s (process started %.2f s before it arrived)",
            msg.metadata.message_type,
            time.perf_counter() - start,
            age,
        )
        return reply
    except SiteRefusal as err:
        log.warning("refused %s message: %s", msg.metadata.message_type, err)
        reason = str(err)
    except BudgetExceeded as err:
        log.warning("refused %s message: %s", msg.metadata.message_type, err)
        reason = "this site's privacy budget is spent"
    except InputError as err:
        log.error("site data or configuration error: %s", err)
        reason = "site data or configuration error (see the site's log)"
    except Exception:
        log.exception("%s failed", msg.metadata.message_type)
        reason = "site failed (see the site's log)"
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
    )


def _privacy_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Apply the site's local DP and the server's client-side clipping to train replies.

    Under either, the update's BatchNorm running statistics are the received global ones
    before clipping (the clipping budget goes to the weights) and again after the noise
    (which could make a variance negative); see :func:`wire.keep_statistics`.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    cfg = facility_config(context)
    if is_secagg_message(msg):  # SecAgg+ stages; the site's DP is applied in training
        return secaggplus_mod(msg, context, call_next)
    config = _config(msg)
    if cfg.privacy.secagg:
        raise SiteRefusal("this site sends updates only under secure aggregation")
    dp = cfg.privacy.dp
    central = KEY_CLIPPING_NORM in config
    if dp is None and not central:
        return call_next(msg, context)

    def trained(m: Message, c: Context) -> Message:
        return _keep_statistics(m, call_next(m, c), config)

    chain: ClientAppCallable = trained
    if dp is not None:
        check_privacy_budget(dp)
        # LocalDpMod's noise std is sensitivity * sqrt(2 ln(1.25/delta)) / epsilon; this
        # epsilon makes it noise_multiplier * clipping_norm.
        epsilon = (
            math.sqrt(2 * math.log(1.25 / DP_DELTA)) / dp.noise_multiplier
            if dp.noise_multiplier > 0
            else math.inf
        )
        local_dp = LocalDpMod(dp.clipping_norm, dp.clipping_norm, epsilon, DP_DELTA)
        chain = _bind(local_dp, trained)
    reply = fixedclipping_mod(msg, context, chain) if central else chain(msg, context)
    if dp is not None and not reply.has_error():
        reply = _keep_statistics(msg, reply, config)
        record_release(dp, msg.metadata.run_id, _int(config, "server-round", 0))
    return reply


def _keep_statistics(msg: Message, reply: Message, config: ConfigRecord) -> Message:
    """The reply with the received global BatchNorm running statistics (unchanged when
    it is an error or not a packed model)."""
    spec = config.get("model-spec")
    if reply.has_error() or not isinstance(spec, str):
        return reply
    (received,) = msg.content.array_records.values()
    (key, sent), *_ = reply.content.array_records.items()
    if not (is_packed(sent) and is_packed(received)):
        return reply
    reply.content.array_records[key] = keep_statistics(sent, received, _layout(spec))
    return reply


@functools.lru_cache(maxsize=2)
def _layout(spec: str) -> ArrayRecord:
    """Names and shapes of the exchanged arrays of the model ``spec`` describes (built
    once per spec: both statistics resets of a message use it)."""
    return task.named_arrays(task.scorer_shell(spec))


def _bind(mod: LocalDpMod, inner: ClientAppCallable) -> ClientAppCallable:
    def call(m: Message, c: Context) -> Message:
        return mod(m, c, inner)

    return call


app = ClientApp(mods=[_guard_mod, _privacy_mod])


def _config(msg: Message) -> ConfigRecord:
    records = msg.content.config_records
    if len(records) != 1:
        raise SiteRefusal(f"expected one ConfigRecord, got {len(records)}")
    return next(iter(records.values()))


def _global_model(msg: Message) -> ClassScorer:
    arrays = msg.content.array_records
    if len(arrays) != 1:
        raise SiteRefusal(f"expected one ArrayRecord, got {len(arrays)}")
    spec = _config(msg).get("model-spec")
    if not isinstance(spec, str):
        raise SiteRefusal("the server sent no model spec")
    try:
        return task.scorer_from_spec(spec, next(iter(arrays.values())))
    except ValueError as err:
        log.error("global model does not load: %s", err)
        raise SiteRefusal("the global model does not fit its spec") from err


def _int(config: ConfigRecord, key: str, default: int) -> int:
    value = config.get(key, default)
    return int(value) if isinstance(value, int | float) else default


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received global model on local data; reply weights + metrics."""
    cfg = facility_config(context)
    data = cached_harvest(cfg)
    if "fitins.parameters" in msg.content.array_records:  # SecAgg+ (legacy layout)
        reply: Message = legacy_train(msg, cfg, data)
        return reply
    config = _config(msg)
    scorer = _global_model(msg)
    received: dict[str, float] = {}
    if config.get(EVALUATE_RECEIVED) is True:  # the last round's model, before training
        ev = task.evaluate_scorer(scorer, data.validation)
        received = site_metrics(ev, RECEIVED_PREFIX)
    try:
        options = task.train_options(config, cfg.caps.local_epochs, cfg.caps.batch_size)
    except ValueError as err:
        raise SiteRefusal(str(err)) from err
    try:
        result = task.train_locally(scorer, data.train, data.validation, options)
    except ValueError as err:
        log.error("local training impossible: %s", err)
        raise SiteRefusal("not enough labelled classes at this site") from err
    log.info(
        "round %d: trained on %d classes in %.1f s, loss %.4f",
        _int(config, "server-round", 0),
        result.num_examples,
        result.seconds,
        result.loss,
    )
    metrics = MetricRecord(
        {"num-examples": result.num_examples, "loss": result.loss, **received}
    )
    content = RecordDict(
        {"arrays": task.scorer_to_arrays(result.scorer), "metrics": metrics}
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the global model on local validation data; the gate on the last round."""
    cfg = facility_config(context)
    data = cached_harvest(cfg)
    config = _config(msg)
    candidate = _global_model(msg)
    ev = task.evaluate_scorer(candidate, data.validation)
    server_round = _int(config, "server-round", 0)
    metrics = MetricRecord(site_metrics(ev))
    content = RecordDict({"metrics": metrics})
    if server_round >= _int(config, "num-rounds", 1 << 30):
        outcome, reason = _gate(cfg, candidate, data, config, ev)
        metrics.update(outcome)  # the server logs it and records it in the registry
        content["gate"] = ConfigRecord({"reason": reason})
    return Message(content, reply_to=msg)


def current_model(cfg: FacilityConfig) -> ClassScorer | None:
    """The model this site scores with: ``model_path``, else the shipped default."""
    if cfg.model_path is not None and cfg.model_path.is_file():
        return load_scorer(cfg.model_path)
    try:
        return load_scorer(None)
    except InputError:
        return None


def _gate(
    cfg: FacilityConfig,
    candidate: ClassScorer,
    data: Harvest,
    config: ConfigRecord,
    evaluated: task.Evaluation,
) -> tuple[dict[str, float], str]:
    """Personalise (when set), gate and install the final global model
    (``evaluated``: the global model on the site's validation split); the decision as
    ``gate-installed`` (1/0), ``gate-candidate``, ``gate-current`` (the compared metric,
    finite ones) and its reason. The install record names the registry version the
    server published the model as (``config``'s ``registry-version``/``-sha256``); the
    installed file's own checksum differs (this site writes it, with its own name)."""
    rnd = _int(config, "server-round", 0)
    if cfg.model_path is None:
        log.info("no model_path configured: the global model is not installed")
        return {"gate-installed": 0.0}, "no model_path configured: not installed"
    personal = gate.personalise_for_site(cfg, candidate, data, rnd)
    if personal is not candidate:
        candidate = personal
        evaluated = task.evaluate_scorer(candidate, data.validation)
    decision = gate.acceptance_gate(
        candidate,
        current_model(cfg),
        data.validation,
        cfg.acceptance.metric,
        cfg.acceptance.tolerance,
        evaluated,
    )
    outcome = {
        k: v
        for k, v in (
            ("gate-installed", float(decision.accepted)),
            ("gate-candidate", decision.candidate),
            ("gate-current", decision.current),
        )
        if math.isfinite(v)
    }
    if not decision.accepted:
        log.warning("acceptance gate: kept the current model: %s", decision.reason)
        return outcome, f"kept the current model: {decision.reason}"
    record: dict[str, Any] = {
        "source": "federation",
        "server_round": rnd,
        "registry_version": config.get("registry-version"),
        "registry_sha256": config.get("registry-sha256"),
        "gate": decision.reason,
        "personalised_epochs": gate.personalised_epochs(candidate),
        "installed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    gate.install_model(candidate, cfg.model_path, record)
    log.info("acceptance gate: installed the global model: %s", decision.reason)
    return outcome, f"installed: {decision.reason}"
