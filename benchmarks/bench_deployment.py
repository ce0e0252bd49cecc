"""Seconds per round of a real Flower deployment on 127.0.0.1, and where they go.

Starts what the README tells a server operator and facility managers to start: a
``flower-superlink`` bound to 127.0.0.1 with TLS, SuperNode authentication, ``--database``
and no run-time dependency installation, the nginx front (when nginx is installed) that
forwards only the Fleet API, and one ``flower-supernode`` + ``flower-superexec`` per
facility (registered EC key, TLS, generated non-IID RELION history); then runs the real
ServerApp and ClientApp with ``flwr run`` (Control API) for ``--rounds`` rounds and reads
the timings the apps log:

- seconds per round: between one site's consecutive train replies (every site, averaged);
- per message (ClientApp): how old its process was when the message arrived (a SuperNode
  starts one ClientApp process per message: interpreter, imports, FAB unpacking), the
  harvest, local training and the whole handler; with ``--worker`` the facility's site
  worker does the work and the ClientApp process only forwards;
- per phase (ServerApp, from ``flwr log``): sending, waiting for train replies, screening +
  aggregation + central evaluation + publishing, the evaluate phase.

"The rest" is a round's wall time minus the sites' mean train and evaluate handlers
(process start-ups, transfers, polls, the server's work). Every process is stopped at the
end, also on errors.

    nice -n 10 .venv/bin/python benchmarks/bench_deployment.py --sites 3 --rounds 3
    .venv/bin/python benchmarks/bench_deployment.py --sites 2 --rounds 4 --worker
    .venv/bin/python benchmarks/bench_deployment.py --model default --worker --evaluate-every 4
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cryodiscovery.federation import control, deploy, gateway

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support/
from support import testbed
from support.sites import NON_IID_SITES, write_site

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
TRAINED = re.compile(r"round (\d+): trained on \d+ classes in ([\d.]+) s")
HANDLED = re.compile(
    r"(train|evaluate) message handled in ([\d.]+) s \(process started ([\d.na]+) s"
)
FORWARDED = re.compile(
    r"(train|evaluate) message forwarded to the site worker, reply in ([\d.]+) s "
    r"\(process started ([\d.na]+) s"
)
HARVESTED = re.compile(
    r"harvested \d+ training and \d+ validation classes in ([\d.]+) s"
)


def _sites(
    args: argparse.Namespace,
    root: Path,
    server: testbed.LocalServer,
) -> list[int]:
    nodes = []
    for i, spec in enumerate(NON_IID_SITES[: args.sites]):
        spec = dataclasses.replace(spec, n_jobs=args.jobs, n_classes=args.classes)
        site = root / spec.name
        site.mkdir(parents=True)
        public_key = gateway.make_node_key(site / "node_key")
        yaml_path = write_site(
            site,
            spec,
            100 + i,
            ca_certificate=server.ca,
            node_private_key=site / "node_key",
            superlink=server.fleet,
            extra={
                "caps": {
                    "local_epochs": args.local_epochs,
                    "batch_size": 16,
                    "threads": args.threads,
                },
                "cache_dir": str(root / "cache" / spec.name),
                **(
                    {"worker_socket": str(args.sockets / f"{spec.name}.sock")}
                    if args.worker
                    else {}
                ),
            },
        )
        nodes.append(control.register_node(server.conn, public_key))
        server.daemons += deploy.start_supernode(
            deploy.supernode_spec(yaml_path, site / "state", testbed.free_port(), 120.0)
        )
    control.wait_for_nodes(server.conn, nodes)
    return nodes


def _parse(
    daemons: list[deploy.Daemon],
) -> tuple[list[float], dict[str, list[float]]]:
    """Seconds per round (between one site's consecutive train replies, averaged over
    sites) and per-message timings from the apps' log lines."""
    from datetime import datetime

    periods: list[float] = []
    parts: dict[str, list[float]] = defaultdict(list)
    for d in daemons:
        trained: dict[int, float] = {}
        in_worker = d.name.endswith("-worker")
        for line in d.log_text().splitlines():
            stamp = STAMP.match(line)
            if (m := TRAINED.search(line)) and stamp:
                when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
                trained[int(m.group(1))] = when.timestamp()
                parts["local training"].append(float(m.group(2)))
            elif m := HANDLED.search(line):
                parts[f"{m.group(1)} handler"].append(float(m.group(2)))
                if not in_worker:
                    parts[f"{m.group(1)} process age"].append(float(m.group(3)))
            elif m := FORWARDED.search(line):
                parts[f"{m.group(1)} forwarded (whole)"].append(float(m.group(2)))
                parts[f"{m.group(1)} process age"].append(float(m.group(3)))
                if m.group(1) == "train" and stamp:
                    when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
                    trained[len(trained) + 1] = when.timestamp()
            elif m := HARVESTED.search(line):
                parts["harvest (cache miss or first in process)"].append(
                    float(m.group(1))
                )
            elif "harvest reused from" in line:
                parts["harvest cache hits"].append(1.0)
        rounds = sorted(trained)
        periods += [trained[b] - trained[a] for a, b in itertools.pairwise(rounds)]
    return periods, parts


