"""Model glue: what is exchanged, local training on core.model.training, FedProx, the gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)
from cryodiscovery.federation import gate, task, wire
from fed_fixtures import tiny_scorer
from flwr.app import Array, ArrayRecord

CONFIG = SimulationConfig(n_classes=40, box_sizes=(64,), particle_range=(20, 300))


@pytest.fixture(scope="module")
def data() -> tuple[list[ClassAverages], list[ClassAverages]]:
    torch.set_num_threads(1)
    return [simulate_class_averages(CONFIG, 11)], [simulate_class_averages(CONFIG, 12)]


def test_exchanged_arrays_round_trip_to_identical_scores(data) -> None:  # type: ignore[no-untyped-def]
    scorer = tiny_scorer(members=3, seed=1)
    named = task.named_arrays(scorer)
    assert all(k.split(".")[0] in {"m0", "m1", "m2"} for k in named)
    assert not any(k.endswith("num_batches_tracked") for k in named)
    arrays = task.scorer_to_arrays(scorer)  # what is sent: one packed vector
    assert list(arrays.keys()) == [wire.PACKED_KEY]
    for exchanged in (arrays, named):
        rebuilt = task.scorer_from_spec(task.model_spec(scorer), exchanged)
        assert rebuilt.rule == "boosted3" and len(rebuilt.members) == 3
        assert np.array_equal(rebuilt.predict(data[1][0]), scorer.predict(data[1][0]))
    table = task.parameter_table(arrays)
    assert sum(r[3] for r in table) == 4 * sum(
        p.numel()
        for m in scorer.members
        for k, p in m.state_dict().items()
        if p.is_floating_point()
    )


def test_arrays_that_do_not_fit_the_spec_are_refused() -> None:
    scorer = tiny_scorer()
    arrays = task.named_arrays(scorer)
    spec = task.model_spec(scorer)
    packed = task.scorer_to_arrays(scorer)[wire.PACKED_KEY].numpy()
    for bad in (packed[:-1], packed.astype(np.float64), packed.reshape(1, -1)):
        with pytest.raises(ValueError, match="the model needs float32"):
            task.scorer_from_spec(spec, ArrayRecord({wire.PACKED_KEY: Array(bad)}))
    missing = ArrayRecord({k: v for k, v in list(arrays.items())[1:]})
    with pytest.raises(ValueError, match="do not fit the model"):
        task.scorer_from_spec(spec, missing)
    key = next(iter(arrays.keys()))
    wrong = ArrayRecord(dict(arrays.items()))
    wrong[key] = Array(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="has shape"):
        task.scorer_from_spec(spec, wrong)
    with pytest.raises(ValueError, match="malformed model spec"):
        task.scorer_from_spec(json.dumps({"net_config": {}}), arrays)


def test_keep_statistics_replaces_only_batchnorm_statistics() -> None:
    base, other = tiny_scorer(seed=1), tiny_scorer(seed=2)
    layout = task.named_arrays(base)
    named_noise = ArrayRecord(
        {k: Array(a.numpy() - 5.0) for k, a in task.named_arrays(other).items()}
    )
    noised = wire.pack(named_noise)  # every value moved, variances negative
    kept = wire.unpack(
        wire.keep_statistics(noised, task.scorer_to_arrays(base), layout), layout
    )
    stats = [k for k in layout if k.endswith(("running_mean", "running_var"))]
    assert stats and len(stats) < len(layout)
    for key in layout:
        want = (layout if key in stats else named_noise)[key].numpy()
        np.testing.assert_array_equal(kept[key].numpy(), want)
    short = ArrayRecord({wire.PACKED_KEY: Array(noised[wire.PACKED_KEY].numpy()[:-1])})
    with pytest.raises(ValueError, match="the model needs float32"):
        wire.keep_statistics(short, task.scorer_to_arrays(base), layout)


def test_local_training_keeps_the_structure_and_learns(data) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    scorer = tiny_scorer(members=3, seed=2)
    before = task.evaluate_scorer(scorer, val)
    options = task.LocalTrainOptions(epochs=4, batch_size=16, lr=0.01, seed=3)
    result = task.train_locally(scorer, train, val, options)
    assert len(result.scorer.members) == 3 and result.scorer.rule == "boosted3"
    assert result.num_examples == len(train[0])
    assert math.isfinite(result.loss)
    after = task.evaluate_scorer(result.scorer, val)
    assert after.loss < before.loss
    # the received model itself is left untouched
    assert np.array_equal(
        task.named_arrays(scorer)["m0.head.3.bias"].numpy(),
        task.named_arrays(tiny_scorer(members=3, seed=2))["m0.head.3.bias"].numpy(),
    )


def test_fedprox_term_keeps_local_weights_near_the_global_ones(data) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    scorer = tiny_scorer(seed=4)
    reference = task.scorer_to_arrays(scorer)

    def moved(mu: float) -> float:
        options = task.LocalTrainOptions(
            epochs=2, batch_size=16, lr=0.01, proximal_mu=mu
        )
        out = task.train_locally(scorer, train, val, options)
        from cryodiscovery.federation.validation import delta_norm

        return delta_norm(task.scorer_to_arrays(out.scorer), reference)

    free, held = moved(0.0), moved(50.0)
    assert held < 0.7 * free
    assert moved(0.0) == pytest.approx(free, rel=1e-5)  # the hook was removed


def _inverted(scorer: ClassScorer) -> ClassScorer:
    out = task.with_arrays(scorer, task.scorer_to_arrays(scorer))
    with torch.no_grad():
        for member in out.members:
            member.head[-1].weight.neg_()
            member.head[-1].bias.neg_()
    return out


def test_acceptance_gate(data) -> None:  # type: ignore[no-untyped-def]
    train, val = data
    good = task.train_locally(
        tiny_scorer(seed=5),
        train,
        val,
        task.LocalTrainOptions(epochs=4, batch_size=16, lr=0.01),
    ).scorer
    bad = _inverted(good)
    assert task.evaluate_scorer(good, val).auc > 0.6
    assert gate.acceptance_gate(good, None, val).accepted
    kept = gate.acceptance_gate(bad, good, val, "auc", 0.01)
    assert not kept.accepted and "worse than current" in kept.reason
    assert gate.acceptance_gate(good, bad, val, "auc", 0.0).accepted
    assert gate.acceptance_gate(
        bad, good, val, "auc", 1.0
    ).accepted  # tolerance wide open
    one_label = [val[0].subset(val[0].labels == 1)]
    undecided = gate.acceptance_gate(good, bad, one_label)
    assert not undecided.accepted and "cannot compare auc" in undecided.reason
    by_ba = gate.acceptance_gate(bad, good, val, "balanced_accuracy", 0.01)
    assert by_ba.current >= by_ba.candidate


def test_recalibration_hits_the_target_fnr_and_install_writes_a_record(
    data,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    train, val = data
    scorer = task.train_locally(
        tiny_scorer(seed=6),
        train,
        val,
        task.LocalTrainOptions(epochs=2, batch_size=16, lr=0.01),
    ).scorer
    calibrated, ev = task.recalibrate(scorer, val, target_fnr=0.1)
    assert task.evaluate_scorer(calibrated, val) == ev
    assert ev.fnr <= 0.1 and calibrated.target_fnr == 0.1
    assert calibrated.validation_scores is not None
    path = tmp_path / "site" / "model.pt"
    sha = gate.install_model(calibrated, path, {"source": "test"})
    record = json.loads(gate.install_record_path(path).read_text())
    assert record == {"source": "test", "sha256": sha, "model_name": calibrated.name}
    loaded = load_scorer(path)
    assert loaded.sha256 == sha and loaded.threshold == pytest.approx(
        calibrated.threshold
    )


def test_train_options_read_the_server_config_within_the_site_caps() -> None:
    config = {
        "local-epochs": 9,
        "learning-rate": 0.002,
        "seed": 3,
        "server-round": 2,
        "lr-schedule": "constant",
    }
    options = task.train_options(config, max_epochs=4, batch_size=16)
    assert options == task.LocalTrainOptions(
        epochs=4, batch_size=16, lr=0.002, seed=3 + 2 * 7919, schedule="constant"
    )
    older = task.train_options({"local-epochs": 2}, max_epochs=4, batch_size=16)
    assert older.schedule == "onecycle" and older.epochs == 2 and older.lr == 1e-3
    with pytest.raises(
        ValueError, match="unknown lr-schedule 'cyclic' from the server"
    ):
        task.train_options({"lr-schedule": "cyclic"}, max_epochs=1, batch_size=8)


def test_a_federation_recalibrated_model_serves_score_target_fnr(
    data,
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    """The model a federation publishes: an initial model trained with 60 validation
    classes of 6 jobs, its networks replaced and recalibrated on the server's 40 classes.
    Every calibration field must come from the new data, so ``score --target-fnr``
    works and the image-only threshold is the new data's."""
    from cryodiscovery.core import cli
    from cryodiscovery.core.io.stack import write_stack
    from cryodiscovery.core.model.calibration import robust_threshold_for_fnr

    rng = np.random.default_rng(0)
    old = tiny_scorer(seed=7).recalibrated(
        rng.integers(0, 2, 60),
        rng.random(60),
        rng.random(60),
        np.arange(60) // 10,
        0.03,
    )
    assert old.image_only_threshold != old.threshold
    val = data[1]
    candidate = task.with_arrays(old, task.scorer_to_arrays(tiny_scorer(seed=8)))
    calibrated, ev = task.recalibrate(candidate, val, 0.05)
    y = task.predict_sets(calibrated, val)[0]
    bare = [ClassAverages.create(s.images, labels=s.labels) for s in val]
    p_image = task.predict_sets(calibrated, bare)[1]
    assert len(calibrated.validation_scores_image_only) == len(y)
    assert calibrated.validation_groups is None
    assert calibrated.image_only_threshold == robust_threshold_for_fnr(
        y, p_image, None, 0.05
    )
    assert calibrated.threshold == ev.threshold
    path = tmp_path / "published.pt"
    gate.install_model(calibrated, path, {"source": "test"})
    stack = tmp_path / "classes.mrcs"
    write_stack(stack, val[0].images, val[0].pixel_size)
    argv = ["score", str(stack), "--out", str(tmp_path / "o"), "--model", str(path)]
    code = cli.main([*argv, "--target-fnr", "0.05", "--min-particles", "0"])
    err = capsys.readouterr().err
    assert code == 0, err  # the stack is the calibration set: 95% of its good kept
    record = json.dumps(json.loads((tmp_path / "o" / "run_record.json").read_text()))
    assert '"threshold_source": "target-fnr"' in record
    assert '"mode": "image-only"' in record
    assert load_scorer(path).threshold_for_fnr(0.05, "image-only") == pytest.approx(
        calibrated.image_only_threshold
    )


def test_prepared_metadata_of_a_partly_labelled_job_are_the_whole_jobs() -> None:
    import dataclasses

    from cryodiscovery.core.classes import Label
    from cryodiscovery.core.model.preprocess import metadata_features

    classes = simulate_class_averages(
        SimulationConfig(n_classes=12, box_sizes=(64,)), 5
    )
    labels = classes.labels.copy()
    labels[::4] = Label.UNKNOWN
    partly = dataclasses.replace(classes, labels=labels)
    scorer = tiny_scorer()
    prepared = task.prepare_sets(scorer, [partly])
    known = labels != Label.UNKNOWN
    assert len(prepared.labels) == int(known.sum())
    assert np.array_equal(prepared.meta.numpy(), metadata_features(classes)[known])
