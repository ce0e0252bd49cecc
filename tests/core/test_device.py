"""``--device auto|cpu|cuda``: scores agree across the devices present, one epoch of
training runs on each, model files hold CPU tensors, and ``cuda`` without CUDA is one
line and exit status 2 (the RELION and cryoSPARC jobs: tests/*/test_*_device.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryodiscovery.core import cli
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.device import resolve_device
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.training import (
    TrainConfig,
    build_training_set,
    predict_logits,
    train_net,
)
from cryodiscovery.core.selection import SelectionOptions, select_classes
from model_fixtures import make_toy_classes, tiny_net_config, tiny_scorer

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_picks_cuda_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="one of auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.parametrize("device", DEVICES)
def test_scores_agree_with_the_cpu(device: str) -> None:
    scorer = tiny_scorer()
    classes = make_toy_classes(40, seed=5)
    reference = scorer.predict(classes, batch_size=16)
    scores = scorer.predict(classes, batch_size=16, device=device)
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-4)
    assert scores.dtype == np.float64
    assert (
        scorer.device.type == "cpu"
    )  # back on the CPU for explain, saving, federation
    options = SelectionOptions(threshold=0.5, device=device)
    selection = select_classes(classes, options, scorer)
    np.testing.assert_allclose(selection.scores, reference, rtol=0, atol=1e-4)
    assert options.record()["device"] == device  # in the run record


@pytest.mark.parametrize("device", DEVICES)
def test_model_file_holds_cpu_tensors(device: str) -> None:
    scorer = tiny_scorer()
    for member in scorer.members:
        member.to(device)
    states = scorer.payload()["members"]
    assert {t.device.type for state in states for t in state.values()} == {"cpu"}


@pytest.mark.parametrize("device", DEVICES)
def test_one_epoch_trains(device: str) -> None:
    pre = PreprocessConfig()
    train = build_training_set([make_toy_classes(48, 1)], pre)
    val = build_training_set([make_toy_classes(16, 3)], pre)
    cfg = TrainConfig(epochs=1, batch_size=16, seed=0, device=device)
    res = train_net(train, val, tiny_net_config(), pre, cfg)
    assert next(res.net.parameters()).device.type == "cpu"
    assert res.epochs_run == 1 and np.isfinite(res.history[0]["train_loss"])
    logits = predict_logits(res.net, val, pre)
    assert logits.device.type == "cpu" and torch.isfinite(logits).all()


@pytest.mark.gpu
def test_training_on_cuda_follows_the_cpu_run() -> None:
    """The same seed gives the same batches and starting weights on either device, so
    one short epoch ends with nearly the same network."""
    pre = PreprocessConfig()
    train = build_training_set([make_toy_classes(48, 1)], pre)
    val = build_training_set([make_toy_classes(16, 3)], pre)
    nets = [
        train_net(
            train,
            val,
            tiny_net_config(),
            pre,
            TrainConfig(epochs=1, batch_size=16, seed=0, device=device),
        ).net
        for device in ("cpu", "cuda")
    ]
    a, b = (predict_logits(n, val, pre) for n in nets)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-2)


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "classes.mrcs", "--angpix", "2", "--out", "o", "--device", "cuda"],
        ["evaluate", "--data", "d", "--device", "cuda"],
        ["train", "--data", "d", "--out", "m.pt", "--device", "cuda"],
    ],
    ids=["score", "evaluate", "train"],
)
def test_cuda_without_cuda_is_one_line_and_exit_2(
    no_cuda: None, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0], err
    assert err[0].startswith(f"cryodiscovery {argv[0]}: error: ")
