"""Federated vs local-only vs centralised training on generated non-IID facilities.

Each site is a generated facility (different particle shapes, SNR ranges, junk mixes and
boxes: ``tests/support/sites.py``: ``NON_IID_SITES``) written as RELION projects; the
federated runs use the real ServerApp code (``run_federation``: guarded strategy, central
evaluation, registry) and the real ClientApp at every site, through the in-process Grid
(messages serialised to Flower's wire objects both ways). Local-only and centralised
models are trained with the same local-training function as the sites
(``task.train_locally`` on ``core.model.training``), with the same number of epochs. Every
arm starts from the same model: by default the shipped default model (``--init
default``, what a deployment's federation starts from; its untrained scores are printed
as "initial"), or fresh weights of ``--net`` (``--init fresh``).

Test data: per site, held-out jobs from that site's own distribution (never harvested);
"overall" is all of them together: the common held-out test set every model is judged
on (the federated model is every site's model; "better than local-only" compares it
with each site's local-only model there, and, as a stricter check, on that site's own
test jobs). Thresholds: federated and centralised models are
calibrated for 3% FNR on the server's generated validation set; a local-only model on
its site's validation split (what a site alone could do).

Printed: AUC and FNR per site and overall for every mode; rounds to converge (first round
whose overall AUC is within 1% of the run's best), the first round reaching 99% of the
centralised AUC, and the overall AUC by round; seconds per round, split into site
compute and everything else (serialisation, screening, aggregation, central evaluation);
bytes per round per site. With ``--seeds`` (several training seeds; the generated data
stay the same) every arm runs once per seed, then a summary over the seeds: each arm's
mean overall AUC, the federated share of the centralised AUC (ratio of the means and per
seed), and in how many seeds a federated arm reached 99% of it and beat every site's
local-only model on the common test set.

    nice -n 10 .venv/bin/python benchmarks/bench_federation.py --sites 5 --rounds 10
    nice -n 10 .venv/bin/python benchmarks/bench_federation.py --init fresh \
        --net default --sites 4 --jobs 6 --test-jobs 4 --rounds 30 --local-epochs 4 \
        --modes local,central,fedavg --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.model.training import LR_SCHEDULES
from cryodiscovery.federation import task
from cryodiscovery.federation.accounting import DP_DELTA, rdp_epsilon
from cryodiscovery.federation.config import load_facility_config
from cryodiscovery.federation.harvest import Harvest, harvest
from cryodiscovery.federation.server_app import generated_validation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support/
from support.loopback import InProcessRun, run_inprocess
from support.sites import (
    NON_IID_SITES,
    SiteSpec,
    site_classes,
    write_site,
)

MODES = ("local", "central", "fedavg", "fedprox", "fedadam", "fedavg-dp")


def _specs(args: argparse.Namespace) -> list[SiteSpec]:
    return [
        replace(s, n_jobs=args.jobs, n_classes=args.classes, particle_range=(20, 2000))
        for s in NON_IID_SITES[: args.sites]
    ]


def _initial(args: argparse.Namespace) -> ClassScorer:
    """The model every arm (local-only, central, federated) starts from: the shipped
    default model (what a deployment starts from), or fresh weights of ``--net``."""
    if args.init == "default":
        return load_scorer(None)
    torch.manual_seed(args.seed)
    net = (
        NetConfig(norm=args.norm)
        if args.net == "default"
        else NetConfig(stem=8, widths=(16, 32, 64), norm=args.norm)
    )
    return ClassScorer(
        [ClassNet(net)],
        net,
        PreprocessConfig(),
        "single",
        0.5,
        name=f"bench-{args.net}",
    )


def _evaluate(
    scorer: ClassScorer, tests: dict[str, list[ClassAverages]]
) -> dict[str, task.Evaluation]:
    out = {name: task.evaluate_scorer(scorer, sets) for name, sets in tests.items()}
    out["overall"] = task.evaluate_scorer(
        scorer, [s for sets in tests.values() for s in sets]
    )
    return out


def _federated(
    mode: str,
    args: argparse.Namespace,
    sites: dict[int, Path],
    initial: ClassScorer,
    validation: Sequence[ClassAverages],
    work: Path,
) -> InProcessRun:
    config: dict[str, str | int | float | bool] = {
        "num-rounds": args.rounds,
        "min-sites": len(sites),
        "local-epochs": args.local_epochs,
        "learning-rate": args.lr,
        "lr-decay": args.lr_decay,
        "local-lr-schedule": args.local_schedule,
        "seed": args.seed,
        "registry": str(work / f"registry-{mode}"),
        "strategy": mode if mode in ("fedprox", "fedadam") else "fedavg",
        "server-lr": args.server_lr,
        "proximal-mu": args.mu,
        "target-fnr": 0.03,
        "max-relative-update": 10.0,
    }
    if mode == "fedavg-dp":
        config.update(
            {"dp-clipping-norm": args.dp_clip, "dp-noise-multiplier": args.dp_noise}
        )
    return run_inprocess(config, sites, initial=initial, validation=validation)


def _converged(aucs: list[float]) -> int:
    best = max(aucs)
    return next(i + 1 for i, a in enumerate(aucs) if a >= best - 0.01)


def _row(name: str, evals: dict[str, task.Evaluation], columns: list[str]) -> str:
    cells = [f"{evals[c].auc:.4f}/{evals[c].fnr:.3f}" for c in columns]
    return f"{name:<22}" + "".join(f"{c:>18}" for c in cells)


#: Options: (flag, type, default, help); a tuple type means choices of str.
_OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("--sites", int, 5, "2-5 generated facilities"),
    ("--jobs", int, 3, "Class2D jobs per site"),
    ("--classes", int, 40, "classes per job"),
    ("--test-jobs", int, 2, "held-out jobs per site"),
    ("--rounds", int, 10, "federated rounds (x local epochs: every arm's epochs)"),
    ("--local-epochs", int, 2, "local epochs per round"),
    ("--lr", float, 3e-4, "local AdamW rate (fine-tuning)"),
    ("--lr-decay", ("none", "cosine"), "none", "federated arms: run config lr-decay"),
    ("--local-schedule", LR_SCHEDULES, "constant", "federated arms: local-lr-schedule"),
    ("--batch", int, 16, "batch size everywhere"),
    ("--mu", float, 0.01, "FedProx proximal weight"),
    ("--dp-clip", float, 0.0, "0: median round-1 FedAvg delta norm"),
    ("--dp-noise", float, 0.01, "central DP noise multiplier (fedavg-dp)"),
    ("--server-lr", float, 0.01, "FedAdam server step"),
    ("--init", ("default", "fresh"), "default", "shipped default or fresh --net"),
    ("--net", ("small", "default"), "small", "architecture with --init fresh"),
    ("--norm", ("batch", "group"), "batch", "normalisation with --init fresh"),
    ("--personalise", int, 0, "also fine-tune each federated model N epochs per site"),
    ("--personalise-lr", float, 0.0, "0: the --lr rate"),
    ("--modes", str, ",".join(MODES), "comma-separated arms"),
    ("--seed", int, 0, "training seed"),
    (
        "--seeds",
        str,
        "",
        "comma-separated training seeds (overrides --seed): every arm "
        "per seed, then the summary over seeds",
    ),
    ("--threads", int, 2, "torch threads"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind, default, text in _OPTIONS:
        if isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind, default=default, help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s] or [args.seed]
    t0 = time.perf_counter()
    runs: dict[int, _Outcome] = {}
    dp_clip = args.dp_clip
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        bench = _setup(args, Path(tmp))
        for seed in seeds:
            args.seed, args.dp_clip = seed, dp_clip
            bench.initial = _initial(args)
            if len(seeds) > 1:
                print(f"\n## training seed {seed}")
            runs[seed] = _benchmark(args, modes, bench, Path(tmp) / f"seed-{seed}")
    if len(seeds) > 1:
        print("\n" + "\n".join(_summary(runs)))
    print(f"\n# total {time.perf_counter() - t0:.0f} s")
    return 0


@dataclass
class _Bench:
    """The generated facilities, their harvests and test jobs, and the start model."""

    sites: dict[int, Path]  # node id -> federation.yaml
    data: dict[str, Harvest]
    tests: dict[str, list[ClassAverages]]
    validation: list[ClassAverages]  # the server's generated validation set
    initial: ClassScorer


def _setup(args: argparse.Namespace, work: Path) -> _Bench:
    t0 = time.perf_counter()
    (work / "ca.crt").write_text("placeholder\n")
    (work / "node_key").write_text("placeholder\n")
    caps = {"local_epochs": args.local_epochs, "batch_size": args.batch}
    sites, tests = {}, {}
    for i, spec in enumerate(_specs(args)):
        sites[i + 1] = write_site(
            work / spec.name,
            spec,
            seed=1000 + i,
            ca_certificate=work / "ca.crt",
            node_private_key=work / "node_key",
            extra={"caps": caps, "model_path": None},
        )
        tests[spec.name] = site_classes(replace(spec, n_jobs=args.test_jobs), 5000 + i)
    data = {
        name: harvest(load_facility_config(sites[i + 1]))
        for i, name in enumerate(tests)
    }
    bench = _Bench(
        sites, data, tests, generated_validation((424242, 424243), 60), _initial(args)
    )
    origin = "the shipped default" if args.init == "default" else "fresh weights"
    print(
        f"# {len(sites)} sites x {args.jobs} jobs x {args.classes} classes; test: "
        f"{args.test_jobs} held-out jobs per site; net {bench.initial.name} "
        f"({sum(p.numel() for p in bench.initial.members[0].parameters())} parameters,"
        f" from {origin}, {bench.initial.net_config.norm} norm); {args.rounds} rounds "
        f"x {args.local_epochs} local epochs (rate {args.lr:g}, {args.local_schedule} within "
        f"a round, threads {args.threads}); data {time.perf_counter() - t0:.0f} s"
    )
    for name, h in data.items():
        print(
            f"#   {name:<18} train {h.n_train:>4}  validation {h.n_validation:>3}  "
            f"test {sum(len(t) for t in tests[name]):>4}"
        )
    return bench


def _baselines(
    args: argparse.Namespace, b: _Bench, modes: list[str]
) -> tuple[
    dict[str, dict[str, task.Evaluation]], dict[str, dict[str, task.Evaluation]]
]:
    """The untrained, centralised and each site's local-only model, evaluated."""
    options = task.LocalTrainOptions(
        epochs=args.rounds * args.local_epochs,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
    )
    results = {
        "initial (no training)": _evaluate(
            task.recalibrate(b.initial, b.validation, 0.03)[0], b.tests
        )
    }
    local = {}
    if "local" in modes:
        for name, h in b.data.items():
            model = task.train_locally(b.initial, h.train, h.validation, options).scorer
            local[name] = _evaluate(
                task.recalibrate(model, h.validation, 0.03)[0], b.tests
            )
    if "central" in modes:
        t = time.perf_counter()
        pooled = task.train_locally(
            b.initial,
            [s for h in b.data.values() for s in h.train],
            [s for h in b.data.values() for s in h.validation],
            options,
        )
        results["central"] = _evaluate(
            task.recalibrate(pooled.scorer, b.validation, 0.03)[0], b.tests
        )
        print(f"# central training {time.perf_counter() - t:.0f} s")
    return results, local


