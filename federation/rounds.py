"""The federation's rounds, driven by Flower's own ``Strategy.start``:
:class:`FederationRun` is the guarded strategy (:mod:`strategy`) with the run's round
work in Flower's hooks (train config, screen and aggregate, central evaluation and
publishing, the sites' final evaluation); the same rounds under SecAgg+ are driven by
:mod:`secagg_rounds` (Flower's legacy workflow). :mod:`server_app` sets a run up and
starts it.

Public API (server_app, tests, benchmarks; keep it stable)::

    FederationRun(grid, settings, val, result).start_rounds() -> ClassScorer
    FederationRun.train_config(rnd, scorer, evaluate=True) -> dict  # train message
    FederationResult(scorer, rounds: list[RoundSummary], versions, initial_metrics)
    RoundSummary; evaluation_dict(evaluation) -> dict[str, float]
    usable_aggregate(scorer, arrays, where) -> ClassScorer   # RuntimeError if unusable
    site_names(grid) -> dict[int, str]        # node id -> registered name or "node <id>"
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import task
from cryodiscovery.federation.accounting import DP_DELTA, central_dp_record
from cryodiscovery.federation.evaluation import EVALUATE_RECEIVED, received_metrics
from cryodiscovery.federation.polling import PollingGrid
from cryodiscovery.federation.registry import Contribution, ModelRegistry, ModelVersion
from cryodiscovery.federation.settings import ServerSettings
from cryodiscovery.federation.strategy import (
    GuardedStrategy,
    flower_strategy,
    site_labels,
)
from cryodiscovery.federation.validation import model_problem
from cryodiscovery.federation.wire import keep_statistics
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
)
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

#: Train-config keys that are the same in every round (given to ``Strategy.start``).
_RUN_TRAIN_KEYS = ("local-epochs", "lr-schedule", "seed")


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


def site_names(grid: Grid) -> dict[int, str]:
    """``node id -> label``: the name given at registration, else ``node <id>``."""
    return site_labels(grid)


def evaluation_dict(ev: task.Evaluation) -> dict[str, float]:
    return {
        "auc": ev.auc,
        "balanced_accuracy": ev.balanced_accuracy,
        "fnr": ev.fnr,
        "loss": ev.loss,
        "threshold": ev.threshold,
        "n": float(ev.n),
    }


def _metric_record(ev: task.Evaluation) -> MetricRecord:
    record = MetricRecord()
    for key, value in evaluation_dict(ev).items():
        record[key] = value
    return record


def usable_aggregate(
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


@dataclass
class _RoundTimes:
    """When the phases of the current round began and what it moved (for its summary)."""

    arrays: ArrayRecord  # the global model the round started from
    t0: float
    sent: float
    bytes_down: int
    replies: float = math.nan
    server: float = math.nan
    bytes_up: int = 0
    central: task.Evaluation | None = None
    site_metrics: MetricRecord | None = None


class FederationRun(GuardedStrategy):
    """One federation run as a Flower strategy: the guard's hooks (update screening,
    site minimum, site names) extended with the run's round work, and driven by Flower's
    own ``Strategy.start`` (:meth:`start_rounds`):

    - ``configure_train``: the round's train config (:meth:`train_config`);
    - ``aggregate_train``: the screened aggregate, checked, recalibrated and evaluated on
      the server's validation set, published to the registry;
    - ``configure_evaluate``: nothing before the last round (the sites evaluate the
      previous model on the next train message, ``evaluate-received``); after the last,
      every site evaluates the final model and runs its gate;
    - ``aggregate_evaluate``: the sites' results, logged and recorded in the registry;
    - ``evaluate_fn`` (:meth:`central_metrics`): the central metrics; closes the round's
      summary.

    Replies are collected through :class:`~.polling.PollingGrid` (Flower's deployment
    Grid checks for them every 3 s; see there).
    """

    def __init__(
        self,
        grid: Grid,
        settings: ServerSettings,
        val: task.PreparedSet,
        result: FederationResult,
    ) -> None:
        super().__init__(flower_strategy(settings.strategy), settings.strategy)
        self.grid, self.settings, self.val, self.result = grid, settings, val, result
        self.scorer = result.scorer  # the current global model (its spec, threshold)
        self.registry = ModelRegistry(settings.registry) if settings.registry else None
        self.info: dict[str, Any] = {
            "run_id": grid.run.run_id,
            "strategy": settings.strategy.name,
            "initial_model_sha256": result.scorer.sha256,
            "settings": repr(settings),
        }
        self.initial_info = dict(result.scorer.info)  # for the DP lineage
        self._times: dict[int, _RoundTimes] = {}

    def start_rounds(self) -> ClassScorer:
        """Run ``settings.num_rounds`` rounds with Flower's ``Strategy.start``; the
        final global model."""
        settings = self.settings
        first = self.train_config(1, self.scorer)
        self.start(
            grid=PollingGrid(self.grid),
            initial_arrays=task.scorer_to_arrays(self.scorer),
            num_rounds=settings.num_rounds,
            timeout=settings.strategy.round_timeout_s,
            # what every round's train config holds; configure_train adds the rest
            train_config=ConfigRecord({k: first[k] for k in _RUN_TRAIN_KEYS}),
            evaluate_config=ConfigRecord({"num-rounds": settings.num_rounds}),
            evaluate_fn=self.central_metrics,
        )
        return self.scorer

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The guard's train messages with this round's config."""
        t0 = time.perf_counter()
        config = ConfigRecord(
            {**dict(config), **self.train_config(server_round, self.scorer)}
        )
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._times[server_round] = _RoundTimes(
            arrays, t0, time.perf_counter(), arrays.count_bytes() * len(messages)
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The guard's screened aggregate, checked, its threshold recalibrated for
        ``target-fnr`` on the server's validation set (where it is evaluated), and
        published.

        This is done here, not in ``evaluate_fn``, because ``Strategy.start`` calls
        ``configure_evaluate`` before ``evaluate_fn``, and the last round's evaluate
        message must carry the recalibrated model (the threshold is in its spec) and
        the registry version it was published as.
        """
        times = self._times[server_round]
        replies = list(replies)
        times.replies = time.perf_counter()
        times.bytes_up = sum(
            next(iter(m.content.array_records.values())).count_bytes()
            for m in replies
            if m.has_content() and m.content.array_records
        )
        self._record_received(server_round, replies)
        new_arrays, metrics = super().aggregate_train(server_round, replies)
        if new_arrays is None:  # the guard raises before this; kept for type narrowing
            raise RuntimeError(f"round {server_round}: no aggregated model")
        if self.settings.strategy.dp:  # the noise reaches BatchNorm statistics too
            new_arrays = keep_statistics(
                new_arrays, times.arrays, task.named_arrays(self.scorer)
            )
        where = f"round {server_round} (strategy {self.settings.strategy.name})"
        candidate, times.central = task.recalibrate(
            usable_aggregate(self.scorer, new_arrays, where),
            self.val,
            self.settings.target_fnr,
        )
        self._publish(
            server_round,
            self.scorer,
            candidate,
            times.central,
            self._contributions(server_round),
        )
        self.scorer = candidate
        times.server = time.perf_counter()
        return new_arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """After the last round only: every site evaluates the final model and runs its
        gate (the message names the registry version, which a site records with the
        model it installs). Earlier models reach the sites with the next train message
        (``evaluate-received``), so those rounds send nothing here."""
        if server_round < self.settings.num_rounds:
            return []
        final: dict[str, Any] = {"model-spec": task.model_spec(self.scorer)}
        final.update(dict(config))
        version = self.result.versions[-1] if self.result.versions else None
        if version is not None and version.server_round == server_round:
            final["registry-version"] = version.version
            final["registry-sha256"] = version.sha256
        return super().configure_evaluate(
            server_round, arrays, ConfigRecord(final), grid
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The sites' evaluation of the final model: logged, each site's result (and
        gate decision) added to that version in the registry."""
        metrics = super().aggregate_evaluate(server_round, replies)
        self._times[server_round].site_metrics = metrics
        if metrics is not None:
            log.info(
                "round %d final model, as the sites evaluated it: %s",
                server_round,
                ", ".join(
                    f"{k} {v:.4g}"
                    for k, v in sorted(metrics.items())
                    if not isinstance(v, list)
                ),
            )
        results = self.site_results.get(server_round, {})
        version = self.result.versions[-1] if self.result.versions else None
        if (
            version is not None
            and version.server_round == server_round
            and self.registry is not None
            and results
        ):
            self.result.versions[-1] = self.registry.record_site_results(
                version.version, results
            )
        return metrics

    def central_metrics(
        self, server_round: int, arrays: ArrayRecord
    ) -> MetricRecord | None:
        """``evaluate_fn`` of ``Strategy.start``: the global model's metrics on the
        server's validation set (round 0: the initial model's), computed with its
        recalibration in :meth:`aggregate_train`; ends the round's summary."""
        if server_round == 0:
            return _metric_record(self.result.initial_metrics)
        times = self._times.pop(server_round)
        if times.central is None:  # aggregate_train raises before this
            raise RuntimeError(f"round {server_round}: no central evaluation")
        end = time.perf_counter()
        log.info(
            "round %d timing: send train %.2f s, wait for train replies %.2f s, "
            "screen+aggregate+central evaluation+publish %.2f s, evaluate phase %.2f s",
            server_round,
            times.sent - times.t0,
            times.replies - times.sent,
            times.server - times.replies,
            end - times.server,
        )
        verdicts = self.rounds[server_round]
        accepted = [v for v in verdicts if v.accepted]
        summary = RoundSummary(
            server_round=server_round,
            seconds=end - times.t0,
            accepted=len(accepted),
            dropped=len(verdicts) - len(accepted),
            examples=sum(
                int(v.num_examples) for v in accepted if math.isfinite(v.num_examples)
            ),
            central=times.central,
            sites={
                k: float(v)
                for k, v in (times.site_metrics or MetricRecord()).items()
                if not isinstance(v, list)
            },
            bytes_down=times.bytes_down,
            bytes_up=times.bytes_up,
            update_norms=tuple(v.delta_norm for v in accepted),
        )
        self._log_round(summary)
        self.result.rounds.append(summary)
        return _metric_record(times.central)

    def train_config(
        self, rnd: int, scorer: ClassScorer, evaluate: bool = True
    ) -> dict[str, Any]:
        """What a train message of round ``rnd`` tells the sites; ``evaluate=False``
        never asks them to evaluate the received model (SecAgg+)."""
        settings = self.settings
        asked = evaluate and rnd > 1 and (rnd - 1) % settings.evaluate_every == 0
        return {
            "model-spec": task.model_spec(scorer),
            "local-epochs": settings.local_epochs,
            "learning-rate": settings.round_learning_rate(rnd),
            "lr-schedule": settings.local_lr_schedule,
            "seed": settings.seed,
            EVALUATE_RECEIVED: asked,
        }

    @staticmethod
    def _log_round(summary: RoundSummary) -> None:
        log.info(
            "round %d: %d site(s) aggregated, %d dropped; central AUC %.4f FNR %.4f "
            "(threshold %.3f); %.1f s",
            summary.server_round,
            summary.accepted,
            summary.dropped,
            summary.central.auc,
            summary.central.fnr,
            summary.central.threshold,
            summary.seconds,
        )

    def _record_received(self, rnd: int, replies: list[Message]) -> None:
        """The sites' metrics of the previous round's model (carried by this round's
        train replies when asked), into that round's summary."""
        metrics = received_metrics(replies)
        if metrics is None or rnd < 2 or len(self.result.rounds) < rnd - 1:
            return
        sites = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        previous = self.result.rounds[rnd - 2]
        self.result.rounds[rnd - 2] = replace(previous, sites=sites)
        log.info(
            "round %d model on the sites' validation splits (from round %d's train "
            "replies): %s",
            rnd - 1,
            rnd,
            ", ".join(f"{k} {v:.4g}" for k, v in sorted(sites.items())),
        )

    def _contributions(self, rnd: int) -> list[Contribution]:
        return [
            Contribution(
                site=self.site(v.node_id),
                num_examples=int(v.num_examples)
                if math.isfinite(v.num_examples)
                else 0,
                accepted=v.accepted,
                reason=v.reason,
            )
            for v in self.rounds[rnd]
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
        federation: dict[str, Any] = {
            "server_round": rnd,
            "run_id": self.info["run_id"],
            "strategy": self.info["strategy"],
            "sites": sum(c.accepted for c in contributions),
            "central_validation": evaluation_dict(central),
        }
        metrics = evaluation_dict(central)
        privacy = self._central_dp(rnd)
        if privacy is not None:
            federation["central_dp"] = privacy
            metrics["central_dp_epsilon"] = privacy["epsilon"]
            metrics["central_dp_lineage_epsilon"] = privacy["lineage_epsilon"]
        candidate.info = {**candidate.info, "federation": federation}
        if self.registry is None:
            return
        version = self.registry.publish(
            lambda path: _save(candidate, path),
            server_round=rnd,
            metrics=metrics,
            contributions=contributions,
            run=self.info,
        )
        self.result.versions.append(version)

    def _central_dp(self, rnd: int) -> dict[str, float] | None:
        """Central DP spent after ``rnd`` rounds (see :func:`central_dp_record`),
        logged; ``None`` without central DP."""
        opts = self.settings.strategy
        if not opts.dp:
            return None
        record = central_dp_record(
            opts.dp_noise_multiplier, opts.dp_clipping_norm, rnd, self.initial_info
        )
        log.info(
            "central DP: %d noised round(s) in this run, site-level eps %.3g at delta "
            "%g (%.3g with the runs the starting model came from)",
            rnd,
            record["epsilon"],
            DP_DELTA,
            record["lineage_epsilon"],
        )
        return record


def _save(scorer: ClassScorer, path: Path) -> None:
    save_scorer(scorer, path)
