"""Every message a site sends, inspected as it crosses the (in-process) network: only
parameter arrays and scalar metrics; no images, no file paths, no per-class metadata.
Also: local DP and the server's clipping are applied, and a SecAgg-only site sends nothing."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cryodiscovery.core.classes import METADATA_FIELDS
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.federation import task, wire
from cryodiscovery.federation.accounting import local_dp_epsilon, rdp_epsilon
from cryodiscovery.federation.config import load_facility_config
from cryodiscovery.federation.evaluation import EVALUATE_METRICS
from cryodiscovery.federation.harvest import harvest
from cryodiscovery.federation.ledger import Ledger
from cryodiscovery.federation.registry import ModelRegistry
from cryodiscovery.federation.validation import delta_norm
from fed_fixtures import make_sites, run_apps, save_initial, train_message

ALLOWED_METRICS = {
    "train": {"num-examples", "loss"} | {f"received-{k}" for k in EVALUATE_METRICS},
    "evaluate": {"num-examples", "loss", "auc", "balanced-accuracy", "fnr"}
    | {"gate-installed", "gate-candidate", "gate-current"},
}
CLIP = 0.05


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One round: site 1 with local DP, site 3 demanding SecAgg+, server-side clipping."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("privacy")
    initial = save_initial(root / "initial.pt")
    sites = make_sites(
        root / "sites",
        3,
        n_classes=30,
        extra={
            1: {
                "privacy": {
                    "dp": {
                        "clipping_norm": 0.2,
                        "noise_multiplier": 0.01,
                        "ledger": str(root / "ledger.jsonl"),
                    }
                }
            },
            3: {"privacy": {"secagg": True}},
        },
    )
    config = {
        "num-rounds": 1,
        "min-sites": 2,
        "registry": str(root / "registry"),
        "initial-model": str(initial),
        "validation-seeds": "3",
        "validation-classes": 20,
        "learning-rate": 0.01,
        "dp-clipping-norm": CLIP,
        "dp-noise-multiplier": 0.1,
    }
    grid = run_apps(sites, config, keep_bytes=True)
    return SimpleNamespace(
        root=root, sites=sites, grid=grid, initial=load_scorer(initial)
    )


def _up(run: SimpleNamespace) -> list:  # type: ignore[type-arg]
    return [t for t in run.grid.traffic if t.direction == "up"]


def test_replies_hold_only_model_arrays_and_allowed_scalar_metrics(
    run: SimpleNamespace,
) -> None:
    names = list(task.scorer_to_arrays(run.initial).keys())
    replies = [t for t in _up(run) if not t.message.has_error()]
    assert {t.node_id for t in replies if t.message_type == "train"} == {1, 2}
    assert {t.node_id for t in replies if t.message_type == "evaluate"} == {1, 2, 3}
    for transfer in replies:
        content = transfer.message.content
        if transfer.message_type == "train":
            assert not content.config_records
        else:
            # After the last round a site says whether it installed the model, and why
            # (one short text of metric values; no path, name or class data: see below).
            assert set(content.config_records) <= {"gate"}
            for record in content.config_records.values():
                assert set(record) == {"reason"} and isinstance(record["reason"], str)
                assert len(record["reason"]) < 300
        (metrics,) = content.metric_records.values()
        assert set(metrics.keys()) <= ALLOWED_METRICS[transfer.message_type]
        assert all(isinstance(v, int | float) for v in metrics.values())
        if transfer.message_type == "train":
            (arrays,) = content.array_records.values()
            assert list(arrays.keys()) == names
            assert {a.dtype for a in arrays.values()} == {"float32"}
        else:
            assert not content.array_records


def _site_strings(path: Path) -> list[bytes]:
    cfg = load_facility_config(path)
    words = [
        str(cfg.source),
        str(cfg.source.parent),
        *(str(r) for _, r in cfg.data.all()),
    ]
    words += ["Class2D", "Select/", ".mrcs", ".star", "run_it0", cfg.source.parent.name]
    return [w.encode() for w in words]


def test_no_paths_images_or_class_metadata_on_the_wire(run: SimpleNamespace) -> None:
    for node, path in run.sites.items():
        sent = b"".join(t.payload for t in _up(run) if t.node_id == node)
        assert sent
        for word in _site_strings(path):
            assert word not in sent, (node, word)
        data = harvest(load_facility_config(path))
        for classes in (*data.train, *data.validation):
            for image in classes.images[:: max(1, len(classes) // 5)]:
                row = np.ascontiguousarray(image[image.shape[0] // 2], np.float32)
                assert row.tobytes()[:64] not in sent
            for name in ("particle_count", "resolution_A"):
                column = classes.metadata[:, METADATA_FIELDS.index(name)]
                assert column.astype(np.float64).tobytes()[:32] not in sent
                assert column.astype(np.float32).tobytes()[:16] not in sent


def test_errors_from_a_site_carry_no_details(run: SimpleNamespace) -> None:
    errors = [t for t in _up(run) if t.message.has_error()]
    assert {t.node_id for t in errors} == {3}
    for transfer in errors:
        reason = transfer.message.error.reason
        assert reason == "this site sends updates only under secure aggregation"
        assert "/" not in reason
        assert not transfer.message.has_content()


def test_updates_are_clipped_for_central_dp_and_noised_locally(
    run: SimpleNamespace,
) -> None:
    reference = task.scorer_to_arrays(run.initial)
    trains = {
        t.node_id: t
        for t in _up(run)
        if t.message_type == "train" and not t.message.has_error()
    }
    norms = {}
    for node, transfer in trains.items():
        (arrays,) = transfer.message.content.array_records.values()
        norms[node] = delta_norm(arrays, reference)
        assert norms[node] <= CLIP * (1 + 1e-4)
    assert all(math.isfinite(n) and n > 0 for n in norms.values())
    (version,) = ModelRegistry(run.root / "registry").versions()
    accepted = sorted(c.site for c in version.contributions if c.accepted)
    assert accepted == ["node 1", "node 2"]
    # after its local noise, the DP site sends the global BatchNorm statistics back
    layout = task.named_arrays(run.initial)
    (sent,) = trains[1].message.content.array_records.values()
    sent_named = wire.unpack(sent, layout)
    stats = [k for k in layout if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        np.testing.assert_array_equal(sent_named[key].numpy(), layout[key].numpy())
    # the server accounts for its central DP: one noised round at multiplier 0.1
    assert version.metrics["central_dp_epsilon"] == rdp_epsilon(0.1, 1, 1e-5)
    recorded = load_scorer(version.checkpoint).info["federation"]["central_dp"]
    assert recorded["rounds"] == 1 and recorded["noise_multiplier"] == 0.1
    assert recorded["clipping_norm"] == CLIP
    assert recorded["lineage_epsilon"] == recorded["epsilon"]  # from a fresh model
    # the local-DP site recorded its one noised update in its privacy ledger
    (entry,) = Ledger(run.root / "ledger.jsonl").entries()
    assert entry.server_round == 1 and entry.noise_multiplier == 0.01
    assert entry.run_id == run.grid.run.run_id and entry.clipping_norm == 0.2


def test_local_dp_adds_noise_beyond_clipping(tmp_path: Path) -> None:
    """The facility's DP mod perturbs every exchanged value (Flower's LocalDpMod)."""
    from cryodiscovery.federation import client_app
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

    sites = make_sites(
        tmp_path,
        1,
        n_classes=12,
        extra={
            1: {"privacy": {"dp": {"clipping_norm": 1e6, "noise_multiplier": 1e-3}}}
        },
    )
    context = Context(
        1, 1, {client_app.NODE_CONFIG_KEY: str(sites[1])}, RecordDict(), {}
    )
    arrays = task.scorer_to_arrays(load_scorer(save_initial(tmp_path / "i.pt")))
    msg = train_message(arrays)

    def echo(m: Message, c: Context) -> Message:  # a tiny update (Flower's clipping
        moved = {k: Array(a.numpy() + np.float32(1e-3)) for k, a in arrays.items()}
        out = RecordDict(
            {
                "arrays": ArrayRecord(moved),  # divides by the delta norm)
                "metrics": MetricRecord({"num-examples": 5}),
            }
        )
        return Message(out, reply_to=m)

    reply = client_app._privacy_mod(msg, context, echo)
    (noisy,) = reply.content.array_records.values()
    diff = np.concatenate(
        [(noisy[k].numpy() - arrays[k].numpy()).ravel() for k in arrays]
    )
    assert np.std(diff) == pytest.approx(1e6 * 1e-3, rel=0.1)


def test_central_dp_noise_does_not_break_batchnorm(
    run: SimpleNamespace, tmp_path: Path
) -> None:
    """Noise this strong makes BatchNorm variances negative; the server keeps the
    global statistics (post-processing) and publishes a usable model."""
    config = {
        "num-rounds": 1,
        "min-sites": 2,
        "registry": str(tmp_path / "registry"),
        "initial-model": str(run.root / "initial.pt"),
        "validation-seeds": "3",
        "validation-classes": 20,
        "dp-clipping-norm": 1.0,
        "dp-noise-multiplier": 1000.0,
    }
    plain = run.sites[2]  # no local DP: the module's ledger stays as it was
    run_apps({1: plain, 2: plain}, config)
    (version,) = ModelRegistry(tmp_path / "registry").versions()
    published = task.named_arrays(load_scorer(version.checkpoint))
    initial = task.named_arrays(run.initial)
    for key in initial:
        same = np.array_equal(published[key].numpy(), initial[key].numpy())
        assert same == key.endswith(("running_mean", "running_var")), key


def test_secagg_local_dp_sends_no_statistics_and_records_each_update(
    tmp_path: Path,
) -> None:
    """SecAgg+'s training step: the noised delta's BatchNorm statistics are zero (the
    global ones are kept), every noised update is in the ledger, the budget holds."""
    from cryodiscovery.federation.ledger import BudgetExceeded
    from cryodiscovery.federation.secagg import legacy_train
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    ledger = tmp_path / "ledger.jsonl"
    dp = {"clipping_norm": 1.0, "noise_multiplier": 3.0, "ledger": str(ledger)}
    dp["max_epsilon"] = (local_dp_epsilon([3.0]) + local_dp_epsilon([3.0] * 2)) / 2
    sites = make_sites(tmp_path, 1, n_classes=16, extra={1: {"privacy": {"dp": dp}}})
    cfg = load_facility_config(sites[1])
    scorer = load_scorer(save_initial(tmp_path / "i.pt"))
    packed = task.scorer_to_arrays(scorer)
    fitins = FitIns(
        ndarrays_to_parameters([a.numpy() for a in packed.values()]),
        {"model-spec": task.model_spec(scorer), "local-epochs": 1, "server-round": 1},
    )
    msg = train_message(packed)
    msg.content = compat.fitins_to_recorddict(fitins, keep_input=True)
    reply = legacy_train(msg, cfg, harvest(cfg))
    (delta,) = parameters_to_ndarrays(
        compat.recorddict_to_fitres(reply.content, False).parameters
    )
    stats = wire.statistics_mask(task.named_arrays(scorer))
    assert stats.any() and (delta[stats] == 0).all()
    assert np.std(delta[~stats]) == pytest.approx(3.0, rel=0.1)  # sigma x C
    (entry,) = Ledger(ledger).entries()
    assert entry.noise_multiplier == 3.0 and entry.server_round == 1
    with pytest.raises(BudgetExceeded):  # a second update would pass the budget
        legacy_train(msg, cfg, harvest(cfg))
    assert len(Ledger(ledger).entries()) == 1
