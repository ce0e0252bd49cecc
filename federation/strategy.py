"""Server strategies chosen by run config, each wrapped so that every update is checked
before aggregation, with explicit waits, timeouts and a minimum number of sites.

Strategies (run config ``strategy``): ``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi``
(Flower's), and for untrusted sites ``trimmed-mean``, ``median``, ``krum`` (Flower 1.41's
``FedTrimmedAvg``, ``FedMedian``, ``Krum``). Optional central DP with client-side
clipping wraps the strategy in Flower's ``DifferentialPrivacyClientSideFixedClipping``;
then the update norm bound is the clipping norm, so a site that did not clip is rejected
instead of silently voiding the guarantee.

Behaviour (documented for operators):

- Waiting for sites: at most ``wait_for_sites_s`` for ``min_sites`` connected sites, then
  :class:`NotEnoughSitesError` (Flower's own sampling would wait forever).
- Round timeout: replies not in after ``round_timeout_s`` are treated as dropped.
- A site dropping out mid-round, failing, or sending a rejected update: the round goes on
  with the others when at least ``min_sites`` updates were accepted, else the run stops
  with :class:`NotEnoughSitesError` naming each site and why it was dropped. A site asked
  to train that sent nothing by the timeout is recorded as dropped ("no reply").
- Sites are named by the facility name given at registration (``flwr supernode register
  --name``), else ``node <id>``; the names are read from the Grid whenever sites are
  asked, so a site that failed later keeps its name.

Public API (used by ``server_app``, tests, benchmarks; keep it stable)::

    STRATEGIES: tuple[str, ...]
    StrategyOptions (frozen dataclass, fields below)
    build_strategy(options: StrategyOptions) -> GuardedStrategy
    flower_strategy(options: StrategyOptions) -> Strategy  # what the guard wraps
    update_bounds(options, reference: ArrayRecord) -> UpdateBounds
    wait_for_sites(grid, minimum, seconds) -> list[int]
    site_labels(grid) -> dict[int, str]     # node id -> registered name, else "node <id>"
    GuardedStrategy(inner: Strategy, options).rounds -> dict[int, list[UpdateVerdict]]
        .site(node_id) -> str               # the site's label
    NotEnoughSitesError(RuntimeError)
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryodiscovery.federation.evaluation import aggregate_metrics
from cryodiscovery.federation.polling import DelegatingGrid
from cryodiscovery.federation.run_defaults import default
from cryodiscovery.federation.validation import (
    NUM_EXAMPLES,
    UpdateBounds,
    UpdateVerdict,
    screen_replies,
)
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "trimmed-mean",
    "median",
    "krum",
)


class NotEnoughSitesError(RuntimeError):
    """Fewer usable sites than the configured minimum (the run stops)."""


@dataclass(frozen=True)
class StrategyOptions:
    """Server-side federation settings (from the run config, see ``server_app``;
    defaults: :mod:`~.run_defaults`).

    Parameters
    ----------
    name:
        One of :data:`STRATEGIES`.
    min_sites:
        Minimum connected sites to start a round and accepted updates to aggregate.
    fraction_train:
        Fraction of connected sites asked to train each round (at least ``min_sites``).
    round_timeout_s:
        Seconds to wait for replies in each train/evaluate phase.
    wait_for_sites_s:
        Seconds to wait for ``min_sites`` sites to be connected before a round.
    proximal_mu:
        FedProx proximal weight (sent to sites as ``proximal-mu``).
    server_lr, tau:
        FedAdam/FedYogi server learning rate (``eta``) and adaptivity (``tau``).
    trim_beta:
        Trimmed mean: fraction cut from each tail, in [0, 0.5).
    krum_byzantine:
        Krum: number of sites assumed malicious.
    max_update_norm:
        L2 bound on each site's weights delta; 0 derives it as
        ``max_relative_update * ||global weights||``.
    max_relative_update:
        See ``max_update_norm``.
    max_examples:
        Largest ``num-examples`` a site may claim.
    dp_noise_multiplier, dp_clipping_norm:
        Central DP with client-side clipping when ``dp_clipping_norm > 0``: sites clip
        their delta to the norm; the server adds Gaussian noise of std
        ``dp_noise_multiplier * dp_clipping_norm / min_sites`` to the aggregate.
    """

    name: str = str(default("strategy"))
    min_sites: int = int(default("min-sites"))
    fraction_train: float = float(default("fraction-train"))
    round_timeout_s: float = float(default("round-timeout"))
    wait_for_sites_s: float = float(default("wait-for-sites"))
    proximal_mu: float = float(default("proximal-mu"))
    server_lr: float = float(default("server-lr"))
    tau: float = float(default("tau"))
    trim_beta: float = float(default("trim-beta"))
    krum_byzantine: int = int(default("krum-byzantine"))
    max_update_norm: float = float(default("max-update-norm"))
    max_relative_update: float = float(default("max-relative-update"))
    max_examples: int = int(default("max-examples"))
    dp_noise_multiplier: float = float(default("dp-noise-multiplier"))
    dp_clipping_norm: float = float(default("dp-clipping-norm"))

    def __post_init__(self) -> None:
        checks = {
            "strategy": (self.name in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
            "min-sites": (self.min_sites >= 1, ">= 1"),
            "fraction-train": (0 < self.fraction_train <= 1, "in (0, 1]"),
            "round-timeout": (self.round_timeout_s > 0, "> 0 seconds"),
            "wait-for-sites": (self.wait_for_sites_s >= 0, ">= 0 seconds"),
            "proximal-mu": (self.proximal_mu >= 0, ">= 0"),
            "server-lr": (self.server_lr > 0, "> 0"),
            "tau": (self.tau > 0, "> 0"),
            "trim-beta": (0 <= self.trim_beta < 0.5, "in [0, 0.5)"),
            "krum-byzantine": (self.krum_byzantine >= 0, ">= 0"),
            "max-update-norm": (self.max_update_norm >= 0, ">= 0"),
            "max-relative-update": (self.max_relative_update > 0, "> 0"),
            "max-examples": (self.max_examples >= 1, ">= 1"),
            "dp-noise-multiplier": (self.dp_noise_multiplier >= 0, ">= 0"),
            "dp-clipping-norm": (self.dp_clipping_norm >= 0, ">= 0"),
        }
        for key, (ok, want) in checks.items():
            if not ok:
                raise ValueError(f"run config '{key}' must be {want}")

    @property
    def dp(self) -> bool:
        """True when central DP with client-side clipping is on."""
        return self.dp_clipping_norm > 0


class _SnapshotGrid(DelegatingGrid):
    """A Grid whose node list is frozen, so Flower's sampler never waits forever."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        super().__init__(grid)
        self._nodes = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)


