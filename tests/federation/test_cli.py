"""`cryodiscovery federation check` and `pull` (registry folder and http), with the gate."""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import load_scorer, save_scorer
from cryodiscovery.core.outputs import sha256_file
from cryodiscovery.federation import cli, gate, task
from cryodiscovery.federation.accounting import rdp_epsilon
from cryodiscovery.federation.config import load_facility_config
from cryodiscovery.federation.harvest import harvest
from cryodiscovery.federation.ledger import Ledger
from cryodiscovery.federation.registry import ModelRegistry
from fed_fixtures import make_sites, tiny_scorer


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cryodiscovery federation")
    cli.add_args(parser)
    return cli.main(parser.parse_args(argv))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return make_sites(tmp_path_factory.mktemp("cli"), 1, n_classes=30)[1]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, site: Path) -> ModelRegistry:
    """Two versions: v1 a model trained on the site's data, v2 the same, inverted."""
    data = harvest(load_facility_config(site))
    good = task.train_locally(
        tiny_scorer(seed=3),
        data.train,
        data.validation,
        task.LocalTrainOptions(epochs=4, batch_size=16, lr=0.01),
    ).scorer
    bad = task.with_arrays(good, task.scorer_to_arrays(good))
    with torch.no_grad():
        bad.members[0].head[-1].weight.neg_()
        bad.members[0].head[-1].bias.neg_()
    reg = ModelRegistry(tmp_path_factory.mktemp("registry"))
    for rnd, model in ((1, good), (2, bad)):
        reg.publish(
            lambda p, m=model: save_scorer(m, p),
            server_round=rnd,
            metrics={"auc": 0.5},
            contributions=(),
        )
    return reg


def test_check_prints_use_and_send_and_nothing_else(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["check", "--config", str(site)]) == 0
    out = capsys.readouterr().out
    data = harvest(load_facility_config(site))
    (source,) = data.sources
    assert "enabled: yes" in out and "Class2D/job001" in out
    assert f"{source.n_selected:>8} {source.n_rejected:>8}" in out
    assert f"total: {data.n_train} for training" in out
    assert (
        "train reply:    the parameter arrays below + metrics num-examples, loss (+ "
        "received-num-examples, received-loss, received-auc, received-balanced-accuracy,"
        " received-fnr: the received model on the local validation split" in out
    )
    assert "m0.stem.0.weight" in out and "bytes" in out and "per update" in out
    assert "local DP: off; SecAgg+: not required" in out


