"""Training speed: seconds per epoch of one network on generated classes (measured here),
and the timings the shipped model's training recorded (per member: epochs run, best epoch,
seconds per epoch; generation and total wall time).

    .venv/bin/python benchmarks/bench_train.py [--runs 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from cryodiscovery.core.model.checkpoint import DEFAULT_MODEL_PATH
from cryodiscovery.core.model.nets import ClassNet, NetConfig, count_parameters
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.training import TrainConfig, build_training_set, train_net
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)


def measure(n_runs: int) -> None:
    """Train one default-size network for 2 epochs on ``n_runs`` x 40 generated classes."""
    pre = PreprocessConfig()
    t0 = time.perf_counter()
    sets = [
        simulate_class_averages(SimulationConfig(n_classes=40), 920_000 + i)
        for i in range(n_runs)
    ]
    data = build_training_set(sets, pre)
    gen = time.perf_counter() - t0
    val = data.subset(range(0, len(data), 5))
    print(
        f"generated {len(data)} classes in {gen:.1f} s ({len(data) / gen:.0f} classes/s)"
    )
    cpu0 = time.process_time()
    res = train_net(data, val, NetConfig(), pre, TrainConfig(epochs=2, patience=9))
    cpu = time.process_time() - cpu0
    per_epoch = [h["seconds"] for h in res.history]
    print(
        f"network: {count_parameters(ClassNet(NetConfig()))} parameters; "
        f"{len(data)} classes/epoch: {min(per_epoch):.1f} s/epoch wall "
        f"({min(per_epoch) / len(data) * 1e3:.2f} ms/class), "
        f"{cpu / len(per_epoch):.1f} s/epoch CPU"
    )


def recorded() -> None:
    """Print the timings stored in the shipped model card."""
    card_path = DEFAULT_MODEL_PATH.with_suffix(".json")
    if not card_path.is_file():
        print("no model card: run `make model`")
        return
    card = json.loads(card_path.read_text())
    print(
        f"shipped model {card['name']}: timings recorded by scripts/train_default_model.py"
    )
    for k, v in card.get("timing_s", {}).items():
        print(f"  {k:<18s} {v:8.1f} s")
    for m in card.get("members_training", []):
        print(
            f"  member {m['member']}: {m['epochs_run']} epochs, best epoch {m['best_epoch']}, "
            f"{m['seconds_per_epoch']:.1f} s/epoch, {m['seconds']:.0f} s"
        )
    sizes = card.get("data_sizes", {})
    if sizes:
        print(f"  training classes per epoch: {sizes['train']['classes']}")


def main(argv: list[str] | None = None) -> int:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    measure(args.runs)
    recorded()
    return 0


if __name__ == "__main__":
    sys.exit(main())
