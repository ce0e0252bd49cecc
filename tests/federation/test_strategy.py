"""Strategies behind the update guard, driven through the in-process Grid with numpy sites."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
from cryodiscovery.federation.strategy import (
    STRATEGIES,
    GuardedStrategy,
    NotEnoughSitesError,
    StrategyOptions,
    build_strategy,
    site_labels,
)
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from support.loopback import LoopbackGrid, run_server_app, server_identity

SHAPES = {"w": (3, 4), "b": (4,)}
Update = Callable[[dict[str, np.ndarray], Context], dict[str, np.ndarray]]


def _initial() -> ArrayRecord:
    return ArrayRecord({k: Array(np.ones(s, np.float32)) for k, s in SHAPES.items()})


def _site(update: Update, n: int = 10) -> ClientApp:
    """A ClientApp whose 'training' is ``update(global arrays, context)``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        context.state.config_records["seen"] = msg.content["config"]
        new = update(arrays, context)
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                    "metrics": MetricRecord({"num-examples": n, "loss": 0.5}),
                }
            ),
            reply_to=msg,
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": n, "loss": 0.25})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _shift(step: float) -> Update:
    return lambda a, _c: {
        k: (v + np.float32(step)).astype(np.float32) for k, v in a.items()
    }


def _run(
    sites: dict[int, ClientApp],
    options: StrategyOptions,
    rounds: int = 2,
    workers: int = 1,
) -> tuple[GuardedStrategy, Result, LoopbackGrid]:
    strategy = build_strategy(options)
    out: dict[str, Result] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out["result"] = strategy.start(
            grid, _initial(), num_rounds=rounds, timeout=options.round_timeout_s
        )

    grid = LoopbackGrid(sites, workers=workers)
    try:
        run_server_app(app, grid, {})
    finally:
        grid.close()
    return strategy, out["result"], grid


def _final(result: Result) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in result.arrays.items()}


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_moves_towards_honest_updates(name: str) -> None:
    sites = {i: _site(_shift(0.1)) for i in (1, 2, 3, 4)}
    options = StrategyOptions(name=name, min_sites=3, server_lr=0.05, trim_beta=0.25)
    strategy, result, _ = _run(sites, options)
    final = _final(result)
    for key, value in final.items():
        assert value.dtype == np.float32 and value.shape == SHAPES[key]
        assert np.isfinite(value).all()
        assert (value > 1.0).all(), name  # every site moved the weights up
    assert sorted(v.node_id for v in strategy.rounds[2] if v.accepted) == [1, 2, 3, 4]


def test_fedavg_is_example_weighted() -> None:
    sites = {1: _site(_shift(0.1), n=30), 2: _site(_shift(0.2), n=10)}
    _, result, _ = _run(sites, StrategyOptions(min_sites=2), rounds=1)
    assert _final(result)["b"] == pytest.approx(np.full(4, 1.125), abs=1e-6)


def _nan(a: dict[str, np.ndarray], _c: Context) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in a.items()}
    out["w"][0, 0] = np.nan
    return out


def _wrong_shape(a: dict[str, np.ndarray], _c: Context) -> dict[str, np.ndarray]:
    return {"w": np.ones((4, 3), np.float32), "b": a["b"]}


def _scaled(a: dict[str, np.ndarray], _c: Context) -> dict[str, np.ndarray]:
    return {k: v * np.float32(50.0) for k, v in a.items()}


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "median", "trimmed-mean"])
@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        (_nan, "non-finite"),
        (_wrong_shape, "shape (4, 3)"),
        (_scaled, "exceeds the bound"),
    ],
)
def test_bad_updates_are_dropped_never_aggregated(
    name: str, attack: Update, reason: str
) -> None:
    sites = {1: _site(_shift(0.1)), 2: _site(_shift(0.1)), 3: _site(attack)}
    strategy, result, _ = _run(sites, StrategyOptions(name=name, min_sites=2))
    final = _final(result)
    assert all(np.isfinite(v).all() for v in final.values())
    assert final["w"].shape == SHAPES["w"]
    bad = [v for v in strategy.rounds[1] if v.node_id == 3]
    assert not bad[0].accepted and reason in bad[0].reason
    if name == "fedavg":  # the mean of the two honest sites, two rounds
        assert final["b"] == pytest.approx(np.full(4, 1.2), abs=1e-5)


