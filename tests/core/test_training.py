"""Training: augmentation properties, metadata dropout, splits, and a tiny model that
learns to separate obvious good classes from obvious junk in seconds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cryodiscovery.core.model.augment import AugmentConfig, augment_batch
from cryodiscovery.core.model.ensemble import BoostConfig, train_boosted
from cryodiscovery.core.model.nets import BOOSTED, MEAN, SINGLE, combine_logits
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.training import (
    TrainConfig,
    build_training_set,
    drop_metadata,
    lr_scheduler,
    predict_logits,
    split_training_set,
    train_net,
)
from cryodiscovery.core.report.metrics import roc_auc
from model_fixtures import make_toy_classes, tiny_net_config

PRE = PreprocessConfig()
IDENTITY = AugmentConfig(
    rotate=False,
    mirror=False,
    shift_px=0.0,
    scale=(1.0, 1.0),
    mask_shrink=(1.0, 1.0),
    contrast=(1.0, 1.0),
    flip_sign=0.0,
    offset=0.0,
    blur_prob=0.0,
    noise_prob=0.0,
)


@pytest.fixture(scope="module")
def toy_sets() -> tuple:
    torch.set_num_threads(1)
    train = build_training_set(
        [make_toy_classes(160, 1), make_toy_classes(80, 2, box=96)], PRE
    )
    val = build_training_set([make_toy_classes(60, 3)], PRE)
    test = build_training_set([make_toy_classes(80, 4, box=128)], PRE)
    return train, val, test


def test_identity_augmentation_returns_the_images(toy_sets: tuple) -> None:
    train = toy_sets[0]
    gen = torch.Generator().manual_seed(0)
    out, radius = augment_batch(train.images[:8], train.radius[:8], IDENTITY, gen)
    torch.testing.assert_close(out, train.images[:8], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(radius, train.radius[:8])


def test_augmentation_is_seeded_and_keeps_radius_in_range(toy_sets: tuple) -> None:
    train = toy_sets[0]
    cfg = AugmentConfig()
    a = augment_batch(
        train.images[:16], train.radius[:16], cfg, torch.Generator().manual_seed(5)
    )
    b = augment_batch(
        train.images[:16], train.radius[:16], cfg, torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(a[0], b[0])
    assert a[0].shape == (16, 64, 64)
    assert torch.all(a[1] <= 1.0) and torch.all(
        a[1] >= 0.9 * 0.9 * train.radius[:16] - 1e-6
    )
    # A 90-degree rotation without other changes is exact (no interpolation blur).
    rot = dataclasses.replace(IDENTITY, rotate=True)
    img = train.images[:1]
    for seed in range(50):
        out, _ = augment_batch(
            img, train.radius[:1], rot, torch.Generator().manual_seed(seed)
        )
        # Power is kept: interpolation on the 2x grid hardly smooths.
        assert float(out.pow(2).sum() / img.pow(2).sum()) > 0.9


def test_metadata_dropout_removes_values_with_their_flags() -> None:
    meta = torch.ones(500, 8)
    cfg = TrainConfig(meta_dropout=0.5, feature_dropout=0.2, meta_noise=0.0)
    out = drop_metadata(meta, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :4], out[:, 4:])
    all_gone = (out.sum(dim=1) == 0).float().mean()
    assert 0.4 < float(all_gone) < 0.6


def test_metadata_noise_touches_present_values_only() -> None:
    meta = torch.cat(
        [
            torch.ones(400, 3),
            torch.zeros(400, 1),
            torch.ones(400, 3),
            torch.zeros(400, 1),
        ],
        dim=1,
    )
    cfg = TrainConfig(meta_dropout=0.0, feature_dropout=0.0, meta_noise=0.2)
    out = drop_metadata(meta, cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:, 4:], meta[:, 4:])  # flags unchanged
    assert torch.all(out[:, 3] == 0)  # a missing value stays 0
    assert 0.15 < float(out[:, :3].std()) < 0.25


def test_split_is_stratified_and_disjoint(toy_sets: tuple) -> None:
    data = toy_sets[0]
    tr, va, te = split_training_set(data, (0.2, 0.2), seed=0)
    assert len(tr) + len(va) + len(te) == len(data)
    for part in (va, te):
        share = float(part.labels.mean())
        assert abs(share - float(data.labels.mean())) < 0.1
    keys = [{x.numpy().tobytes() for x in p.images} for p in (tr, va, te)]
    assert (
        not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    )


def test_tiny_model_separates_good_from_junk(toy_sets: tuple) -> None:
    train, val, test = toy_sets
    cfg = TrainConfig(epochs=4, batch_size=32, lr=3e-3, patience=4, seed=0)
    res = train_net(train, val, tiny_net_config(), PRE, cfg)
    y = test.labels.numpy().astype(int)
    assert roc_auc(y, predict_logits(res.net, test, PRE).numpy()) > 0.9
    image_only = predict_logits(res.net, test, PRE, meta=False).numpy()
    assert roc_auc(y, image_only) > 0.9
    assert res.best_epoch >= 1 and len(res.history) == res.epochs_run


def test_training_is_deterministic(toy_sets: tuple) -> None:
    train, val, _ = toy_sets
    cfg = TrainConfig(epochs=1, batch_size=64, seed=3)
    a = train_net(train.subset(range(64)), val, tiny_net_config(), PRE, cfg)
    b = train_net(train.subset(range(64)), val, tiny_net_config(), PRE, cfg)
    for (ka, va), (_, vb) in zip(
        a.net.state_dict().items(), b.net.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(va, vb, msg=ka)


def test_combine_rule_lets_the_third_member_decide_disagreements() -> None:
    z = torch.tensor
    agree = combine_logits([z([5.0]), z([5.0]), z([-5.0])], BOOSTED)
    assert float(agree) > 0.95
    split = combine_logits([z([8.0]), z([-8.0]), z([-3.0])], BOOSTED)
    assert float(split) == pytest.approx(float(torch.sigmoid(z(-3.0))), abs=1e-3)
    assert float(combine_logits([z([0.0])], SINGLE)) == 0.5
    with pytest.raises(ValueError):
        combine_logits([z([0.0])] * 2, BOOSTED)


@pytest.mark.slow
def test_boosted_ensemble_trains_and_records_its_decision(toy_sets: tuple) -> None:
    train, val, test = toy_sets
    cfg = TrainConfig(epochs=2, batch_size=64, seed=0)
    res = train_boosted(train, val, test, tiny_net_config(), PRE, cfg)
    assert res.rule in (BOOSTED, MEAN, SINGLE)
    assert len(res.members) == (1 if res.rule == SINGLE else 3)
    metrics = res.decision["test_metrics"]
    assert set(metrics) == {"member1", "member2", "member3", "ensemble", "mean"}
    # Asked to, it keeps an ensemble rule whatever the members score.
    kept = train_boosted(
        train, val, test, tiny_net_config(), PRE, cfg, BoostConfig(always_ensemble=True)
    )
    assert kept.rule in (BOOSTED, MEAN) and len(kept.members) == 3
    assert (
        res.val_scores.shape == (len(val),)
        and np.isfinite(res.val_scores.numpy()).all()
    )


@pytest.mark.slow
def test_train_command_trains_and_fine_tunes_from_relion_projects(tmp_path) -> None:
    import argparse

    from cryodiscovery.core.commands import train as train_cmd
    from cryodiscovery.core.model.checkpoint import load_scorer
    from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
    from cryodiscovery.core.synthetic.relion_pipeline import write_relion_selection

    for i in range(2):
        classes = make_toy_classes(60, seed=10 + i, box=64)
        job = write_relion_class2d(classes, tmp_path / f"P{i}", "Class2D/job001")
        write_relion_selection(job, classes.labels)
    out = tmp_path / "model.pt"

    def run(**kw: object) -> int:
        ns = dict(
            data=[str(tmp_path)],
            out=out,
            init=None,
            epochs=1,
            seed=0,
            target_fnr=0.03,
            image_only_target_fnr=None,
            name=None,
            device="cpu",
        )
        ns.update(kw)
        return train_cmd.main(argparse.Namespace(**ns))

    assert run() == 0
    first = load_scorer(out)
    assert out.with_suffix(".json").is_file()
    assert first.info["data_sizes"]["train"]["classes"] > 60
    tuned = tmp_path / "tuned.pt"
    assert run(init=str(out), out=tuned, image_only_target_fnr=0.2) == 0
    tuned_model = load_scorer(tuned)
    assert tuned_model.info["init"] == str(out)
    assert first.image_only_target_fnr is None
    assert tuned_model.image_only_target_fnr == 0.2


def test_constant_schedule_keeps_the_rate_and_onecycle_anneals_it() -> None:
    def rates(schedule: str) -> list[float]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        sched = lr_scheduler(opt, TrainConfig(lr=0.01, schedule=schedule), steps=20)
        out = []
        for _ in range(20):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert rates("constant") == [0.01] * 20
    cycle = rates("onecycle")
    assert cycle[0] < 0.001 and max(cycle) == pytest.approx(0.01) and cycle[-1] < 1e-4
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cyclic'"):
        TrainConfig(schedule="cyclic")


def test_metadata_of_a_partly_labelled_job_are_the_whole_jobs() -> None:
    """Training and the federation see a class's metadata as scoring does: features
    relative to the job (a class's share of the particles) come from the whole job,
    also when only some of its classes are labelled."""
    from cryodiscovery.core.classes import Label
    from cryodiscovery.core.model.preprocess import metadata_features

    classes = make_toy_classes(12, seed=3)
    labels = classes.labels.copy()
    labels[::3] = Label.UNKNOWN
    partly = dataclasses.replace(classes, labels=labels)
    known = labels != Label.UNKNOWN
    data = build_training_set([partly], PreprocessConfig())
    expected = metadata_features(classes)[known]
    assert np.array_equal(data.meta.numpy(), expected)
    assert not np.array_equal(expected, metadata_features(classes.subset(known)))