class GuardedStrategy(Strategy):
    """Wraps a Flower strategy: update screening, site minimum, bounded waits.

    ``rounds[r]`` holds the verdict on every train reply of round ``r`` (who was
    aggregated with how many examples, who was dropped and why).
    """

    def __init__(self, inner: Strategy, options: StrategyOptions) -> None:
        self.inner, self.options = inner, options
        self.rounds: dict[int, list[UpdateVerdict]] = {}
        self._reference: ArrayRecord | None = None
        self._labels: dict[int, str] = {}
        self._asked: set[int] = set()
        #: round -> site -> its evaluation reply (metrics, gate decision)
        self.site_results: dict[int, dict[str, dict[str, Any]]] = {}

    def site(self, node_id: int) -> str:
        """The site's registered name (``node <id>`` when it has none)."""
        return self._labels.get(int(node_id), f"node {node_id}")

    def _learn_names(self, grid: Grid) -> None:
        new = {k: v for k, v in site_labels(grid).items() if k not in self._labels}
        if new:
            log.info(
                "sites: %s",
                ", ".join(
                    v if v == f"node {k}" else f"{v} = node {k}"
                    for k, v in sorted(new.items(), key=lambda kv: kv[1])
                ),
            )
        self._labels.update(new)

    def summary(self) -> None:
        o = self.options
        log.info(
            "strategy %s, min sites %d, round timeout %.0f s, update bound %s",
            o.name,
            o.min_sites,
            o.round_timeout_s,
            self._bound_text(),
        )
        self.inner.summary()

    def _bound_text(self) -> str:
        o = self.options
        if o.dp:
            return f"DP clipping norm {o.dp_clipping_norm:g}"
        if o.max_update_norm > 0:
            return f"{o.max_update_norm:g}"
        return f"{o.max_relative_update:g} x ||global||"

    def _bounds(self, reference: ArrayRecord) -> UpdateBounds:
        return update_bounds(self.options, reference)

    def _wait_for_sites(self, grid: Grid, minimum: int) -> list[int]:
        return wait_for_sites(grid, minimum, self.options.wait_for_sites_s)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._wait_for_sites(grid, self.options.min_sites)
        if len(nodes) < self.options.min_sites:
            raise NotEnoughSitesError(
                f"round {server_round}: {len(nodes)} site(s) connected after "
                f"{self.options.wait_for_sites_s:.0f} s, min-sites is "
                f"{self.options.min_sites}"
            )
        self._reference = arrays
        self._learn_names(grid)
        messages = list(
            self.inner.configure_train(
                server_round, arrays, config, _SnapshotGrid(grid, nodes)
            )
        )
        self._asked = {int(m.metadata.dst_node_id) for m in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._reference is None:
            raise RuntimeError("aggregate_train called before configure_train")
        reference = self._reference
        accepted, verdicts = screen_replies(
            replies, reference, self._bounds(reference), self.site
        )
        missing = self._asked - {v.node_id for v in verdicts}
        for node in sorted(missing, key=self.site):
            log.warning("no update from %s: no reply", self.site(node))
            verdicts.append(UpdateVerdict(node, False, "no reply"))
        self.rounds[server_round] = verdicts
        if len(accepted) < self.options.min_sites:
            dropped = "; ".join(
                f"{self.site(v.node_id)}: {v.reason}"
                for v in verdicts
                if not v.accepted
            )
            raise NotEnoughSitesError(
                f"round {server_round}: {len(accepted)} usable update(s), min-sites is "
                f"{self.options.min_sites} (replies: {len(verdicts)}"
                f"{'; ' + dropped if dropped else ''})"
            )
        log.info(
            "round %d: aggregating %d update(s), %d dropped",
            server_round,
            len(accepted),
            len(verdicts) - len(accepted),
        )
        if self.options.dp:  # equal weights: what the DP noise (sigma C / m) assumes
            for msg in accepted:
                next(iter(msg.content.metric_records.values()))[NUM_EXAMPLES] = 1.0
        arrays, metrics = self.inner.aggregate_train(server_round, accepted)
        if arrays is None:
            raise RuntimeError(f"round {server_round}: the strategy produced no model")
        return _restore(arrays, reference), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask every connected site to evaluate (built here, not by the wrapped
        strategy, whose sampler would wait forever once fewer than ``min_sites`` are
        left)."""
        nodes = list(grid.get_node_ids())
        self._learn_names(grid)
        if not nodes:
            log.warning("round %d: no site connected for evaluation", server_round)
            return []
        config["server-round"] = server_round
        content = RecordDict({"arrays": arrays, "config": config})
        return [
            Message(content, dst_node_id=node, message_type=MessageType.EVALUATE)
            for node in nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        good = []
        for msg in replies:
            if msg.has_error():
                log.warning(
                    "round %d: evaluation failed on %s: %s",
                    server_round,
                    self.site(msg.metadata.src_node_id),
                    msg.error.reason,
                )
            elif len(msg.content.metric_records) == 1 and not msg.content.array_records:
                good.append(msg)
                self._record_site_result(server_round, msg)
            else:
                log.warning(
                    "round %d: dropped malformed evaluation reply from %s",
                    server_round,
                    self.site(msg.metadata.src_node_id),
                )
        if not good:
            return None
        return aggregate_metrics([m.content for m in good], NUM_EXAMPLES)

    def _record_site_result(self, server_round: int, msg: Message) -> None:
        """Keep and log one site's evaluation reply: its metrics and, after the last
        round, its gate decision (``gate-*`` metrics, ``gate`` config ``reason``)."""
        site = self.site(msg.metadata.src_node_id)
        metrics = next(iter(msg.content.metric_records.values()))
        result: dict[str, Any] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float)
        }
        gate = msg.content.config_records.get("gate")
        if gate is not None and isinstance(gate.get("reason"), str):
            result["gate"] = str(gate["reason"])
        self.site_results.setdefault(server_round, {})[site] = result
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in sorted(result.items()) if k != "gate"
        )
        if "gate" in result:
            shown += f"; gate: {result['gate']}"
        log.info(
            "round %d: %s evaluated the global model: %s", server_round, site, shown
        )


def wait_for_sites(grid: Grid, minimum: int, seconds: float) -> list[int]:
    """Node ids once ``minimum`` sites are connected, or whatever is there after
    ``seconds`` (the caller decides whether that is enough)."""
    deadline = time.monotonic() + seconds
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() >= deadline:
            return nodes
        log.info("waiting for sites: %d connected, %d needed", len(nodes), minimum)
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def site_labels(grid: Grid) -> dict[int, str]:
    """``node id -> label`` of the nodes the Grid lists: the name given at registration
    (``flwr supernode register --name``), else ``node <id>``; a name two nodes share
    gets the node id added."""
    names: dict[int, str] = {}
    try:
        for info in grid.get_nodes():
            name = str(getattr(info, "name", "") or "")
            names[int(info.node_id)] = name or f"node {info.node_id}"
    except Exception as err:  # informative only: a Grid may know no more than ids
        log.debug("no node names from the grid: %s", err)
    counts = Counter(names.values())
    return {
        k: f"{v} (node {k})" if counts[v] > 1 and v != f"node {k}" else v
        for k, v in names.items()
    }


def update_bounds(options: StrategyOptions, reference: ArrayRecord) -> UpdateBounds:
    """The limits an update against the global ``reference`` must respect."""
    if options.dp:  # clipped deltas are <= the norm; allow float32 rounding
        bound = options.dp_clipping_norm * (1 + 1e-4) + 1e-6
    elif options.max_update_norm > 0:
        bound = options.max_update_norm
    else:
        norm = math.sqrt(
            sum(
                float(np.sum(a.numpy().astype(np.float64) ** 2))
                for a in reference.values()
            )
        )
        bound = options.max_relative_update * max(norm, 1e-12)
    return UpdateBounds(max_delta_norm=bound, max_examples=options.max_examples)


def _restore(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """Cast the aggregate back to the model's dtypes (a usable model is checked by the
    round driver, which knows the layout: :func:`~.rounds.usable_aggregate`)."""
    out = ArrayRecord()
    for key, ref in reference.items():
        value = np.asarray(arrays[key].numpy(), dtype=ref.dtype)
        if not np.isfinite(value).all():
            raise RuntimeError(f"aggregated '{key}' is not finite")
        out[key] = Array(np.ascontiguousarray(value))
    return out


def build_strategy(options: StrategyOptions) -> GuardedStrategy:
    """The configured Flower strategy, DP-wrapped if asked, inside the guard."""
    return GuardedStrategy(flower_strategy(options), options)


def flower_strategy(options: StrategyOptions) -> Strategy:
    """The configured Flower strategy, DP-wrapped if asked (what the guard wraps)."""
    common: dict[str, Any] = {
        "fraction_train": options.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": options.min_sites,
        "min_evaluate_nodes": 1,
        "min_available_nodes": options.min_sites,
        "train_metrics_aggr_fn": aggregate_metrics,
        "evaluate_metrics_aggr_fn": aggregate_metrics,
    }
    inner: Strategy
    name = options.name
    if name == "fedavg":
        inner = FedAvg(**common)
    elif name == "fedprox":
        inner = FedProx(**common, proximal_mu=options.proximal_mu)
    elif name == "fedadam":
        inner = FedAdam(**common, eta=options.server_lr, tau=options.tau)
    elif name == "fedyogi":
        inner = FedYogi(**common, eta=options.server_lr, tau=options.tau)
    elif name == "trimmed-mean":
        inner = FedTrimmedAvg(**common, beta=options.trim_beta)
    elif name == "median":
        inner = FedMedian(**common)
    else:
        inner = Krum(**common, num_malicious_nodes=options.krum_byzantine)
    if options.dp:
        inner = DifferentialPrivacyClientSideFixedClipping(
            inner,
            noise_multiplier=options.dp_noise_multiplier,
            clipping_norm=options.dp_clipping_norm,
            num_sampled_clients=options.min_sites,
        )
    return inner