def _arm(
    mode: str, args: argparse.Namespace, b: _Bench, work: Path
) -> tuple[ClassScorer, dict[str, task.Evaluation], str, list[float]]:
    """One federated arm: its final model, evaluations, a timing line and the overall
    test AUC of every round's global model."""
    if mode == "fedavg-dp" and args.dp_clip <= 0:
        norms = _round1_norms(args, b.sites, b.initial, b.validation, work)
        args.dp_clip = float(statistics.median(norms))
        print(
            f"# DP clipping norm = median round-1 FedAvg delta norm = {args.dp_clip:.4g}"
        )
    run = _federated(mode, args, b.sites, b.initial, b.validation, work)
    result, grid = run.result, run.grid
    per_round = [
        _evaluate(load_scorer(v.checkpoint), b.tests)["overall"].auc
        for v in result.versions
    ]
    n = len(result.rounds)
    secs = statistics.mean(r.seconds for r in result.rounds)
    compute = sum(run.site_seconds.values()) / n
    nbytes = sum(t.nbytes for t in grid.traffic) / n / len(b.sites)
    timing = (
        f"converged at round {_converged(per_round)}/{len(per_round)}; {secs:.2f} "
        f"s/round ({compute:.2f} site compute, {secs - compute:.2f} other); "
        f"{nbytes / 2**20:.2f} MiB/round/site (down+up)"
    )
    if mode == "fedavg-dp":
        eps = rdp_epsilon(args.dp_noise, n, DP_DELTA)
        timing += (
            f"; central DP: clipping norm {args.dp_clip:.4g}, noise multiplier "
            f"{args.dp_noise:g}, site-level (eps, delta=1e-5) after {n} rounds = {eps:.3g}"
        )
    return result.scorer, _evaluate(result.scorer, b.tests), timing, per_round


