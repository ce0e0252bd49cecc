"""RELION's pipeline-control protocol for one run of an External job.

RELION learns how a job ended only from marker files in the job folder: exactly one of
``RELION_JOB_EXIT_SUCCESS``, ``RELION_JOB_EXIT_FAILURE`` or ``RELION_JOB_EXIT_ABORTED``
(without one the GUI shows the job running forever). The GUI asks a running job to stop by
creating ``RELION_JOB_ABORT_NOW``. Names as in RELION's ``src/pipeline_control.h``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from types import TracebackType

from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import recorded_command

log = logging.getLogger(__name__)

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_MARKERS: tuple[str, ...] = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)

#: Process exit status per outcome: the scheme of every cryodiscovery entry point (0 ok,
#: 1 failure, 2 bad input, 130 aborted or interrupted). RELION reads the marker files,
#: not the status, so it need not follow ``pipeline_control_relion_exit``'s 2 for aborts.
EXIT_CODES: dict[str, int] = {
    "success": 0,
    "failure": 1,
    "bad_input": 2,
    "aborted": 130,
}
#: Files RELION itself puts in a job folder before or while it runs the job, and the
#: markers of a run of this job that wrote no outputs (a failed or aborted first run).
RELION_FILES = frozenset(
    {"run.out", "run.err", "note.txt", "job_pipeline.star", ABORT_NOW, *EXIT_MARKERS}
)
#: An External job's job.star: RELION 4.0/5.0 label, RELION 3.1 type number.
_EXTERNAL_JOB_STAR = re.compile(
    r"^\s*_rlnJobType(?:Label\s+relion\.external|\s+99)\s*$", re.MULTILINE
)


def check_job_folder(folder: str | Path, command: str) -> None:
    """Refuse a job folder that belongs to another job, before anything in it is touched.

    The rule for "this job owns ``folder``", in order:

    - it does not exist yet (RELION normally makes it first), or is empty;
    - it holds a ``run_record.json`` written by ``command`` (an earlier run of this job);
    - it holds a ``job.star`` of an External job (RELION wrote it for this job);
    - everything in it is RELION's own bookkeeping (``run.out``, ``run.err``,
      ``note.txt``, exit and abort markers) or a staging folder this job left behind.

    Anything else (``Class2D/job013/`` with its ``run_it025_*`` files, a file, a folder of
    unrelated data) is another job's or the user's, and writing exit markers there would
    change what RELION believes about that job.

    Raises
    ------
    InputError
        ``folder`` is not a folder, or is not this job's by the rule above.
    """
    path = Path(folder)
    if not path.exists():
        return
    if not path.is_dir():
        raise InputError(path, "exists and is not a folder; give the job folder")
    names = {p.name for p in path.iterdir()}
    if recorded_command(path) == command:
        return
    job_star = path / "job.star"
    if job_star.is_file():
        try:
            if _EXTERNAL_JOB_STAR.search(job_star.read_text(errors="replace")):
                return
        except OSError:
            pass
    foreign = sorted(
        n for n in names if n not in RELION_FILES and not n.startswith(".staging-")
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(
            path,
            f"is not this External job's folder (it holds {shown}); give --o a new "
            "job folder, e.g. External/job010/",
        )


class JobAborted(Exception):
    """The job was asked to stop (``RELION_JOB_ABORT_NOW``, Ctrl-C or SIGTERM)."""


class ExternalJob:
    """Context manager that owns the exit markers of one run in ``control_dir``.

    On entry it removes the exit markers of an earlier run (as RELION does before it starts
    a job), so a failed rerun never leaves a stale ``RELION_JOB_EXIT_SUCCESS``. On exit it
    writes exactly one marker: success when the block ended normally, aborted on
    :class:`JobAborted` or ``KeyboardInterrupt``, failure on any other exception (outcome
    ``"bad_input"`` for an :class:`InputError`, ``"failure"`` otherwise). The
    exception is not swallowed; ``outcome`` tells the caller which marker was written.

    ``RELION_JOB_ABORT_NOW`` is never removed here: the GUI removes it before it starts a
    job, and one that exists when the run starts asks this run to stop.

    Parameters
    ----------
    control_dir:
        The job folder RELION watches (``--pipeline_control``, else ``--o``).
    """

    def __init__(self, control_dir: str | Path) -> None:
        self.control_dir = Path(control_dir)
        self.outcome: str | None = None

    def marker(self, name: str) -> Path:
        """Path of marker ``name`` in the control folder."""
        return self.control_dir / name

    def abort_requested(self) -> bool:
        """True when the GUI has created ``RELION_JOB_ABORT_NOW``."""
        return os.path.exists(self.marker(ABORT_NOW))

    def check_abort(self) -> None:
        """Raise :class:`JobAborted` when an abort was requested; cheap (one ``stat``)."""
        if self.abort_requested():
            raise JobAborted(f"{ABORT_NOW} found in {self.control_dir}")

    def __enter__(self) -> ExternalJob:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        for name in EXIT_MARKERS:
            self.marker(name).unlink(missing_ok=True)
        self.outcome = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.outcome = "success"
        elif issubclass(exc_type, JobAborted | KeyboardInterrupt):
            self.outcome = "aborted"
        elif issubclass(exc_type, InputError):
            self.outcome = "bad_input"
        else:
            self.outcome = "failure"
        try:
            self.finish(self.outcome)
        except OSError:
            if exc is None:
                raise
            # The run's own error (often the same unwritable folder) is the one to report.
            log.debug("cannot write the exit marker", exc_info=True)

    def finish(self, outcome: str) -> Path:
        """Leave exactly one exit marker, the one of ``outcome`` (``"success"``,
        ``"aborted"``, ``"failure"`` or ``"bad_input"``); returns its path."""
        name = {
            "success": EXIT_SUCCESS,
            "aborted": EXIT_ABORTED,
            "failure": EXIT_FAILURE,
            "bad_input": EXIT_FAILURE,
        }[outcome]
        for other in EXIT_MARKERS:
            if other != name:
                self.marker(other).unlink(missing_ok=True)
        self.marker(name).touch()
        self.outcome = outcome
        log.debug("wrote %s", self.marker(name))
        return self.marker(name)

    @property
    def exit_code(self) -> int:
        """Process exit status for the outcome (0 success, 1 failure, 2 bad input,
        130 aborted)."""
        if self.outcome is None:
            raise ValueError("the job has not finished")
        return EXIT_CODES[self.outcome]