def test_site_dropping_out_mid_round_continues_above_minimum() -> None:
    def crash(_a: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        raise RuntimeError("GPU fell off the bus")

    sites = {1: _site(_shift(0.1)), 2: _site(_shift(0.1)), 3: _site(crash)}
    strategy, result, _ = _run(sites, StrategyOptions(min_sites=2))
    verdict = next(v for v in strategy.rounds[1] if v.node_id == 3)
    assert "site error: RuntimeError: GPU fell off the bus" in verdict.reason
    assert _final(result)["b"] == pytest.approx(np.full(4, 1.2), abs=1e-5)


def test_too_few_usable_updates_stop_with_a_clear_error() -> None:
    sites = {1: _site(_shift(0.1)), 2: _site(_nan), 3: _site(_wrong_shape)}
    with pytest.raises(NotEnoughSitesError) as err:
        _run(sites, StrategyOptions(min_sites=2))
    text = str(err.value)
    assert "round 1: 1 usable update(s), min-sites is 2" in text
    assert "node 2: 'w' has non-finite values" in text and "node 3:" in text


def test_slow_site_misses_the_round_timeout() -> None:
    def slow(a: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        time.sleep(4.0)
        return a

    # a 2 s timeout leaves the two prompt sites room on a loaded machine
    sites = {1: _site(_shift(0.1)), 2: _site(_shift(0.1)), 3: _site(slow)}
    options = StrategyOptions(min_sites=2, round_timeout_s=2.0)
    started = time.monotonic()
    strategy, result, _ = _run(sites, options, rounds=1, workers=3)
    assert time.monotonic() - started < 10
    assert sorted(v.node_id for v in strategy.rounds[1] if v.accepted) == [1, 2]
    assert [(v.node_id, v.reason) for v in strategy.rounds[1] if not v.accepted] == [
        (3, "no reply")  # recorded as dropped, not silently missing
    ]
    assert _final(result)["b"] == pytest.approx(np.full(4, 1.1), abs=1e-5)


def test_site_leaving_after_training_does_not_stall_evaluation() -> None:
    grids: list[LoopbackGrid] = []

    def leave(a: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        grids[-1].remove_node(context.node_id)  # disconnects right after this update
        return {k: v + np.float32(0.1) for k, v in a.items()}

    sites = {1: _site(_shift(0.1)), 2: _site(_shift(0.1)), 3: _site(leave)}
    strategy = build_strategy(StrategyOptions(min_sites=3, wait_for_sites_s=0.2))
    app = ServerApp()
    out: dict[str, Result] = {}

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        out["result"] = strategy.start(grid, _initial(), num_rounds=1, timeout=10)

    grid = LoopbackGrid(sites)
    grids.append(grid)
    started = time.monotonic()
    run_server_app(app, grid, {})
    grid.close()
    assert time.monotonic() - started < 10
    evaluated = {t.node_id for t in grid.traffic if t.message_type == "evaluate"}
    assert evaluated == {1, 2}
    assert _final(out["result"])["b"] == pytest.approx(np.full(4, 1.1), abs=1e-6)


def test_waiting_for_sites_is_bounded() -> None:
    options = StrategyOptions(min_sites=3, wait_for_sites_s=0.3)
    started = time.monotonic()
    with pytest.raises(NotEnoughSitesError, match=r"2 site\(s\) connected after \d+ s"):
        _run({1: _site(_shift(0.1)), 2: _site(_shift(0.1))}, options)
    assert time.monotonic() - started < 5


def test_krum_ignores_an_outlier_inside_the_norm_bound() -> None:
    sites = {i: _site(_shift(0.1)) for i in (1, 2, 3, 4)}
    sites[5] = _site(_shift(-0.15))
    options = StrategyOptions(name="krum", min_sites=3, krum_byzantine=1)
    _, result, _ = _run(sites, options, rounds=1)
    assert _final(result)["b"] == pytest.approx(np.full(4, 1.1), abs=1e-6)


def test_fedprox_sends_its_proximal_weight() -> None:
    sites = {1: _site(_shift(0.1)), 2: _site(_shift(0.1))}
    _, _, grid = _run(sites, StrategyOptions(name="fedprox", proximal_mu=0.3), rounds=1)
    seen = grid.node_context(1).state.config_records["seen"]
    assert seen["proximal-mu"] == pytest.approx(0.3)


def _clipping_site(a: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
    norm = float(context.state.config_records["seen"][KEY_CLIPPING_NORM])
    step = 0.1 * np.ones(1, np.float32)
    size = sum(v.size for v in a.values())
    scale = min(1.0, norm / (0.1 * np.sqrt(size)))
    return {k: v + step * np.float32(scale) for k, v in a.items()}


def test_central_dp_rejects_sites_that_do_not_clip() -> None:
    sites = {1: _site(_clipping_site), 2: _site(_clipping_site), 3: _site(_shift(0.1))}
    options = StrategyOptions(
        min_sites=2, dp_clipping_norm=0.05, dp_noise_multiplier=0.0
    )
    strategy, result, _ = _run(sites, options, rounds=1)
    verdicts = {v.node_id: v for v in strategy.rounds[1]}
    assert verdicts[1].accepted and verdicts[2].accepted
    assert not verdicts[3].accepted and "exceeds the bound 0.05" in verdicts[3].reason
    delta = np.concatenate([(v - 1.0).ravel() for v in _final(result).values()])
    assert np.linalg.norm(delta) == pytest.approx(0.05, rel=1e-3)


def test_central_dp_weights_every_site_equally() -> None:
    """The DP noise std (multiplier x clip / sites) assumes an unweighted mean: a site
    claiming more examples must not move the model further than C / sites."""

    def down(a: dict[str, np.ndarray], c: Context) -> dict[str, np.ndarray]:
        return {k: 2.0 - v for k, v in _clipping_site(a, c).items()}  # mirrored step

    sites = {1: _site(_clipping_site, n=30), 2: _site(down, n=10)}
    options = StrategyOptions(
        min_sites=2, dp_clipping_norm=0.05, dp_noise_multiplier=0.0
    )
    strategy, result, _ = _run(sites, options, rounds=1)
    assert all(v.accepted for v in strategy.rounds[1])
    for value in _final(result).values():  # +step and -step cancel out
        np.testing.assert_allclose(value, 1.0, atol=1e-6)
    assert sorted(v.num_examples for v in strategy.rounds[1]) == [10, 30]


def test_central_dp_adds_noise_of_the_documented_size() -> None:
    sites = {i: _site(_clipping_site) for i in (1, 2)}
    options = StrategyOptions(
        min_sites=2, dp_clipping_norm=0.05, dp_noise_multiplier=4.0
    )
    _, result, _ = _run(sites, options, rounds=1)
    delta = np.concatenate([(v - 1.0).ravel() for v in _final(result).values()])
    clipped_step = 0.05 / np.sqrt(delta.size)
    noise = delta - clipped_step
    assert np.std(noise) == pytest.approx(4.0 * 0.05 / 2, rel=0.5)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "fedsgd"}, "'strategy' must be one of"),
        ({"min_sites": 0}, "'min-sites' must be >= 1"),
        ({"trim_beta": 0.5}, "'trim-beta' must be in [0, 0.5)"),
        ({"round_timeout_s": 0}, "'round-timeout' must be > 0"),
    ],
)
def test_options_are_validated(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError) as err:
        StrategyOptions(**kwargs)  # type: ignore[arg-type]
    assert key in str(err.value)