@dataclass
class _Outcome:
    """One training seed's evaluations: every arm's, each site's local-only model's,
    and each federated arm's overall AUC by round."""

    results: dict[str, dict[str, task.Evaluation]]
    local: dict[str, dict[str, task.Evaluation]]
    curves: dict[str, list[float]]


def _benchmark(
    args: argparse.Namespace, modes: list[str], b: _Bench, work: Path
) -> _Outcome:
    """Every arm for ``args.seed`` from ``b.initial``; prints its report."""
    work.mkdir(parents=True)
    results, local_models = _baselines(args, b, modes)
    timing: dict[str, str] = {}
    curves: dict[str, list[float]] = {}
    personal: dict[str, dict[str, float]] = {}
    for mode in [m for m in modes if m.startswith("fed")]:
        scorer, results[mode], timing[mode], curves[mode] = _arm(mode, args, b, work)
        if args.personalise > 0 and local_models:
            personal[mode] = _personalised(args, scorer, b.data, b.tests)
    columns = [*b.tests, "overall"]
    _report(columns, results, local_models, timing, curves)
    for mode, aucs in personal.items():
        better = [n for n in aucs if aucs[n] > local_models[n][n].auc]
        print(
            f"{mode} + {args.personalise} local epoch(s) at each site: own-test AUC "
            + ", ".join(f"{n} {a:.4f}" for n, a in aucs.items())
            + f"; better than local-only at {len(better)}/{len(aucs)} sites"
        )
    return _Outcome(results, local_models, curves)


