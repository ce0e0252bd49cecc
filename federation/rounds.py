"""The federation's round driver: one round of train, screen, aggregate, central
evaluation, publish and site evaluation (:class:`FederationRun`); the same rounds under
SecAgg+ are driven by :mod:`secagg_rounds`. :mod:`server_app` sets a run up and calls
them.

Public API (server_app, tests, benchmarks; keep it stable)::

    FederationRun(grid, settings, val, result).round(rnd, arrays, scorer)
        -> (arrays, scorer)
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import task
from cryodiscovery.federation.accounting import DP_DELTA, central_dp_record
from cryodiscovery.federation.evaluation import EVALUATE_RECEIVED, received_metrics
from cryodiscovery.federation.polling import send_and_receive
from cryodiscovery.federation.registry import Contribution, ModelRegistry, ModelVersion
from cryodiscovery.federation.settings import ServerSettings
from cryodiscovery.federation.strategy import build_strategy, site_labels
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


class FederationRun:
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
        self.initial_info = dict(result.scorer.info)  # for the DP lineage

    def round(
        self, rnd: int, arrays: ArrayRecord, scorer: ClassScorer
    ) -> tuple[ArrayRecord, ClassScorer]:
        """Train, screen, aggregate, evaluate centrally, publish; after the last round,
        sites evaluate the final model."""
        t0 = time.perf_counter()
        timeout = self.settings.strategy.round_timeout_s
        messages = list(
            self.strategy.configure_train(
                rnd, arrays, ConfigRecord(self.train_config(rnd, scorer)), self.grid
            )
        )
        t_sent = time.perf_counter()
        replies = send_and_receive(self.grid, messages, timeout)
        t_replies = time.perf_counter()
        self._record_received(rnd, replies)
        new_arrays, candidate, central = self._aggregate(rnd, arrays, scorer, replies)
        contributions = self._contributions(rnd)
        self._publish(rnd, scorer, candidate, central, contributions)
        t_server = time.perf_counter()
        site_metrics: MetricRecord | None = None
        if rnd == self.settings.num_rounds:  # earlier models: on the next train message
            site_metrics = self._final_evaluation(rnd, new_arrays, candidate, timeout)
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
        self._log_round(summary)
        self.result.rounds.append(summary)
        return new_arrays, candidate

    def _final_evaluation(
        self,
        rnd: int,
        arrays: ArrayRecord,
        candidate: ClassScorer,
        timeout: float,
    ) -> MetricRecord | None:
        """Sites evaluate the final model and run their gate (the message names the
        registry version, which a site records with the model it installs); their
        results are logged and added to that version in the registry."""
        config: dict[str, Any] = {
            "model-spec": task.model_spec(candidate),
            "num-rounds": self.settings.num_rounds,
        }
        version = self.result.versions[-1] if self.result.versions else None
        if version is not None and version.server_round == rnd:
            config["registry-version"] = version.version
            config["registry-sha256"] = version.sha256
        messages = self.strategy.configure_evaluate(
            rnd, arrays, ConfigRecord(config), self.grid
        )
        metrics = self.strategy.aggregate_evaluate(
            rnd, send_and_receive(self.grid, messages, timeout)
        )
        if metrics is not None:
            log.info(
                "round %d final model, as the sites evaluated it: %s",
                rnd,
                ", ".join(
                    f"{k} {v:.4g}"
                    for k, v in sorted(metrics.items())
                    if not isinstance(v, list)
                ),
            )
        results = self.strategy.site_results.get(rnd, {})
        if version is not None and self.registry is not None and results:
            self.result.versions[-1] = self.registry.record_site_results(
                version.version, results
            )
        return metrics

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

    def _aggregate(
        self,
        rnd: int,
        arrays: ArrayRecord,
        scorer: ClassScorer,
        replies: list[Message],
    ) -> tuple[ArrayRecord, ClassScorer, task.Evaluation]:
        """Screened aggregate, checked and recalibrated: (arrays, model, central)."""
        new_arrays, _ = self.strategy.aggregate_train(rnd, replies)
        if new_arrays is None:  # the guard raises before this; kept for type narrowing
            raise RuntimeError(f"round {rnd}: no aggregated model")
        if self.settings.strategy.dp:  # the noise reaches BatchNorm statistics too
            new_arrays = keep_statistics(new_arrays, arrays, task.named_arrays(scorer))
        where = f"round {rnd} (strategy {self.settings.strategy.name})"
        candidate, central = task.recalibrate(
            usable_aggregate(scorer, new_arrays, where),
            self.val,
            self.settings.target_fnr,
        )
        return new_arrays, candidate, central

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
                site=self.strategy.site(v.node_id),
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
