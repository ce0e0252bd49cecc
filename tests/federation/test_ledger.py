"""The facility's privacy ledger: every noised update across runs, composed into one
(eps, delta), a budget that stops training, and no silent restart at zero."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.federation import client_app, task
from cryodiscovery.federation.accounting import (
    DP_DELTA,
    local_dp_epsilon,
    rdp_epsilon,
    rdp_epsilon_of,
)
from cryodiscovery.federation.config import DPOptions, load_facility_config
from cryodiscovery.federation.ledger import (
    BudgetExceeded,
    Ledger,
    LedgerError,
    default_ledger_path,
)
from fed_fixtures import make_sites, save_initial, train_message
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict


def test_entries_compose_into_one_epsilon(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "state" / "ledger.jsonl")
    assert ledger.entries() == [] and ledger.epsilon(DP_DELTA) == 0.0
    for rnd in (1, 2, 3):
        count, epsilon = ledger.record(7, rnd, 2.0, 1.5)
        assert count == rnd and epsilon == ledger.epsilon(DP_DELTA)
    ledger.record(8, 1, 4.0, 1.5)
    assert ledger.spent(DP_DELTA) == (4, ledger.epsilon(DP_DELTA))
    assert [e.server_round for e in ledger.entries()] == [1, 2, 3, 1]
    # three releases at sigma 2 and one at sigma 4: sum of 1/sigma^2 = 0.8125
    assert ledger.epsilon(DP_DELTA) == local_dp_epsilon([2.0, 2.0, 2.0, 4.0])
    # sensitivity 2C: the same as multipliers halved
    assert ledger.epsilon(DP_DELTA) == rdp_epsilon_of([1.0, 1.0, 1.0, 2.0])
    assert rdp_epsilon(1.0, 3) < ledger.epsilon(DP_DELTA) < rdp_epsilon(1.0, 4)
    assert oct(ledger.path.stat().st_mode & 0o777) == oct(0o600)
    assert ledger.path.parent.stat().st_mode & 0o077 == 0


def test_the_budget_refuses_the_update_that_would_pass_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    budget = local_dp_epsilon([1.0] * 3) + 1e-9
    for rnd in (1, 2):
        ledger.check_budget(1.0, budget, DP_DELTA)
        ledger.record(1, rnd, 1.0, 1.0)
    assert ledger.check_budget(1.0, budget, DP_DELTA) <= budget  # the third fits
    ledger.record(1, 3, 1.0, 1.0)
    with pytest.raises(BudgetExceeded, match=r"ledger.jsonl.* > privacy.dp.max_eps"):
        ledger.check_budget(1.0, budget, DP_DELTA)
    assert ledger.check_budget(1.0, None, DP_DELTA) > budget  # no budget: no refusal


def test_a_damaged_ledger_stops_accounting_loudly(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record(1, 1, 1.0, 1.0)
    with ledger.path.open("a") as f:
        f.write('{"time": "x", "run_id": 1}\n')
    with pytest.raises(LedgerError, match=r"ledger.jsonl: line 2 is not a ledger"):
        ledger.epsilon(DP_DELTA)
    folder = tmp_path / "not-a-file"
    folder.mkdir()
    with pytest.raises(LedgerError, match="cannot"):
        Ledger(folder).record(1, 1, 1.0, 1.0)


def _append(path: str, n: int, budget: float | None, out: Any) -> None:
    ledger = Ledger(Path(path))
    for k in range(n):
        try:
            out.put(ledger.record(2, k, 1.0, 1.0, budget)[0])
        except BudgetExceeded:
            out.put(0)


def _race(path: Path, budget: float | None) -> list[int]:
    """Three processes recording 40 releases each; the counts ``record`` returned."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_append, args=(str(path), 40, budget, out)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    counts = [out.get(timeout=60) for _ in range(120)]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    return counts


def test_concurrent_writers_are_serialised(tmp_path: Path) -> None:
    counts = _race(tmp_path / "ledger.jsonl", None)
    assert sorted(counts) == list(range(1, 121))  # each saw all the earlier ones
    assert len(Ledger(tmp_path / "ledger.jsonl").entries()) == 120


def test_concurrent_writers_cannot_overspend_the_budget(tmp_path: Path) -> None:
    budget = local_dp_epsilon([1.0] * 50) + 1e-9
    counts = _race(tmp_path / "ledger.jsonl", budget)
    assert sorted(c for c in counts if c) == list(range(1, 51))
    assert counts.count(0) == 70
    assert Ledger(tmp_path / "ledger.jsonl").epsilon(DP_DELTA) <= budget


def test_federation_yaml_ledger_and_budget_keys(tmp_path: Path) -> None:
    (site,) = make_sites(tmp_path, 1, n_classes=12).values()
    data = yaml.safe_load(site.read_text())
    data["privacy"] = {"dp": {"clipping_norm": 1.0, "noise_multiplier": 1.0}}
    site.write_text(yaml.safe_dump(data))
    dp = load_facility_config(site).privacy.dp
    assert dp is not None and dp.max_epsilon is None
    assert dp.ledger == default_ledger_path()
    data["privacy"]["dp"].update(max_epsilon=8, ledger="state/ledger.jsonl")
    site.write_text(yaml.safe_dump(data))
    dp = load_facility_config(site).privacy.dp
    assert dp is not None and dp.max_epsilon == 8.0
    assert dp.ledger == site.parent / "state" / "ledger.jsonl"
    data["privacy"]["dp"]["max_epsilon"] = -1
    site.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match=r"'privacy.dp.max_epsilon' must be between"):
        load_facility_config(site)


def test_a_site_over_its_budget_refuses_before_training(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.jsonl"
    dp = {"clipping_norm": 1.0, "noise_multiplier": 1.0, "ledger": str(ledger_path)}
    dp["max_epsilon"] = (local_dp_epsilon([1.0]) + local_dp_epsilon([1.0] * 2)) / 2
    sites = make_sites(tmp_path, 1, n_classes=12, extra={1: {"privacy": {"dp": dp}}})
    context = Context(
        1, 1, {client_app.NODE_CONFIG_KEY: str(sites[1])}, RecordDict(), {}
    )
    arrays = task.scorer_to_arrays(load_scorer(save_initial(tmp_path / "i.pt")))
    calls: list[int] = []

    moved = ArrayRecord(
        {k: Array(a.numpy() + np.float32(1e-3)) for k, a in arrays.items()}
    )

    def trained(m: Message, c: Context) -> Message:
        calls.append(1)
        return Message(RecordDict({"arrays": moved}), reply_to=m)

    first = client_app._privacy_mod(train_message(arrays), context, trained)
    assert not first.has_error() and len(Ledger(ledger_path).entries()) == 1
    with pytest.raises(BudgetExceeded):
        client_app._privacy_mod(train_message(arrays), context, trained)
    assert calls == [1] and len(Ledger(ledger_path).entries()) == 1
    # through the app's guard, the server learns only that the budget is spent
    reply = client_app.app(train_message(arrays), context)
    assert reply.has_error()
    assert reply.error.reason == "this site's privacy budget is spent"
    assert len(Ledger(ledger_path).entries()) == 1


def test_dp_options_default_to_the_shared_ledger() -> None:
    dp = DPOptions(clipping_norm=1.0, noise_multiplier=1.0)
    assert dp.ledger == default_ledger_path() and dp.max_epsilon is None