def _summary(runs: dict[int, _Outcome]) -> list[str]:
    """The figures over training seeds: each arm's mean overall AUC (range), and for
    each federated arm its share of the centralised AUC (ratio of the means and per
    seed), in how many seeds it reached 99% of it, and in how many it beat every
    site's local-only model on the common test set."""
    seeds = list(runs)
    first = runs[seeds[0]]
    lines = [f"Over training seeds {', '.join(map(str, seeds))}:"]
    for mode in first.results:
        aucs = [runs[s].results[mode]["overall"].auc for s in seeds]
        lines.append(
            f"{mode}: overall AUC mean {statistics.mean(aucs):.4f} "
            f"(range {min(aucs):.4f}-{max(aucs):.4f})"
        )
    for mode in (m for m in first.results if m.startswith("fed")):
        parts = []
        if "central" in first.results:
            fed = [runs[s].results[mode]["overall"].auc for s in seeds]
            central = [runs[s].results["central"]["overall"].auc for s in seeds]
            reached = sum(
                max(runs[s].curves[mode]) >= 0.99 * c
                for s, c in zip(seeds, central, strict=True)
            )
            parts.append(
                f"{statistics.mean(fed) / statistics.mean(central):.2%} of centralised "
                "(ratio of the means; per seed "
                + ", ".join(f"{f / c:.2%}" for f, c in zip(fed, central, strict=True))
                + f"); 99% of it reached within the rounds in {reached}/{len(seeds)} seeds"
            )
        if first.local:
            beats = sum(
                all(
                    runs[s].results[mode]["overall"].auc > v["overall"].auc
                    for v in runs[s].local.values()
                )
                for s in seeds
            )
            parts.append(
                f"better than every site's local-only model on the common test set in "
                f"{beats}/{len(seeds)} seeds"
            )
        if parts:
            lines.append(f"{mode}: " + "; ".join(parts))
    return lines


