"""cryodiscovery-relion: automated 2D class selection as a RELION External job.

RELION runs it from the project folder with the Class2D job's data.star as input
particles, and gets what its own Select job writes (particles.star, class_averages.star,
backup_selection.star) plus gallery.png and scores.csv. Parameters come as RELION's
"--label value" pairs; an empty value means the default. Exactly as RELION runs it:

  cryodiscovery-relion --o External/job010/ \\
      --in_parts Class2D/job008/run_it025_data.star --threshold 0.5 --j 4

Write a job.star template for Jobs > Load job.star or a Scheme:

  cryodiscovery-relion --write_job_star Schemes/auto/select/
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback

from cryodiscovery.core import __version__
from cryodiscovery.core.cli import sigterm_interrupts
from cryodiscovery.core.errors import InputError
from cryodiscovery.relion_external.config import add_args, config_from_args
from cryodiscovery.relion_external.job import (
    EXIT_CODES,
    ExternalJob,
    JobAborted,
    check_job_folder,
)
from cryodiscovery.relion_external.job_star import write_job_star

log = logging.getLogger(__name__)
PROG = "cryodiscovery-relion"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (RELION's shapes; unknown options are collected, not fatal)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_args(parser)
    parser.add_argument("--write_job_star", metavar="DIR",
                        help="write DIR/job.star (an External job running this) and exit")  # fmt: skip
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Progress on stdout (RELION's run.out), warnings and errors on stderr (run.err)."""
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter(" %(message)s"))
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(logging.Formatter(" %(levelname)s: %(message)s"))
    err.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[out, err],
        force=True,
    )


def sigterm_aborts() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM (a queue's time limit, ``kill``) raises
    :class:`JobAborted` (after the outputs being put in place, if any)."""
    return sigterm_interrupts(lambda: JobAborted("terminated by SIGTERM"))


def _report_failure(err: BaseException) -> None:
    """One line on stderr (run.err); a traceback first when it is not a user error."""
    if isinstance(err, JobAborted | KeyboardInterrupt):
        print(f"{PROG}: aborted ({err or 'interrupted'})", file=sys.stderr)
    elif isinstance(err, InputError):
        print(f"{PROG}: error: {err}", file=sys.stderr)
    elif isinstance(err, OSError):  # a full disk, a folder gone: no program bug
        where = f"{err.filename}: " if err.filename else ""
        print(f"{PROG}: error: {where}{err.strerror or err}", file=sys.stderr)
    else:
        traceback.print_exception(err, file=sys.stderr)
        print(f"{PROG}: error: {type(err).__name__}: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one External job with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status (0 success, 1 failure, 2 bad input, 130 aborted), with the matching RELION
    marker written (none when ``--o`` is refused)."""
    args = list(sys.argv[1:] if argv is None else argv)
    ns, unknown = build_parser().parse_known_args(args)
    configure_logging(ns.verbose)
    if ns.write_job_star:
        path = write_job_star(ns.write_job_star)
        print(f"Wrote {path}: load it with Jobs > Load job.star, or use it in a Scheme")
        return 0
    control = ns.pipeline_control or ns.o
    if not control:
        print(
            f"{PROG}: error: --o is missing (the job folder RELION gives)",
            file=sys.stderr,
        )
        return EXIT_CODES["bad_input"]
    try:  # before the first marker is touched: another job's folder stays as it is
        for folder in dict.fromkeys(f for f in (ns.o, control) if f):
            check_job_folder(folder, PROG)  # run_record's command
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_CODES["bad_input"]
    job = ExternalJob(control)
    try:
        with job, sigterm_aborts():
            log.info("%s %s: automated 2D class selection", PROG, __version__)
            if unknown:
                log.warning("ignoring arguments not understood: %s", " ".join(unknown))
            config = config_from_args(ns, unknown)
            from cryodiscovery.relion_external.selection_job import run_selection_job

            run_selection_job(config, job, argv=[PROG, *args])
    except (Exception, KeyboardInterrupt) as err:
        if job.outcome is None:  # the job folder itself could not be prepared
            reason = err.strerror if isinstance(err, OSError) else err
            print(f"{PROG}: error: cannot use {control}: {reason}", file=sys.stderr)
            return EXIT_CODES["bad_input"]
        _report_failure(err)
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
