"""The federation server: a Flower ServerApp that runs the rounds, screens every update,
evaluates each global model on a server-held generated validation set and publishes
every version to the model registry.

Each round: sites train (``train`` messages carry the global arrays and a ConfigRecord
with ``model-spec``, ``local-epochs``, ``learning-rate``, ``seed``); the guarded strategy
drops bad updates and aggregates the rest (:mod:`strategy`); the new global model's
threshold is recalibrated for ``target-fnr`` on the generated validation set, where it is
also evaluated; the version is published to the registry with its metrics and the
contribution of every site; then sites evaluate it (``evaluate`` messages; on the last
round each site's acceptance gate decides whether its scoring switches to it).

Run config: see :mod:`cryodiscovery.federation.settings` (every key, default and meaning).

Public API (tests, benchmarks; keep it stable)::

    app                                      # the ServerApp
    ServerSettings; settings_from_run_config(run_config) -> ServerSettings
    RUN_CONFIG_KEYS  # every key; the Flower app's [tool.flwr.app.config] declares them all
    run_federation(grid, settings, *, validation=None, initial=None) -> FederationResult
    FederationResult(scorer, rounds: list[RoundSummary], versions, initial_metrics)
    generated_validation(seeds, n_classes) -> list[ClassAverages]
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryodiscovery.core.checkpoint import ClassScorer, load_scorer, save_scorer
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)
from cryodiscovery.federation import task
from cryodiscovery.federation.logsetup import ensure_logging
from cryodiscovery.federation.polling import send_and_receive
from cryodiscovery.federation.registry import Contribution, ModelRegistry, ModelVersion
from cryodiscovery.federation.secagg import DeltaFedAvg, run_secagg_rounds
from cryodiscovery.federation.settings import (  # re-exported: the deployment code uses them
    _SERVER_KEYS as _SERVER_KEYS,
)
from cryodiscovery.federation.settings import (
    _STRATEGY_KEYS as _STRATEGY_KEYS,
)
from cryodiscovery.federation.settings import (
    RUN_CONFIG_KEYS as RUN_CONFIG_KEYS,
)
from cryodiscovery.federation.settings import (
    ServerSettings,
    settings_from_run_config,
)
from cryodiscovery.federation.strategy import (
    NotEnoughSitesError,
    build_strategy,
    update_bounds,
    wait_for_sites,
)
from cryodiscovery.federation.validation import model_problem
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger(__name__)


def generated_validation(seeds: Sequence[int], n_classes: int) -> list[ClassAverages]:
    """The server's validation set: one generated Class2D run per seed."""
    config = SimulationConfig(n_classes=n_classes)
    return [simulate_class_averages(config, int(seed)) for seed in seeds]


@dataclass(frozen=True)
class RoundSummary:
    """What happened in one round (all scalars)."""

    server_round: int
    seconds: float
    accepted: int
    dropped: int
    examples: int
    central: task.Evaluation
    sites: dict[str, float]
    bytes_down: int
    bytes_up: int
    update_norms: tuple[float, ...] = ()


@dataclass
class FederationResult:
    """The final global model and the history of the run."""

    scorer: ClassScorer
    rounds: list[RoundSummary]
    versions: list[ModelVersion]
    initial_metrics: task.Evaluation


def _initial_model(settings: ServerSettings) -> ClassScorer:
    if settings.initial_model is not None:
        return load_scorer(settings.initial_model)
    if settings.registry is not None:
        latest = ModelRegistry(settings.registry).latest()
        if latest is not None:
            log.info("starting from registry version %d", latest.version)
            return load_scorer(latest.checkpoint)
    return load_scorer(None)


def _site_names(grid: Grid) -> dict[int, str]:
    """``node id -> label`` with the registered name and key fingerprint when known."""
    names: dict[int, str] = {}
    try:
        for info in grid.get_nodes():
            label = f"node {info.node_id}"
            if getattr(info, "name", ""):
                label += f" ({info.name})"
            if getattr(info, "public_key", b""):
                label += f" key {hashlib.sha256(info.public_key).hexdigest()[:16]}"
            names[int(info.node_id)] = label
    except Exception as err:  # informative only: the Grid may not know more than ids
        log.debug("no node details from the grid: %s", err)
    return names


def _evaluation_dict(ev: task.Evaluation) -> dict[str, float]:
    return {
        "auc": ev.auc,
        "balanced_accuracy": ev.balanced_accuracy,
        "fnr": ev.fnr,
        "loss": ev.loss,
        "threshold": ev.threshold,
        "n": float(ev.n),
    }


