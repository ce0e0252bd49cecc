"""RELION's pipeline-control protocol for one run of an External job.

RELION learns how a job ended only from marker files in the job folder: exactly one of
``RELION_JOB_EXIT_SUCCESS``, ``RELION_JOB_EXIT_FAILURE`` or ``RELION_JOB_EXIT_ABORTED``
(without one the GUI shows the job running forever). The GUI asks a running job to stop by
creating ``RELION_JOB_ABORT_NOW``. Names as in RELION's ``src/pipeline_control.h``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"
EXIT_MARKERS: tuple[str, ...] = (EXIT_SUCCESS, EXIT_FAILURE, EXIT_ABORTED)

#: Process exit status per outcome, as RELION's ``pipeline_control_relion_exit`` returns.
EXIT_CODES: dict[str, int] = {"success": 0, "failure": 1, "aborted": 2}


class JobAborted(Exception):
    """The job was asked to stop (``RELION_JOB_ABORT_NOW``, Ctrl-C or SIGTERM)."""


class ExternalJob:
    """Context manager that owns the exit markers of one run in ``control_dir``.

    On entry it removes the exit markers of an earlier run (as RELION does before it starts
    a job), so a failed rerun never leaves a stale ``RELION_JOB_EXIT_SUCCESS``. On exit it
    writes exactly one marker: success when the block ended normally, aborted on
    :class:`JobAborted` or ``KeyboardInterrupt``, failure on any other exception. The
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
        else:
            self.outcome = "failure"
        name = {
            "success": EXIT_SUCCESS,
            "aborted": EXIT_ABORTED,
            "failure": EXIT_FAILURE,
        }[self.outcome]
        self.marker(name).touch()
        log.debug("wrote %s", self.marker(name))

    @property
    def exit_code(self) -> int:
        """Process exit status for the outcome (0 success, 1 failure, 2 aborted)."""
        if self.outcome is None:
            raise ValueError("the job has not finished")
        return EXIT_CODES[self.outcome]