def test_check_writes_no_harvest_cache(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load(site.read_text())
    config["cache_dir"] = str(tmp_path / "cache")
    copy = tmp_path / "federation.yaml"
    copy.write_text(yaml.safe_dump(config))
    assert _run(["check", "--config", str(copy)]) == 0
    assert "total:" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()


def test_pull_from_a_folder_installs_then_reports_up_to_date(
    registry: ModelRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.pt"
    argv = [
        "pull",
        "--registry",
        str(registry.root),
        "--out",
        str(out),
        "--version",
        "1",
    ]
    assert _run(argv) == 0
    assert sha256_file(out) == registry.get(1).sha256
    record = json.loads(gate.install_record_path(out).read_text())
    assert record["registry_version"] == 1 and record["gate"].startswith(
        "installed without"
    )
    assert _run(argv) == 0
    assert "already installed" in capsys.readouterr().out


def test_gate_keeps_a_better_model_unless_forced(
    registry: ModelRegistry,
    site: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "model.pt"
    save_scorer(load_scorer(registry.get(1).checkpoint), out)
    before = out.read_bytes()
    argv = [
        "pull",
        "--registry",
        str(registry.root),
        "--config",
        str(site),
        "--out",
        str(out),
    ]
    assert _run(argv) == 1  # v2 ranks classes backwards: kept the current model
    assert "not installed" in capsys.readouterr().out and out.read_bytes() == before
    assert _run([*argv, "--force"]) == 0
    assert sha256_file(out) == registry.get(2).sha256


def test_pull_personalises_when_the_site_asks_and_then_reports_up_to_date(
    registry: ModelRegistry,
    site: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = yaml.safe_load(site.read_text())
    config["personalise"] = {"epochs": 1, "learning_rate": 0.01}
    copy = tmp_path / "federation.yaml"
    copy.write_text(yaml.safe_dump(config))
    out = tmp_path / "model.pt"
    argv = ["pull", "--registry", str(registry.root), "--version", "1"]
    argv += ["--config", str(copy), "--out", str(out)]
    assert _run([*argv, "--force"]) == 0  # the shipped default beats it on this site
    record = json.loads(gate.install_record_path(out).read_text())
    assert record["registry_sha256"] == registry.get(1).sha256
    assert record["personalised_epochs"] == 1 and record["sha256"] == sha256_file(out)
    pulled, original = load_scorer(out), load_scorer(registry.get(1).checkpoint)
    assert pulled.info["personalised"]["epochs"] == 1
    assert not np.array_equal(
        task.named_arrays(pulled)["m0.stem.0.weight"].numpy(),
        task.named_arrays(original)["m0.stem.0.weight"].numpy(),
    )
    capsys.readouterr()
    assert _run(argv) == 0
    assert "already installed" in capsys.readouterr().out
    out.write_bytes(out.read_bytes() + b"x")  # changed since: pulled again
    assert _run([*argv, "--force"]) == 0
    assert "already installed" not in capsys.readouterr().out


@pytest.fixture
def served(registry: ModelRegistry) -> Iterator[str]:
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(registry.root)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_pull_over_http_checks_the_checksum(
    served: str, registry: ModelRegistry, tmp_path: Path
) -> None:
    out = tmp_path / "model.pt"
    assert _run(["pull", "--from", served, "--out", str(out)]) == 0
    assert sha256_file(out) == registry.latest().sha256
    tampered = registry.get(1).checkpoint
    original = tampered.read_bytes()
    try:
        tampered.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(InputError, match="checksum mismatch"):
            _run(
                [
                    "pull",
                    "--from",
                    served,
                    "--out",
                    str(tmp_path / "m1.pt"),
                    "--version",
                    "1",
                ]
            )
        assert not (tmp_path / "m1.pt").exists()
    finally:
        tampered.write_bytes(original)


def test_pull_needs_a_destination(registry: ModelRegistry) -> None:
    with pytest.raises(InputError, match="give --out"):
        _run(["pull", "--registry", str(registry.root)])


def test_umbrella_command_runs_the_federation_subcommand(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As registered by the entry point ``federation = "cryodiscovery.federation.cli"``."""
    from cryodiscovery.core import cli as umbrella

    monkeypatch.setattr(umbrella, "_command_modules", lambda: {"federation": cli})
    assert umbrella.main(["federation", "check", "--config", str(site)]) == 0
    assert "Would be sent" in capsys.readouterr().out
    missing = site.parent / "no.yaml"
    assert umbrella.main(["federation", "check", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: facility configuration file not found" in err


def test_check_states_the_privacy_cost_of_local_dp(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(site.read_text())
    ledger = tmp_path / "ledger.jsonl"
    data["privacy"] = {
        "dp": {
            "clipping_norm": 1.0,
            "noise_multiplier": 2.0,
            "ledger": str(ledger),
            "max_epsilon": 20,
        }
    }
    data["personalise"] = {"epochs": 2}
    with_dp = site.with_name("with-dp.yaml")
    with_dp.write_text(yaml.safe_dump(data))
    assert _run(["check", "--config", str(with_dp)]) == 0
    out = capsys.readouterr().out
    # local DP: sensitivity 2C (any two data sets of the site), so sigma / 2
    expected = "/".join(f"{rdp_epsilon(1.0, r, 1e-5):.3g}" for r in (1, 10, 100))
    assert f"(eps, delta=1e-05) over 1/10/100 rounds: {expected}" in out
    assert f"spent so far ({ledger}): 0 noised update(s), eps 0; budget" in out
    assert "(after 2 personalisation epoch(s) at rate 0.0005)" in out
    for rnd in (1, 2, 3):
        Ledger(ledger).record(5, rnd, 2.0, 1.0)
    assert _run(["check", "--config", str(with_dp)]) == 0
    out = capsys.readouterr().out
    values = sum(  # every member's weights travel in an update
        p.numel()
        for member in load_scorer(None).members
        for p in member.state_dict().values()
        if p.is_floating_point()
    )
    noise = 2.0 * 1.0 * values**0.5  # noise multiplier x clipping norm x sqrt(values)
    assert f"local DP noise adds L2 norm about {noise:.3g}" in out
    spent = f"3 noised update(s), eps {rdp_epsilon(1.0, 3, 1e-5):.3g}"
    assert f"{spent}; budget max_epsilon 20" in out
