"""The real ServerApp and ClientApp, driven in-process through Flower's Grid interface
(no SuperLink, no Ray): rounds, registry, acceptance gate, refusals and drop-outs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cryodiscovery.core.model.checkpoint import load_scorer, save_scorer
from cryodiscovery.federation import client_app, gate, task
from cryodiscovery.federation.config import load_facility_config
from cryodiscovery.federation.harvest import harvest
from cryodiscovery.federation.registry import ModelRegistry
from cryodiscovery.federation.strategy import NotEnoughSitesError
from fed_fixtures import make_sites, run_apps, run_config, save_initial
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import Result, Strategy


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two rounds with three generated non-IID sites; site 1 tolerates any change."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("federation")
    initial = save_initial(root / "initial.pt")
    sites = make_sites(
        root / "sites",
        3,
        extra={1: {"acceptance": {"tolerance": 1.0}}, 3: {"model_path": None}},
    )
    for node in (1, 2):  # these sites already score with the initial model
        cfg = load_facility_config(sites[node])
        assert cfg.model_path is not None
        cfg.model_path.parent.mkdir(parents=True)
        save_scorer(load_scorer(initial), cfg.model_path)
    grid = run_apps(sites, run_config(root))
    return SimpleNamespace(
        root=root,
        sites=sites,
        grid=grid,
        registry=ModelRegistry(root / "registry"),
        initial=load_scorer(initial),
    )


def test_rounds_change_and_improve_the_global_model(
    federation: SimpleNamespace,
) -> None:
    versions = federation.registry.versions()
    assert [v.server_round for v in versions] == [1, 2]
    final = load_scorer(versions[-1].checkpoint)
    before = task.scorer_to_arrays(federation.initial)
    after = task.scorer_to_arrays(final)
    assert list(after.keys()) == list(before.keys())
    moved = max(
        float(np.abs(after[k].numpy() - before[k].numpy()).max()) for k in before
    )
    assert moved > 1e-3
    initial_auc = versions[-1].run["initial_metrics"]["auc"]
    assert versions[-1].metrics["auc"] > initial_auc + 0.03


def test_registry_holds_every_version_with_contributions(
    federation: SimpleNamespace,
) -> None:
    registry = federation.registry
    latest = registry.latest()
    assert latest is not None and latest.version == 2
    n_train = sorted(
        harvest(load_facility_config(p)).n_train for p in federation.sites.values()
    )
    for version in registry.versions():
        assert all(c.accepted and c.reason == "" for c in version.contributions)
        assert sorted(c.num_examples for c in version.contributions) == n_train
        assert version.total_examples == sum(n_train)
        scorer = load_scorer(
            version.checkpoint
        )  # a core-format checkpoint, checksum ok
        assert scorer.sha256 == version.sha256
        assert scorer.info["federation"]["server_round"] == version.server_round
        assert scorer.validation_scores is not None  # recalibrated on the server's set
        assert version.metrics["threshold"] == pytest.approx(scorer.threshold)


def test_sites_send_weights_and_scalar_metrics_only(
    federation: SimpleNamespace,
) -> None:
    expected = list(task.scorer_to_arrays(federation.initial).keys())
    up = [t for t in federation.grid.traffic if t.direction == "up"]
    # per site: a train reply in each of the 2 rounds, an evaluate reply after the last
    assert sorted(t.message_type for t in up) == ["evaluate"] * 3 + ["train"] * 6
    received = {f"received-{k}" for k in ("num-examples", "loss", "auc", "fnr")}
    received.add("received-balanced-accuracy")
    trains: dict[int, int] = {}
    for transfer in up:
        content = transfer.message.content
        (metrics,) = content.metric_records.values()
        if transfer.message_type == "train":
            (arrays,) = content.array_records.values()
            assert list(arrays.keys()) == expected
            trains[transfer.node_id] = trains.get(transfer.node_id, 0) + 1
            # round 2's replies also evaluate the round-1 model they received
            extra = received if trains[transfer.node_id] == 2 else set()
            assert set(metrics.keys()) == {"num-examples", "loss"} | extra
            assert not content.config_records
        else:
            assert not content.array_records
            # the gate's decision (the compared metric, where there was a comparison)
            gate_keys = {"gate-installed"} | (
                {"gate-candidate", "gate-current"} if transfer.node_id != 3 else set()
            )
            assert (
                set(metrics.keys())
                == {
                    "num-examples",
                    "loss",
                    "auc",
                    "balanced-accuracy",
                    "fnr",
                }
                | gate_keys
            )
            (gate_record,) = content.config_records.values()
            assert list(gate_record.keys()) == ["reason"]


def test_gate_installs_the_last_global_model_where_allowed(
    federation: SimpleNamespace,
) -> None:
    sites = {n: load_facility_config(p) for n, p in federation.sites.items()}
    latest = federation.registry.latest()
    installed = sites[1].model_path
    assert installed is not None and installed.is_file()
    record = json.loads(gate.install_record_path(installed).read_text())
    assert record["server_round"] == 2 and record["source"] == "federation"
    # the registry version it came from (the file itself is written by the site)
    assert record["registry_version"] == latest.version
    assert record["registry_sha256"] == latest.sha256
    model = load_scorer(installed)
    assert model.sha256 == record["sha256"]
    reference = load_scorer(latest.checkpoint)
    data = harvest(sites[1]).validation
    assert np.allclose(model.predict(data[0]), reference.predict(data[0]), atol=1e-6)
    assert sites[3].model_path is None  # no model_path: nothing installed


def test_registry_records_each_sites_final_evaluation_and_gate_decision(
    federation: SimpleNamespace,
) -> None:
    latest = federation.registry.latest()
    results = latest.site_results
    assert sorted(results) == ["node 1", "node 2", "node 3"]
    assert all(0 <= r["auc"] <= 1 and r["num-examples"] > 0 for r in results.values())
    assert results["node 1"]["gate-installed"] == 1.0
    assert results["node 1"]["gate"].startswith("installed: candidate auc")
    assert results["node 3"] == {**results["node 3"], "gate-installed": 0.0}
    assert "no model_path" in results["node 3"]["gate"]
    assert federation.registry.versions()[0].site_results == {}  # final version only


def test_a_site_can_personalise_the_final_model_before_the_gate(
    federation: SimpleNamespace, tmp_path: Path
) -> None:
    sites = dict(federation.sites)
    model_path = tmp_path / "site1" / "model.pt"
    sites[1] = _variant(
        sites[1],
        tmp_path / "personal.yaml",
        personalise={"epochs": 2, "learning_rate": 0.005},
        model_path=str(model_path),
        acceptance={"metric": "auc", "tolerance": 1.0},  # install whatever comes
    )
    config = run_config(
        tmp_path,
        **{"num-rounds": 1, "initial-model": str(federation.root / "initial.pt")},
    )
    run_apps(sites, config)
    (version,) = ModelRegistry(tmp_path / "registry").versions()
    installed = load_scorer(model_path)
    record = json.loads(gate.install_record_path(model_path).read_text())
    assert record["personalised_epochs"] == 2
    assert installed.info["personalised"]["epochs"] == 2
    assert installed.name.endswith("+personalised")
    global_model = load_scorer(version.checkpoint)
    assert installed.threshold == global_model.threshold  # thresholds kept
    data = harvest(load_facility_config(sites[1])).validation[0]
    assert not np.allclose(installed.predict(data), global_model.predict(data))


def test_gate_keeps_the_current_model_when_the_candidate_is_worse(
    federation: SimpleNamespace, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_facility_config(federation.sites[2])
    assert cfg.model_path is not None
    current = load_scorer(federation.registry.latest().checkpoint)
    save_scorer(current, cfg.model_path)
    before = cfg.model_path.read_bytes()
    inverted = task.with_arrays(current, task.scorer_to_arrays(current))
    head = inverted.members[0].head[-1]
    with torch.no_grad():  # a model that ranks every class backwards
        head.weight.neg_()
        head.bias.neg_()
    data = harvest(cfg)
    assert task.evaluate_scorer(current, data.validation).auc > 0.55
    with caplog.at_level("WARNING"):
        evaluated = task.evaluate_scorer(inverted, data.validation)
        outcome, reason = client_app._gate(
            cfg, inverted, data, ConfigRecord({"server-round": 2}), evaluated
        )
    assert "acceptance gate: kept the current model: candidate auc" in caplog.text
    assert reason.startswith("kept the current model: candidate auc")
    assert outcome["gate-installed"] == 0.0
    assert outcome["gate-candidate"] < outcome["gate-current"]
    assert cfg.model_path.read_bytes() == before


def _variant(path: Path, out: Path, **changes: object) -> Path:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    out.write_text(yaml.safe_dump(data))
    return out


def test_disabled_site_is_refused_and_the_round_goes_on(
    federation: SimpleNamespace, tmp_path: Path
) -> None:
    sites = dict(federation.sites)
    sites[3] = _variant(sites[3], tmp_path / "off.yaml", enabled=False)
    config = run_config(
        tmp_path,
        **{
            "num-rounds": 1,
            "min-sites": 2,
            "local-epochs": 1,
            "initial-model": str(federation.root / "initial.pt"),
        },
    )
    grid = run_apps(sites, config)
    errors = [t for t in grid.traffic if t.direction == "up" and t.message.has_error()]
    assert {t.node_id for t in errors} == {3}
    assert all(
        t.message.error.reason == "federation is disabled at this site" for t in errors
    )
    (version,) = ModelRegistry(tmp_path / "registry").versions()
    dropped = [c for c in version.contributions if not c.accepted]
    assert [c.site for c in dropped] == ["node 3"]
    assert "federation is disabled at this site" in dropped[0].reason
    assert sum(c.accepted for c in version.contributions) == 2


def test_too_few_sites_end_the_run_with_a_clear_error(
    federation: SimpleNamespace, tmp_path: Path
) -> None:
    sites = dict(federation.sites)
    sites[2] = _variant(
        sites[2],
        tmp_path / "broken.yaml",
        data={"relion_projects": [str(tmp_path / "gone")]},
    )
    (tmp_path / "gone").mkdir()
    sites[3] = _variant(sites[3], tmp_path / "off.yaml", enabled=False)
    (tmp_path / "gone").rmdir()  # the data root disappears after configuration
    config = run_config(
        tmp_path,
        **{
            "num-rounds": 1,
            "min-sites": 2,
            "local-epochs": 1,
            "initial-model": str(federation.root / "initial.pt"),
        },
    )
    with pytest.raises(NotEnoughSitesError, match="round 1: 1 usable update"):
        run_apps(sites, config)
    assert not (tmp_path / "registry" / "index.json").exists()


def test_secure_aggregation_hides_every_site_update(
    federation: SimpleNamespace, tmp_path: Path
) -> None:
    sites = dict(federation.sites)
    sites[1] = _variant(sites[1], tmp_path / "secagg.yaml", privacy={"secagg": True})
    config = run_config(
        tmp_path,
        **{
            "secagg": True,
            "local-epochs": 2,
            "initial-model": str(federation.root / "initial.pt"),
        },
    )
    grid = run_apps(sites, config)
    versions = ModelRegistry(tmp_path / "registry").versions()
    assert [v.server_round for v in versions] == [1, 2]
    assert all(sum(c.accepted for c in v.contributions) == 3 for v in versions)
    assert versions[-1].metrics["auc"] > versions[-1].run["initial_metrics"]["auc"]
    up = [t for t in grid.traffic if t.direction == "up"]
    assert up and all(not t.message.has_error() for t in up)
    for transfer in up:  # masked vectors only: no plain parameter array leaves a site
        for record in transfer.message.content.array_records.values():
            assert len(record) == 0


def test_sites_evaluate_every_n_rounds_and_the_rate_decays(
    federation: SimpleNamespace,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 2's model is evaluated on round 3's train messages (one message per site
    and round), the last model by evaluate messages; the local rate decays across
    rounds and is constant within one (the default local-lr-schedule). The rounds are
    driven by Flower's own ``Strategy.start``, whose result holds the central metrics
    of every version."""
    started: list[Result] = []
    flower_start = Strategy.start

    def start(self: Strategy, *args: Any, **kwargs: Any) -> Result:
        started.append(flower_start(self, *args, **kwargs))
        return started[-1]

    monkeypatch.setattr(Strategy, "start", start)
    config = run_config(
        tmp_path,
        **{
            "num-rounds": 3,
            "evaluate-every": 2,
            "lr-decay": "cosine",
            "learning-rate": 0.01,
            "local-epochs": 1,
            "initial-model": str(federation.root / "initial.pt"),
        },
    )
    with caplog.at_level(logging.INFO, logger="cryodiscovery.federation.rounds"):
        grid = run_apps(federation.sites, config)
    evaluated = sorted(
        {
            int(next(iter(t.message.content.config_records.values()))["server-round"])
            for t in grid.traffic
            if t.direction == "down" and t.message_type == "evaluate"
        }
    )
    assert evaluated == [3]
    trained = [
        t for t in grid.traffic if t.direction == "down" and t.message_type == "train"
    ]
    assert len(trained) == 3 * 3
    asked = sorted(
        int(c["server-round"])
        for c in (
            next(iter(t.message.content.config_records.values())) for t in trained
        )
        if c["evaluate-received"]
    )
    assert asked == [3, 3, 3]
    lines = [
        r.getMessage() for r in caplog.records if "validation splits" in r.getMessage()
    ]
    assert len(lines) == 1 and lines[0].startswith("round 2 model on the sites'")
    n_validation = sum(
        harvest(load_facility_config(p)).n_validation for p in federation.sites.values()
    )
    assert f"num-examples {n_validation:.4g}" in lines[0] and "auc " in lines[0]
    rates = {
        int(c["server-round"]): float(c["learning-rate"])
        for c in (
            next(iter(t.message.content.config_records.values())) for t in trained
        )
    }
    assert rates == {1: 0.01, 2: pytest.approx(0.00525), 3: pytest.approx(0.0005)}
    assert {
        next(iter(t.message.content.config_records.values()))["lr-schedule"]
        for t in trained
    } == {"constant"}
    versions = ModelRegistry(tmp_path / "registry").versions()
    assert [v.server_round for v in versions] == [1, 2, 3]
    (result,) = started
    central = result.evaluate_metrics_serverapp
    assert sorted(central) == [0, 1, 2, 3]
    assert [central[v.server_round]["auc"] for v in versions] == [
        pytest.approx(v.metrics["auc"]) for v in versions
    ]
    assert central[0]["auc"] == pytest.approx(versions[0].run["initial_metrics"]["auc"])


def test_an_unusable_aggregate_is_never_published(
    federation: SimpleNamespace, tmp_path: Path
) -> None:
    """Every update passes screening, but an oversized FedAdam server step drives
    BatchNorm variances below zero: the run stops before publishing that model."""
    config = run_config(
        tmp_path,
        **{
            "num-rounds": 1,
            "local-epochs": 1,
            "strategy": "fedadam",
            "server-lr": 100.0,
            "initial-model": str(federation.root / "initial.pt"),
        },
    )
    with pytest.raises(RuntimeError, match="aggregated model is not usable"):
        run_apps(federation.sites, config)
    assert not (tmp_path / "registry" / "index.json").exists()