def run_federation(
    grid: Grid,
    settings: ServerSettings,
    *,
    validation: Sequence[ClassAverages] | None = None,
    initial: ClassScorer | None = None,
    context: Context | None = None,
) -> FederationResult:
    """Run ``settings.num_rounds`` rounds on ``grid`` (see the module docstring).

    ``validation`` and ``initial`` replace the generated validation set and the initial
    model (tests, benchmarks); ``context`` is the ServerApp's (needed by SecAgg+'s
    legacy workflow; a fresh one is made when absent).
    """
    scorer = initial if initial is not None else _initial_model(settings)
    val = (
        list(validation)
        if validation is not None
        else generated_validation(
            settings.validation_seeds, settings.validation_classes
        )
    )
    prepared = task.prepare_sets(scorer, val)  # resampled once, not every round
    first = task.evaluate_scorer(scorer, prepared)
    log.info("initial model: central AUC %.4f, FNR %.4f", first.auc, first.fnr)
    run = _Run(grid, settings, prepared, FederationResult(scorer, [], [], first))
    run.info["initial_metrics"] = _evaluation_dict(first)
    arrays = task.scorer_to_arrays(scorer)
    if settings.secagg:
        run.result.scorer = _secagg_rounds(run, context, arrays, scorer)
        return run.result
    for rnd in range(1, settings.num_rounds + 1):
        arrays, scorer = run.round(rnd, arrays, scorer)
    run.result.scorer = scorer
    return run.result


def _secagg_rounds(
    run: _Run, context: Context | None, arrays: ArrayRecord, scorer: ClassScorer
) -> ClassScorer:
    """The rounds under SecAgg+ (see :mod:`secagg`): same evaluation and registry."""
    settings = run.settings
    opts = settings.strategy
    nodes = wait_for_sites(run.grid, opts.min_sites, opts.wait_for_sites_s)
    if len(nodes) < opts.min_sites:
        raise NotEnoughSitesError(
            f"{len(nodes)} site(s) connected, min-sites is {opts.min_sites}"
        )
    state: dict[str, Any] = {"scorer": scorer, "t0": time.perf_counter()}

    def fit_config(rnd: int) -> dict[str, Any]:
        return {
            "model-spec": task.model_spec(state["scorer"]),
            "local-epochs": settings.local_epochs,
            "learning-rate": settings.learning_rate,
            "seed": settings.seed,
            "server-round": rnd,
        }

    def on_round(rnd: int, new: ArrayRecord, sites: list[tuple[int, int]]) -> None:
        names = _site_names(run.grid)
        contributions = [
            Contribution(names.get(n, f"node {n}"), k, True) for n, k in sites
        ]
        candidate, central = task.recalibrate(
            _usable_aggregate(state["scorer"], new, f"round {rnd} (SecAgg+)"),
            run.val,
            settings.target_fnr,
        )
        run._publish(rnd, state["scorer"], candidate, central, contributions)
        seconds = time.perf_counter() - state["t0"]
        run.result.rounds.append(
            RoundSummary(
                rnd, seconds, len(sites), 0, sum(k for _, k in sites), central, {}, 0, 0
            )
        )
        log.info(
            "round %d (SecAgg+): %d site(s); central AUC %.4f FNR %.4f; %.1f s",
            rnd,
            len(sites),
            central.auc,
            central.fnr,
            seconds,
        )
        state.update(scorer=candidate, t0=time.perf_counter())

    strategy = DeltaFedAvg(
        arrays, update_bounds(opts, arrays), fit_config, on_round, opts.min_sites
    )
    ctx = context or Context(run.grid.run.run_id, 0, {}, RecordDict(), {})
    run_secagg_rounds(
        run.grid,
        ctx,
        strategy,
        settings.num_rounds,
        opts.round_timeout_s,
        settings.secagg_clipping_range,
    )
    if len(run.result.rounds) < settings.num_rounds:
        raise RuntimeError(
            f"SecAgg+ stopped after {len(run.result.rounds)} of {settings.num_rounds} "
            "round(s) (too few sites completed the protocol; see the log)"
        )
    return state["scorer"]


def _usable_aggregate(
    scorer: ClassScorer, arrays: ArrayRecord, where: str
) -> ClassScorer:
    """``scorer`` with the aggregated ``arrays``; ``RuntimeError`` (nothing is published)
    when that is not a usable model."""
    candidate = task.with_arrays(scorer, arrays)
    problem = model_problem(task.named_arrays(candidate))
    if problem is not None:
        raise RuntimeError(
            f"{where}: the aggregated model is not usable ({problem}); nothing was "
            "published"
        )
    return candidate


