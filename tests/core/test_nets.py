"""The class network: size, shapes in both modes, config round trip, Grad-CAM hook point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryodiscovery.core.model.nets import (
    ClassNet,
    NetConfig,
    count_parameters,
    inference_copy,
)
from cryodiscovery.core.model.preprocess import N_META, PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from model_fixtures import make_toy_classes, tiny_scorer


def test_default_network_is_compact() -> None:
    n = count_parameters(ClassNet(NetConfig()))
    assert 300_000 <= n <= 600_000


@pytest.mark.parametrize("meta_features", [N_META, 0])
def test_forward_gives_one_logit_per_class(meta_features: int) -> None:
    torch.manual_seed(0)
    net = ClassNet(
        NetConfig(stem=8, widths=(8, 16), meta_features=meta_features)
    ).eval()
    x = torch.randn(5, 1, 64, 64)
    meta = torch.randn(5, meta_features)
    out = net(x, meta)
    assert out.shape == (5,) and torch.isfinite(out).all()
    # Batch composition does not change a class's logit in eval mode.
    torch.testing.assert_close(net(x[:2], meta[:2]), out[:2])


def test_metadata_changes_the_score_only_with_a_metadata_branch() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 1, 64, 64)
    with_meta = ClassNet(NetConfig(stem=8, widths=(8, 16))).eval()
    zeros, ones = torch.zeros(4, N_META), torch.ones(4, N_META)
    assert not torch.allclose(with_meta(x, zeros), with_meta(x, ones))
    image_only = ClassNet(NetConfig(stem=8, widths=(8, 16), meta_features=0)).eval()
    torch.testing.assert_close(image_only(x, zeros), image_only(x, ones))


def test_cam_layer_is_the_last_conv_stage() -> None:
    net = ClassNet(NetConfig()).eval()
    seen: list[torch.Size] = []
    net.cam_layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    net(torch.randn(2, 1, 64, 64), torch.zeros(2, N_META))
    assert seen == [torch.Size([2, 128, 4, 4])]


def test_config_round_trip_and_checks() -> None:
    cfg = NetConfig(stem=16, widths=(16, 32, 64), meta_hidden=16)
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        NetConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError):
        NetConfig(in_size=60)
    with pytest.raises(ValueError):
        NetConfig(dropout=1.0)


def test_group_norm_option_round_trips_and_is_batch_independent() -> None:
    cfg = NetConfig(stem=8, widths=(12, 16), norm="group")
    assert NetConfig.from_dict(cfg.to_dict()) == cfg
    # checkpoints written before the option existed have no "norm": BatchNorm
    old = {k: v for k, v in NetConfig().to_dict().items() if k != "norm"}
    assert NetConfig.from_dict(old).norm == "batch"
    with pytest.raises(ValueError, match="norm"):
        NetConfig(norm="layer")
    torch.manual_seed(0)
    net = ClassNet(cfg)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    # 8 and 16 channels: 8 groups; 12 channels: the largest count <= 8 dividing 12
    assert sorted({m.num_groups for m in norms}) == [6, 8]
    assert not list(net.buffers())  # nothing to average but the weights
    net.eval()
    x, meta = torch.randn(6, 1, 64, 64), torch.randn(6, N_META)
    torch.testing.assert_close(net(x[:2], meta[:2]), net(x, meta)[:2])


def test_ensemble_rules_combine_three_members() -> None:
    from cryodiscovery.core.model.nets import combine_logits

    z = [torch.tensor([2.0, -1.0]), torch.tensor([0.0, -3.0]), torch.tensor([1.0, 4.0])]
    p = [torch.sigmoid(t) for t in z]
    mean = combine_logits(z, "mean3")
    torch.testing.assert_close(mean, (p[0] + p[1] + p[2]) / 3)
    g = (p[0] - p[1]).abs()
    torch.testing.assert_close(
        combine_logits(z, "boosted3"), (1 - g) * (p[0] + p[1]) / 2 + g * p[2]
    )
    with pytest.raises(ValueError, match="mean3"):
        combine_logits(z[:2], "mean3")


def _with_running_statistics(net: ClassNet, seed: int) -> ClassNet:
    """``net`` after a few training-mode passes (BatchNorm statistics far from 0/1),
    back in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            images = 3.0 * torch.randn(16, 1, 64, 64, generator=gen) + 1.5
            net(images, torch.rand(16, net.config.meta_features, generator=gen))
    return net.eval()


def test_inference_copy_folds_batchnorm_and_keeps_the_logits() -> None:
    torch.manual_seed(0)
    net = _with_running_statistics(ClassNet(NetConfig(stem=8, widths=(12, 16))), 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = inference_copy(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 7
    images, meta = torch.randn(9, 1, 64, 64), torch.rand(9, N_META)
    with torch.inference_mode():
        torch.testing.assert_close(fused(images, meta), net(images, meta))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # net untouched
    with pytest.raises(ValueError, match="eval mode"):
        inference_copy(net.train())


def test_scorer_scores_with_fused_copies_as_with_its_members() -> None:
    """predict runs fused copies; the scores equal those of the unfused members (and
    those stay unfused, in eval mode); a GroupNorm model runs its members as they are."""
    scorer = tiny_scorer()
    for i, member in enumerate(scorer.members):
        _with_running_statistics(member, seed=10 + i)
    classes = make_toy_classes(20, seed=3)
    images, meta = scorer.prepare(classes)
    unfused = scorer.combine(scorer.member_logits(images, meta)).double().numpy()
    np.testing.assert_allclose(scorer.predict(classes), unfused, rtol=0, atol=1e-6)
    assert all(
        any(isinstance(m, torch.nn.BatchNorm2d) for m in member.modules())
        and not member.training
        for member in scorer.members
    )
    networks = scorer.inference_networks()
    assert all(n is not m for n, m in zip(networks, scorer.members, strict=True))
    scorer.members[0].train()
    assert scorer.inference_networks() == scorer.members  # a member in training
    scorer.members[0].eval()
    cfg = NetConfig(stem=8, widths=(12, 16), norm="group")
    grouped = ClassScorer([ClassNet(cfg)], cfg, PreprocessConfig(), "single", 0.5)
    assert grouped.inference_networks() == grouped.members


def test_a_batchnorm_left_in_training_mode_is_never_fused() -> None:
    """The whole net in eval mode but one BatchNorm in training mode (as a caller may
    leave it): fusing is refused with a clear error, and scoring uses the members."""
    scorer = tiny_scorer()
    norm = next(
        m for m in scorer.members[0].modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    norm.train()
    with pytest.raises(ValueError, match="eval mode"):
        inference_copy(scorer.members[0])
    assert scorer.inference_networks()[0] is scorer.members[0]


def test_predict_in_several_batches_equals_one_batch() -> None:
    """A job of more classes than a batch scores as one batch: the metadata features
    that are relative to the job (a class's share of its particles) are the job's."""
    scorer = tiny_scorer()
    classes = make_toy_classes(23, seed=4)
    whole = scorer.predict(classes, batch_size=256)
    parts = scorer.predict(classes, batch_size=7)
    np.testing.assert_allclose(parts, whole, rtol=0, atol=1e-6)
    assert parts.shape == (23,)