class _NamedGrid(Grid):
    """A Grid that lists three registered sites, two with names (no transport)."""

    def __init__(self) -> None:
        self.nodes = {11: "facility-a", 22: "facility-b", 33: ""}

    def set_run(self, run: object) -> None:  # type: ignore[override]
        pass

    @property
    def run(self) -> object:  # type: ignore[override]
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:  # type: ignore[override]
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def get_nodes(self) -> list[object]:  # type: ignore[override]
        return [SimpleNamespace(node_id=k, name=v) for k, v in self.nodes.items()]

    def push_messages(self, messages: object) -> list[str]:  # type: ignore[override]
        raise NotImplementedError

    def pull_messages(self, message_ids: object) -> list[Message]:  # type: ignore[override]
        raise NotImplementedError

    def send_and_receive(
        self, messages: object, *, timeout: float | None = None
    ) -> list[Message]:  # type: ignore[override]
        raise NotImplementedError


def _named_round(strategy: GuardedStrategy, grid: _NamedGrid) -> str:
    """Round 1 on ``grid``: site 11 replies, 22 fails, 33 sends nothing; the error."""
    messages = list(strategy.configure_train(1, _initial(), ConfigRecord({}), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 22, 33]
    by_node = {m.metadata.dst_node_id: m for m in messages}
    good = Message(
        RecordDict(
            {
                "arrays": _initial(),
                "metrics": MetricRecord({"num-examples": 5}),
            }
        ),
        reply_to=by_node[11],
    )
    failed = Message(Error(0, "ClientApp crashed"), reply_to=by_node[22])
    grid.nodes.pop(22)  # the failed site goes offline: its name is still known
    with pytest.raises(NotEnoughSitesError) as err:
        strategy.aggregate_train(1, [good, failed])
    return str(err.value)


def test_failed_and_missing_sites_are_named_by_their_registered_names(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One site replies, one fails, one sends nothing: the error, the log and the
    verdicts name the failed site by its registration name, the silent one as well
    (``node <id>`` when it was registered without a name)."""
    strategy = build_strategy(StrategyOptions(min_sites=3, wait_for_sites_s=0.0))
    grid = _NamedGrid()
    caplog.set_level("INFO")
    with server_identity(1):
        text = _named_round(strategy, grid)
    assert "facility-b: site error: ClientApp crashed" in text
    assert "node 33: no reply" in text
    assert {v.node_id: v.reason for v in strategy.rounds[1] if not v.accepted} == {
        22: "site error: ClientApp crashed",
        33: "no reply",
    }
    assert strategy.site(11) == "facility-a"
    assert "dropped update from facility-b" in caplog.text
    assert "facility-a = node 11" in caplog.text
    assert "node 22" not in text


def test_site_labels_tell_apart_a_name_two_nodes_share() -> None:
    grid = _NamedGrid()
    grid.nodes = {1: "same", 2: "same", 3: ""}
    assert site_labels(grid) == {1: "same (node 1)", 2: "same (node 2)", 3: "node 3"}
