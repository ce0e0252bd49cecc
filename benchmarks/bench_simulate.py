"""Print the synthetic generator's speed in classes per second at box 128 (one thread).

python benchmarks/bench_simulate.py [--runs 6] [--classes 50] [--box 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=6, help="runs (one molecule each)")
    parser.add_argument("--classes", type=int, default=50, help="classes per run")
    parser.add_argument("--box", type=int, default=128, help="box size in pixels")
    args = parser.parse_args(argv)
    config = SimulationConfig(n_classes=args.classes, box_sizes=(args.box,))
    simulate_run(SimulationConfig(n_classes=2, box_sizes=(args.box,)), 0)  # warm caches
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for seed in range(args.runs):
        simulate_run(config, 1000 + seed)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    total = args.runs * args.classes
    print(f"box {args.box}: {total} classes in {wall:.2f} s wall, {cpu:.2f} s CPU")
    print(f"{total / wall:.1f} classes/s (wall), {total / cpu:.1f} classes/s (CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