def _personalised(
    args: argparse.Namespace,
    scorer: ClassScorer,
    data: dict[str, Harvest],
    tests: dict[str, list[ClassAverages]],
) -> dict[str, float]:
    """Each site fine-tunes the federated model on its own data (``cryodiscovery train
    --init``), recalibrates on its validation split; AUC on its own test jobs."""
    options = task.LocalTrainOptions(
        epochs=args.personalise,
        batch_size=args.batch,
        lr=args.personalise_lr or args.lr,
        seed=args.seed,
    )
    out = {}
    for name, h in data.items():
        model = task.train_locally(scorer, h.train, h.validation, options).scorer
        model, _ = task.recalibrate(model, h.validation, 0.03)
        out[name] = task.evaluate_scorer(model, tests[name]).auc
    return out


def _round1_norms(
    args: argparse.Namespace,
    sites: dict[int, Path],
    initial: ClassScorer,
    validation: Sequence[ClassAverages],
    work: Path,
) -> list[float]:
    """Weights-delta norms of the sites' first-round FedAvg updates (to set DP clipping)."""
    probe = argparse.Namespace(**{**vars(args), "rounds": 1})
    run = _federated("fedavg", probe, sites, initial, validation, work / "probe")
    return list(run.result.rounds[0].update_norms)


def _report(
    columns: list[str],
    results: dict[str, dict[str, task.Evaluation]],
    local: dict[str, dict[str, task.Evaluation]],
    timing: dict[str, str],
    curves: dict[str, list[float]],
) -> None:
    print("\nAUC/FNR per site (own held-out jobs) and overall")
    print(f"{'mode':<22}" + "".join(f"{c[:17]:>18}" for c in columns))
    for name, evals in local.items():
        print(_row(f"local-only {name[:11]}", evals, columns))
    for mode, evals in results.items():
        print(_row(mode, evals, columns))
    if "central" in results:
        central = results["central"]["overall"].auc
        for mode in (m for m in results if m.startswith("fed")):
            auc = results[mode]["overall"].auc
            reached = _reached(curves[mode], central)
            print(f"{mode}: overall AUC {auc / central:.2%} of centralised; {reached}")
    for mode in (m for m in results if m.startswith("fed")):
        if local:
            fed = results[mode]["overall"].auc
            common = [n for n in local if fed > local[n]["overall"].auc]
            own = [n for n in local if results[mode][n].auc > local[n][n].auc]
            print(
                f"{mode}: on the common test set (AUC {fed:.4f}) better than the "
                f"local-only model of {len(common)}/{len(local)} sites "
                f"(best local-only {max(v['overall'].auc for v in local.values()):.4f}); "
                f"on each site's own test jobs better at {len(own)}/{len(local)} "
                f"({', '.join(own) or 'none'})"
            )
        print(f"{mode}: {timing[mode]}")
        print(f"{mode}: overall AUC by round: {_curve(curves[mode])}")


def _reached(aucs: list[float], central: float, share: float = 0.99) -> str:
    """When a run's global model first reached ``share`` of the centralised AUC."""
    first = next((i + 1 for i, a in enumerate(aucs) if a >= share * central), None)
    if first is not None:
        return f"{share:.0%} of it first at round {first}/{len(aucs)}"
    best = max(range(len(aucs)), key=lambda i: aucs[i])
    return (
        f"{share:.0%} of it not reached in {len(aucs)} rounds (best "
        f"{aucs[best] / central:.2%}, round {best + 1})"
    )


def _curve(aucs: list[float], points: int = 10) -> str:
    """About ``points`` (round, AUC) pairs, always including the last round."""
    step = max(1, len(aucs) // points)
    rounds = sorted({*range(step, len(aucs) + 1, step), 1, len(aucs)})
    return ", ".join(f"{r} {aucs[r - 1]:.4f}" for r in rounds if r <= len(aucs))


if __name__ == "__main__":
    sys.exit(main())