def _server_log(conn: control.CliConnection, run_id: int) -> list[str]:
    """The ServerApp's per-round timing lines, from ``flwr log`` (Control API)."""
    argv = [deploy.flower_script("flwr"), "log", str(run_id), conn.name, "--show"]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        env=deploy.flower_env(conn.flwr_home),
        check=False,
    )
    return [
        line.split("cryodiscovery.federation.rounds: ", 1)[-1]
        for line in done.stdout.splitlines()
        if "timing:" in line
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="Class2D jobs per site")
    parser.add_argument("--classes", type=int, default=36, help="classes per job")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--model", choices=("tiny", "default"), default="tiny")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per site (caps.threads; the sites share this host's cores)",
    )
    parser.add_argument(
        "--evaluate-every",
        type=int,
        default=1,
        help="run config evaluate-every (sites evaluate every N rounds and the last)",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="each facility runs the long-running site worker (worker_socket)",
    )
    parser.add_argument("--logs", type=Path, help="copy every process's log here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    server: testbed.LocalServer | None = None
    with (
        tempfile.TemporaryDirectory(prefix="bench-deployment-") as tmp,
        tempfile.TemporaryDirectory(prefix="cdw-", dir="/tmp") as sockets,
    ):
        root, args.sockets = Path(tmp), Path(sockets)
        try:
            t0 = time.perf_counter()
            server = testbed.start_local_server(root / "server")
            conn, daemons = server.conn, server.daemons
            _sites(args, root, server)
            print(
                f"# deployment up in {time.perf_counter() - t0:.1f} s "
                f"(fleet via {server.fleet})"
            )
            model = (
                testbed.write_tiny_model(root / "tiny.pt")
                if args.model == "tiny"
                else None
            )
            config: dict[str, str | int | float] = {
                "num-rounds": args.rounds,
                "min-sites": args.sites,
                "local-epochs": args.local_epochs,
                "evaluate-every": args.evaluate_every,
                "registry": str(root / "registry"),
                "validation-seeds": "4242",
                "validation-classes": 40,
            }
            if model is not None:
                config["initial-model"] = str(model)
            t0 = time.perf_counter()
            run_id = control.start_run(conn, config)
            status = control.wait_for_run(conn, run_id, 1800.0)
            total = time.perf_counter() - t0
            rounds, parts = _parse(daemons)
            server_log = _server_log(conn, run_id)
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                for d in daemons:
                    (args.logs / f"{d.name}.log").write_text(d.log_text())
            if not status.succeeded:
                print(f"run failed: {status.details}", file=sys.stderr)
                return 1
        finally:
            if server is not None:
                deploy.stop_all(server.daemons)
    _report(args, total, rounds, parts)
    for line in server_log:
        print("  ServerApp: " + line)
    return 0


def _report(
    args: argparse.Namespace,
    total: float,
    secs: list[float],
    parts: dict[str, list[float]],
) -> None:
    print(
        f"{args.sites} sites x {args.jobs} jobs x {args.classes} classes, model "
        f"{args.model}, {args.local_epochs} local epoch(s): run {total:.1f} s for "
        f"{args.rounds} rounds (incl. ServerApp start and initial evaluation); "
        f"site worker {'on' if args.worker else 'off'}; sites evaluate every "
        f"{args.evaluate_every} round(s)"
    )
    print(
        "seconds per round (between a site's consecutive train replies): "
        + ", ".join(f"{s:.1f}" for s in secs)
    )
    for name in sorted(parts):
        v = parts[name]
        print(
            f"  {name:<24} mean {statistics.mean(v):6.2f} s  max {max(v):6.2f} s  (n={len(v)})"
        )
    if secs and parts.get("train handler") and parts.get("evaluate handler"):
        work = statistics.mean(parts["train handler"]) + statistics.mean(
            parts["evaluate handler"]
        )
        print(
            f"mean round {statistics.mean(secs):.1f} s = site handlers (train + "
            f"evaluate, mean) {work:.1f} s + the rest {statistics.mean(secs) - work:.1f} s "
            "(ClientApp process start-ups, transfers, polls, screening, central evaluation)"
        )


if __name__ == "__main__":
    sys.exit(main())
