"""The federation server: a Flower ServerApp that runs the rounds, screens every update,
evaluates each global model on a server-held generated validation set and publishes
every version to the model registry.

Each round: sites train (``train`` messages carry the global arrays and a ConfigRecord
with ``model-spec``, ``local-epochs``, ``learning-rate``, ``seed`` and
``evaluate-received``: whether to report metrics of the received model, the previous
round's, on the site's validation split first); the guarded strategy drops bad updates
and aggregates the rest (:mod:`strategy`); the new global model's threshold is
recalibrated for ``target-fnr`` on the generated validation set, where it is also
evaluated; the version is published to the registry with its metrics and the
contribution of every site. After the last round sites evaluate the final model
(``evaluate`` messages), and each site's acceptance gate decides whether its scoring
switches to it.

Run config: see :mod:`cryodiscovery.federation.settings` (every key, default and meaning).
Plain rounds are driven by Flower's ``Strategy.start`` with the hooks in :mod:`~.rounds`;
SecAgg+ rounds by Flower's legacy workflow (:mod:`~.secagg_rounds`).

Public API (tests, benchmarks; keep it stable)::

    app                                      # the ServerApp
    ServerSettings; settings_from_run_config(run_config) -> ServerSettings
    RUN_CONFIG_KEYS  # every key; the Flower app's [tool.flwr.app.config] declares them all
    run_federation(grid, settings, *, validation=None, initial=None) -> FederationResult
    FederationResult(scorer, rounds: list[RoundSummary], versions, initial_metrics)
    generated_validation(seeds, n_classes) -> list[ClassAverages]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)
from cryodiscovery.federation import task
from cryodiscovery.federation.logsetup import ensure_logging
from cryodiscovery.federation.registry import ModelRegistry
from cryodiscovery.federation.rounds import (  # FederationResult, RoundSummary re-exported
    FederationResult as FederationResult,
)
from cryodiscovery.federation.rounds import (
    FederationRun,
    evaluation_dict,
)
from cryodiscovery.federation.rounds import (
    RoundSummary as RoundSummary,
)
from cryodiscovery.federation.secagg_rounds import secagg_rounds
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
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger(__name__)


def generated_validation(seeds: Sequence[int], n_classes: int) -> list[ClassAverages]:
    """The server's validation set: one generated Class2D run per seed."""
    config = SimulationConfig(n_classes=n_classes)
    return [simulate_class_averages(config, int(seed)) for seed in seeds]


def _initial_model(settings: ServerSettings) -> ClassScorer:
    if settings.initial_model is not None:
        return load_scorer(settings.initial_model)
    if settings.registry is not None:
        latest = ModelRegistry(settings.registry).latest()
        if latest is not None:
            log.info("starting from registry version %d", latest.version)
            return load_scorer(latest.checkpoint)
    return load_scorer(None)


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
    run = FederationRun(
        grid, settings, prepared, FederationResult(scorer, [], [], first)
    )
    run.info["initial_metrics"] = evaluation_dict(first)
    if settings.secagg:
        arrays = task.scorer_to_arrays(scorer)
        run.result.scorer = secagg_rounds(run, context, arrays, scorer)
        return run.result
    run.result.scorer = run.start_rounds()  # Flower's Strategy.start
    return run.result


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
