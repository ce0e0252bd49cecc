"""Federated learning: at a facility, check what would be used and sent, pull the newest
model, run the site worker; on the server, start a run and wait for its outcome.

  cryodiscovery federation check --config /etc/cryodiscovery/federation.yaml
      prints the data that would be used (per source and label) and what would be sent
      (parameter names, shapes, bytes); contacts nothing.

  cryodiscovery federation pull --registry /mnt/federation/registry \\
      --config /etc/cryodiscovery/federation.yaml
  cryodiscovery federation pull --from https://fed.example.org/registry/ --out model.pt

  cryodiscovery federation worker --config /etc/cryodiscovery/federation.yaml
      runs the facility's site worker on the config's worker_socket (start it beside
      the SuperNode; the ClientApp then hands it every message, see README).

  cryodiscovery federation run cryodiscovery \\
      --run-config 'num-rounds=5 min-sites=3 registry="/srv/cryodiscovery/registry"'
      (server host) submits a run with `flwr run` and waits until `flwr ls` reports it
      finished; exit status 0 only when it finished completed (flwr run alone exits 0
      even when the run is refused or fails).

pull installs the newest global model at --out (default: model_path in the config), the
file scoring then uses (cryodiscovery score ... --model PATH). With --config the model must
pass the acceptance gate on the site's validation split first (exit status 1 when the
current model is kept); --force skips the gate.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from cryodiscovery.core.errors import InputError

log = logging.getLogger(__name__)

#: What the ``federation`` extra installs: import name -> distribution.
EXTRA_MODULES = {
    "flwr": "flwr",
    "dp_accounting": "dp-accounting",
    "yaml": "pyyaml",
    "cryptography": "cryptography",
}


def check_extra() -> None:
    """``InputError`` naming what is missing when the ``federation`` extra is not
    installed (this module itself imports none of it, so ``--help`` still works)."""
    missing = [
        dist
        for module, dist in EXTRA_MODULES.items()
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise InputError(
            None,
            f"the federation commands need {', '.join(missing)}, not installed here: "
            'pip install "cryodiscovery[federation]"',
        )


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register ``check``, ``pull``, ``worker`` and ``run`` under ``cryodiscovery
    federation``."""
    sub = parser.add_subparsers(
        dest="federation_command", required=True, metavar="ACTION"
    )
    check = sub.add_parser(
        "check", help="show what would be used and what would be sent"
    )
    check.add_argument("--config", type=Path, required=True, help="federation.yaml")
    pull = sub.add_parser(
        "pull", help="install the newest global model from the registry"
    )
    source = pull.add_mutually_exclusive_group(required=True)
    source.add_argument("--registry", type=Path, help="a registry folder")
    source.add_argument(
        "--from", dest="url", metavar="URL", help="a registry served over http(s)"
    )
    pull.add_argument("--out", type=Path, help="where to install (default: model_path)")
    pull.add_argument(
        "--config",
        type=Path,
        help="federation.yaml: enables the acceptance gate on local data",
    )
    pull.add_argument(
        "--version", type=int, help="a specific version (default: newest)"
    )
    pull.add_argument("--ca", type=Path, help="CA certificate for an https registry")
    pull.add_argument("--force", action="store_true", help="install without the gate")
    worker = sub.add_parser(
        "worker",
        help="serve this facility's Flower messages from one long-running process",
    )
    worker.add_argument("--config", type=Path, required=True, help="federation.yaml")
    run = sub.add_parser(
        "run", help="start a federation run; exit 0 only if it finished completed"
    )
    run.add_argument(
        "superlink", nargs="?", help="flwr connection name (default: flwr's default)"
    )
    run.add_argument(
        "--run-config", "-c", action="append", default=[], help="as for flwr run"
    )
    run.add_argument("--app", type=Path, help="Flower App folder (default: shipped)")
    run.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds")
    run.add_argument("--poll", type=float, default=5.0, help="seconds between polls")


def main(args: argparse.Namespace) -> int:
    """Run ``check``, ``pull`` or ``worker``; returns the exit status."""
    check_extra()
    from cryodiscovery.federation.config import load_facility_config
    from cryodiscovery.federation.operations import check_report, pull_latest

    if args.federation_command == "run":
        return _run(args)
    if args.federation_command == "worker":
        from cryodiscovery.federation.worker import serve

        return serve(args.config)
    if args.federation_command == "check":
        print(check_report(load_facility_config(args.config)))
        return 0
    config = load_facility_config(args.config) if args.config else None
    out = args.out or (config.model_path if config else None)
    if out is None:
        raise InputError(args.config, "give --out, or model_path in the configuration")
    source = args.url or str(args.registry)
    result = pull_latest(
        source,
        Path(out),
        config=config,
        version=args.version,
        force=args.force,
        ca_file=args.ca,
    )
    state = "installed" if result.installed else "not installed"
    print(f"version {result.version} {state} at {result.path}: {result.reason}")
    if not result.installed and result.reason != "already installed":
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    """``federation run``: 0 when the run finished completed, else 1."""
    from cryodiscovery.federation.deploy import APP_DIR
    from cryodiscovery.federation.submission import run_to_completion

    try:
        outcome = run_to_completion(
            args.app or APP_DIR,
            args.superlink,
            args.run_config,
            args.timeout,
            args.poll,
        )
    except RuntimeError as err:
        print(f"run refused: {err}")
        return 1
    details = f": {outcome.details}" if outcome.details else ""
    print(f"run {outcome.run_id} {outcome.status}{details}")
    return 0 if outcome.succeeded else 1