class _Run:
    """State of one federation run: strategy, registry, history."""

    def __init__(
        self,
        grid: Grid,
        settings: ServerSettings,
        val: task.PreparedSet,
        result: FederationResult,
    ) -> None:
        self.grid, self.settings, self.val, self.result = grid, settings, val, result
        self.strategy = build_strategy(settings.strategy)
        self.strategy.summary()
        self.registry = ModelRegistry(settings.registry) if settings.registry else None
        self.info: dict[str, Any] = {
            "run_id": grid.run.run_id,
            "strategy": settings.strategy.name,
            "initial_model_sha256": result.scorer.sha256,
            "settings": repr(settings),
        }

    def round(
        self, rnd: int, arrays: ArrayRecord, scorer: ClassScorer
    ) -> tuple[ArrayRecord, ClassScorer]:
        """Train, screen, aggregate, evaluate centrally, publish, evaluate on sites."""
        t0 = time.perf_counter()
        timeout = self.settings.strategy.round_timeout_s
        train_config = ConfigRecord(
            {
                "model-spec": task.model_spec(scorer),
                "local-epochs": self.settings.local_epochs,
                "learning-rate": self.settings.learning_rate,
                "seed": self.settings.seed,
            }
        )
        messages = list(
            self.strategy.configure_train(rnd, arrays, train_config, self.grid)
        )
        t_sent = time.perf_counter()
        replies = send_and_receive(self.grid, messages, timeout)
        t_replies = time.perf_counter()
        new_arrays, _ = self.strategy.aggregate_train(rnd, replies)
        if new_arrays is None:  # the guard raises before this; kept for type narrowing
            raise RuntimeError(f"round {rnd}: no aggregated model")
        where = f"round {rnd} (strategy {self.settings.strategy.name})"
        candidate, central = task.recalibrate(
            _usable_aggregate(scorer, new_arrays, where),
            self.val,
            self.settings.target_fnr,
        )
        contributions = self._contributions(rnd)
        self._publish(rnd, scorer, candidate, central, contributions)
        eval_config = ConfigRecord(
            {
                "model-spec": task.model_spec(candidate),
                "num-rounds": self.settings.num_rounds,
            }
        )
        t_server = time.perf_counter()
        site_metrics: MetricRecord | None = None
        if rnd % self.settings.evaluate_every == 0 or rnd == self.settings.num_rounds:
            eval_messages = self.strategy.configure_evaluate(
                rnd, new_arrays, eval_config, self.grid
            )
            site_metrics = self.strategy.aggregate_evaluate(
                rnd, send_and_receive(self.grid, eval_messages, timeout)
            )
        log.info(
            "round %d timing: send train %.2f s, wait for train replies %.2f s, "
            "screen+aggregate+central evaluation+publish %.2f s, evaluate phase %.2f s",
            rnd,
            t_sent - t0,
            t_replies - t_sent,
            t_server - t_replies,
            time.perf_counter() - t_server,
        )
        summary = RoundSummary(
            server_round=rnd,
            seconds=time.perf_counter() - t0,
            accepted=sum(c.accepted for c in contributions),
            dropped=sum(not c.accepted for c in contributions),
            examples=sum(c.num_examples for c in contributions if c.accepted),
            central=central,
            sites={
                k: float(v)
                for k, v in (site_metrics or MetricRecord()).items()
                if not isinstance(v, list)
            },
            bytes_down=arrays.count_bytes() * len(messages),
            bytes_up=sum(
                next(iter(m.content.array_records.values())).count_bytes()
                for m in replies
                if m.has_content() and m.content.array_records
            ),
            update_norms=tuple(
                v.delta_norm for v in self.strategy.rounds[rnd] if v.accepted
            ),
        )
        log.info(
            "round %d: %d site(s) aggregated, %d dropped; central AUC %.4f FNR %.4f "
            "(threshold %.3f); %.1f s",
            rnd,
            summary.accepted,
            summary.dropped,
            central.auc,
            central.fnr,
            central.threshold,
            summary.seconds,
        )
        self.result.rounds.append(summary)
        return new_arrays, candidate

    def _contributions(self, rnd: int) -> list[Contribution]:
        names = _site_names(self.grid)
        return [
            Contribution(
                site=names.get(v.node_id, f"node {v.node_id}"),
                num_examples=int(v.num_examples)
                if math.isfinite(v.num_examples)
                else 0,
                accepted=v.accepted,
                reason=v.reason,
            )
            for v in self.strategy.rounds[rnd]
        ]

    def _publish(
        self,
        rnd: int,
        previous: ClassScorer,
        candidate: ClassScorer,
        central: task.Evaluation,
        contributions: list[Contribution],
    ) -> None:
        candidate.name = f"{previous.name.split('@')[0]}@federated-r{rnd}"
        candidate.info = {
            **candidate.info,
            "federation": {
                "server_round": rnd,
                "run_id": self.info["run_id"],
                "strategy": self.info["strategy"],
                "sites": sum(c.accepted for c in contributions),
                "central_validation": _evaluation_dict(central),
            },
        }
        if self.registry is None:
            return
        version = self.registry.publish(
            lambda path: _save(candidate, path),
            server_round=rnd,
            metrics=_evaluation_dict(central),
            contributions=contributions,
            run=self.info,
        )
        self.result.versions.append(version)


def _save(scorer: ClassScorer, path: Path) -> None:
    save_scorer(scorer, path)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: settings from the run config, then :func:`run_federation`."""
    ensure_logging()
    settings = settings_from_run_config(dict(context.run_config))
    result = run_federation(grid, settings, context=context)
    last = result.rounds[-1] if result.rounds else None
    if last is not None:
        log.info(
            "federation finished: %d round(s), final central AUC %.4f (initial %.4f)",
            len(result.rounds),
            last.central.auc,
            result.initial_metrics.auc,
        )
