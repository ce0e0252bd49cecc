"""The federation benchmark starts every arm from the same model (the shipped default)."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest
import torch
from cryodiscovery.core.model.checkpoint import load_scorer
from support.benchmarks import load_benchmark


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_benchmark("bench_federation", monkeypatch)


def test_all_arms_start_from_the_shipped_default_model(bench: ModuleType) -> None:
    initial = bench._initial(argparse.Namespace(init="default", net="small", seed=0))
    shipped = load_scorer(None)
    assert initial.net_config == shipped.net_config
    assert initial.preprocess == shipped.preprocess
    assert len(initial.members) == len(shipped.members)
    for ours, theirs in zip(initial.members, shipped.members, strict=True):
        for (k, a), (_, b) in zip(
            ours.state_dict().items(), theirs.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), k


def test_fresh_start_uses_the_requested_architecture_reproducibly(
    bench: ModuleType,
) -> None:
    args = argparse.Namespace(init="fresh", net="small", seed=3, norm="batch")
    first, second = bench._initial(args), bench._initial(args)
    assert first.net_config.widths == (16, 32, 64)
    assert first.net_config.norm == "batch"
    assert first.net_config != load_scorer(None).net_config
    w1 = next(iter(first.members[0].parameters()))
    w2 = next(iter(second.members[0].parameters()))
    assert torch.equal(w1, w2)
    grouped = bench._initial(argparse.Namespace(**{**vars(args), "norm": "group"}))
    assert grouped.net_config.norm == "group"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in grouped.members[0].modules())
    assert not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in grouped.members[0].modules()
    )


def test_default_command_line_starts_from_the_shipped_model(bench: ModuleType) -> None:
    args = bench._parser().parse_args([])
    assert args.init == "default"
    assert bench._parser().parse_args(["--init", "fresh"]).init == "fresh"


def test_rounds_to_reach_a_share_of_the_centralised_auc(bench: ModuleType) -> None:
    aucs = [0.5, 0.9, 0.95, 0.99, 0.98]
    assert bench._reached(aucs, 1.0) == "99% of it first at round 4/5"
    assert bench._reached(aucs, 1.01) == (
        "99% of it not reached in 5 rounds (best 98.02%, round 4)"
    )
    assert bench._curve(aucs, points=2) == "1 0.5000, 2 0.9000, 4 0.9900, 5 0.9800"
    assert bench._curve([0.7], points=10) == "1 0.7000"


def _ev(bench: ModuleType, auc: float) -> object:
    return bench.task.Evaluation(100, 50, auc, auc, 0.03, 0.3, 0.5)


def test_summary_over_training_seeds(bench: ModuleType) -> None:

    def outcome(central: float, fed: float, local: float, curve: list[float]) -> object:
        return bench._Outcome(
            {
                "central": {"overall": _ev(bench, central)},
                "fedavg": {"overall": _ev(bench, fed)},
            },
            {"site-a": {"overall": _ev(bench, local)}},
            {"fedavg": curve},
        )

    lines = bench._summary(
        {
            0: outcome(0.98, 0.975, 0.90, [0.8, 0.975]),  # 99.49%, reached
            1: outcome(
                0.96, 0.94, 0.95, [0.8, 0.94]
            ),  # 97.92%, not reached, local wins
        }
    )
    assert lines[0] == "Over training seeds 0, 1:"
    assert lines[1] == "central: overall AUC mean 0.9700 (range 0.9600-0.9800)"
    assert lines[2] == "fedavg: overall AUC mean 0.9575 (range 0.9400-0.9750)"
    assert lines[3] == (
        "fedavg: 98.71% of centralised (ratio of the means; per seed 99.49%, 97.92%); "
        "99% of it reached within the rounds in 1/2 seeds; better than every site's "
        "local-only model on the common test set in 1/2 seeds"
    )


def test_several_seeds_run_end_to_end(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = "--init fresh --sites 2 --jobs 2 --classes 12 --test-jobs 1 --rounds 1 "
    argv += "--local-epochs 1 --modes local,central,fedavg --seeds 4,5 --threads 1"
    assert bench.main(argv.split()) == 0
    out = capsys.readouterr().out
    assert "## training seed 4" in out and "## training seed 5" in out
    assert "Over training seeds 4, 5:" in out
    assert out.count("fedavg: overall AUC by round: 1 ") == 2
    assert "seeds; better than every site's local-only model" in out
