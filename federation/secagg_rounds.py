"""The federation's rounds under SecAgg+ (Flower's legacy workflow, see :mod:`secagg`):
sites train and send masked weights deltas; the securely aggregated mean delta is
screened, added to the global model, evaluated centrally and published like a plain
round (:class:`~.rounds.FederationRun`'s registry, history and checks).

Public API (server_app; keep it stable)::

    secagg_rounds(run, context, arrays, scorer) -> ClassScorer
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import task
from cryodiscovery.federation.registry import Contribution
from cryodiscovery.federation.rounds import (
    FederationRun,
    RoundSummary,
    site_names,
    usable_aggregate,
)
from cryodiscovery.federation.secagg import DeltaFedAvg, run_secagg_rounds
from cryodiscovery.federation.strategy import (
    NotEnoughSitesError,
    update_bounds,
    wait_for_sites,
)
from flwr.app import ArrayRecord, Context, RecordDict

log = logging.getLogger(__name__)


class _SecAggRounds:
    """The callbacks :class:`~.secagg.DeltaFedAvg` calls each round."""

    def __init__(self, run: FederationRun, scorer: ClassScorer) -> None:
        self.run, self.scorer, self.t0 = run, scorer, time.perf_counter()

    def fit_config(self, rnd: int) -> dict[str, Any]:
        """The train instruction's config (as a plain round's, no site evaluation)."""
        config = self.run.train_config(rnd, self.scorer, evaluate=False)
        return {**config, "server-round": rnd}

    def on_round(
        self, rnd: int, new: ArrayRecord, sites: list[tuple[int, int]]
    ) -> None:
        """Check, recalibrate, publish and record the round's new global model."""
        run = self.run
        names = site_names(run.grid)
        contributions = [
            Contribution(names.get(n, f"node {n}"), k, True) for n, k in sites
        ]
        candidate, central = task.recalibrate(
            usable_aggregate(self.scorer, new, f"round {rnd} (SecAgg+)"),
            run.val,
            run.settings.target_fnr,
        )
        run._publish(rnd, self.scorer, candidate, central, contributions)
        seconds = time.perf_counter() - self.t0
        examples = sum(k for _, k in sites)
        run.result.rounds.append(
            RoundSummary(rnd, seconds, len(sites), 0, examples, central, {}, 0, 0)
        )
        log.info(
            "round %d (SecAgg+): %d site(s); central AUC %.4f FNR %.4f; %.1f s",
            rnd,
            len(sites),
            central.auc,
            central.fnr,
            seconds,
        )
        self.scorer, self.t0 = candidate, time.perf_counter()


def secagg_rounds(
    run: FederationRun,
    context: Context | None,
    arrays: ArrayRecord,
    scorer: ClassScorer,
) -> ClassScorer:
    """Run ``run.settings.num_rounds`` SecAgg+ rounds from ``arrays``/``scorer``; the
    final model. ``context`` is the ServerApp's (a fresh one when absent)."""
    settings = run.settings
    opts = settings.strategy
    nodes = wait_for_sites(run.grid, opts.min_sites, opts.wait_for_sites_s)
    if len(nodes) < opts.min_sites:
        raise NotEnoughSitesError(
            f"{len(nodes)} site(s) connected, min-sites is {opts.min_sites}"
        )
    rounds = _SecAggRounds(run, scorer)
    strategy = DeltaFedAvg(
        arrays,
        update_bounds(opts, arrays),
        rounds.fit_config,
        rounds.on_round,
        opts.min_sites,
    )
    run_secagg_rounds(
        run.grid,
        context or Context(run.grid.run.run_id, 0, {}, RecordDict(), {}),
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
    return rounds.scorer
