"""cryodiscovery-cryosparc: automated 2D class selection for cryoSPARC.

Online (cryoSPARC v5 with cryosparc-tools 5): scores a completed 2D Classification job and
saves particles_selected, particles_excluded, templates_selected and templates_excluded to
a new External job in the same workspace, with the gallery and scores in its event log:

    python -m cryosparc.tools login --url http://host:39000      # once; or set
    export CRYOSPARC_EMAIL=... CRYOSPARC_PASSWORD=...              # (never on the command line)
    cryodiscovery-cryosparc --url http://host:39000 --project P3 --job J42 --threshold 0.5

Offline (no server): reads a 2D job folder and writes the same four outputs as .cs files
plus scores.csv, gallery.png and run_record.json:

    cryodiscovery-cryosparc --job-dir /data/P3/J42 --out J42_selection

Either mode with --selection FILE (selection.csv from the review page, or a
backup_selection.star) saves a person's selection instead of the model's decisions
(classes are still scored, for the scores table).

cryoSPARC v4.7 (cryosparc-tools 4.7): --host, --base-port and CRYOSPARC_LICENSE_ID,
CRYOSPARC_EMAIL, CRYOSPARC_PASSWORD in the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryodiscovery.core import __version__
from cryodiscovery.core.cli import configure_logging, sigterm_interrupts
from cryodiscovery.core.commands.selection_args import (
    add_selection_args,
    selection_options,
)
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import check_output_folder
from cryodiscovery.core.person_selection import PersonChoice, read_person_choice
from cryodiscovery.cryosparc_job.online import (
    JobInterrupted,
    OnlineRequest,
    Selector,
    one_line,
    run_online,
)
from cryodiscovery.cryosparc_job.session import (
    TOOLS_VERSION,
    ServerConfig,
    ServerError,
    connect,
)

if TYPE_CHECKING:
    from cryodiscovery.core.selection import SelectionOptions

log = logging.getLogger(__name__)
PROG = "cryodiscovery-cryosparc"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its help is this module's docstring)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"{__version__} (cryosparc-tools {TOOLS_VERSION})",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging and tracebacks"
    )
    env = os.environ.get
    server = p.add_argument_group("cryoSPARC server (online mode)")
    # No environment defaults here: --url given with --job-dir must be told from
    # $CRYOSPARC_BASE_URL set in the shell (_check applies the environment).
    server.add_argument(
        "--url",
        help="web URL, e.g. http://host:39000 (cryoSPARC v5; default $CRYOSPARC_BASE_URL)",
    )
    server.add_argument(
        "--host",
        help="master host name (instead of --url; cryoSPARC v4; default "
        "$CRYOSPARC_MASTER_HOSTNAME)",
    )
    server.add_argument(
        "--base-port",
        type=int,
        default=env("CRYOSPARC_BASE_PORT"),
        help="base port (default 39000)",
    )
    server.add_argument(
        "--email",
        default=env("CRYOSPARC_EMAIL"),
        help="account email (default $CRYOSPARC_EMAIL; password only from $CRYOSPARC_PASSWORD)",
    )
    server.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per request (default 300)"
    )
    job = p.add_argument_group("what to score")
    job.add_argument("--project", help="project UID, e.g. P3")
    job.add_argument("--job", help="2D Classification job UID, e.g. J42")
    job.add_argument(
        "--workspace", help="workspace for the new job (default: the 2D job's)"
    )
    job.add_argument("--title", help="title of the new External job")
    job.add_argument(
        "--job-dir",
        type=Path,
        help="offline: a 2D Classification job folder (or its class_averages .cs)",
    )
    job.add_argument(
        "--out",
        type=Path,
        help="output folder (offline: required; online: a local copy of the report)",
    )
    selection = p.add_argument_group("selection")
    add_selection_args(selection)
    selection.add_argument(
        "--selection",
        type=Path,
        metavar="FILE",
        help="a person's selection (selection.csv or backup_selection.star) to save "
        "instead of the model's decisions",
    )
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.job_dir is not None:
        if args.project or args.job:
            p.error("--job-dir (offline) cannot be combined with --project/--job")
        if args.url or args.host:
            p.error("--job-dir (offline) cannot be combined with --url/--host")
        if args.out is None:
            p.error("--job-dir needs --out")
    elif not (args.project and args.job):
        p.error("give --project and --job (online) or --job-dir and --out (offline)")
    args.url = args.url or os.environ.get("CRYOSPARC_BASE_URL")
    args.host = args.host or os.environ.get("CRYOSPARC_MASTER_HOSTNAME")
    if args.job_dir is None and not (args.url or args.host):
        p.error("give --url (or --host/--base-port), or set CRYOSPARC_BASE_URL")


def make_selector(options: SelectionOptions) -> Selector:
    """The core selection with the command's options (model loaded on first use)."""
    from cryodiscovery.core.selection import select_classes

    return lambda classes: select_classes(classes, options)


def server_config(args: argparse.Namespace) -> ServerConfig:
    """Connection settings from the options and the environment (secrets: environment only)."""
    return ServerConfig(
        url=args.url if not args.host else None,
        host=args.host,
        base_port=args.base_port,
        email=args.email,
        password=os.environ.get("CRYOSPARC_PASSWORD"),
        license=os.environ.get("CRYOSPARC_LICENSE_ID"),
        timeout=args.timeout,
    )


def _run(
    args: argparse.Namespace,
    argv: list[str] | None,
    select: Selector,
    choice: PersonChoice | None,
) -> Any:
    if args.job_dir is not None:
        from cryodiscovery.cryosparc_job.offline import run_offline

        result = run_offline(args.job_dir, args.out, select, argv=argv, choice=choice)
        print(f"{result.summary}\nwrote {len(result.files)} files to {args.out}")
        return result
    if args.out is not None:  # the local report folder: refused before the server
        check_output_folder(args.out, PROG)
    request = OnlineRequest(
        args.project, args.job, args.workspace, args.title, args.out, argv, choice
    )
    result = run_online(connect(server_config(args)), request, select)
    print(f"saved {result.saved} to External job {result.project}/{result.job}")
    return result


def main(argv: list[str] | None = None, *, select: Selector | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 server or run failure, 2 bad
    input, 130 interrupted). ``select`` replaces the model (for tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    configure_logging(args.verbose)
    if not args.verbose:  # one line per HTTP request is noise for users
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        options = selection_options(args)  # refused here, before any server is asked
        choice = read_person_choice(args.selection) if args.selection else None
        with sigterm_interrupts():
            _run(args, argv, select or make_selector(options), choice)
        return 0
    except InputError as err:
        return _error(args, err, 2)
    except (JobInterrupted, KeyboardInterrupt) as err:
        return _error(args, err, 130)
    except (ServerError, Exception) as err:
        return _error(args, err, 1)


def _error(args: argparse.Namespace, err: BaseException, code: int) -> int:
    if args.verbose:
        log.exception("failed")
    message = one_line(err) if not isinstance(err, KeyboardInterrupt) else "interrupted"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
