"""Outputs that appear whole or not at all, and the record of how they were made."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryodiscovery.core import __version__
from cryodiscovery.core.errors import InputError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The rename is atomic on one filesystem, so a reader sees the old file or the whole new
    one, never a half-written file. On an exception the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600; give the output the mode any new file gets under the umask.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: Commit sections entered and not yet left, and the interruptions they hold back.
_commit_depth = 0
_held_back: list[BaseException] = []


@contextlib.contextmanager
def commit_section() -> Iterator[None]:
    """Within the block (the renames that put a set of outputs in place), an interruption
    raised through :func:`interrupt_or_hold` waits until the block ends, so a signal
    never leaves half of the old outputs and half of the new; then it is raised."""
    global _commit_depth
    _commit_depth += 1
    try:
        yield
    finally:
        _commit_depth -= 1
    if _commit_depth == 0 and _held_back:
        error = _held_back[0]
        _held_back.clear()
        raise error


def interrupt_or_hold(error: BaseException) -> None:
    """For signal handlers: raise ``error`` now, or at the end of the commit section in
    progress (:func:`commit_section`)."""
    if _commit_depth:
        _held_back.append(error)
        return
    raise error


@contextlib.contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Yield a staging folder inside ``out_dir``; on success move its files into place.

    Nothing appears in ``out_dir`` until the block ends without an exception; then each
    file is renamed in (atomic per file; files that existed are replaced). On an exception
    the staging folder is deleted and ``out_dir`` keeps what it had.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        with commit_section():
            for src in sorted(stage.rglob("*")):
                if src.is_dir():
                    continue
                dest = out / src.relative_to(stage)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


#: What marks a folder as a RELION job's (or project's) or a cryoSPARC job's: a file name,
#: the text its content must hold (None: any file of that name), and whose it is.
FOREIGN_JOB_FILES: tuple[tuple[str, str | None, str], ...] = (
    ("default_pipeline.star", None, "a RELION project"),
    ("RELION_JOB_EXIT_SUCCESS", None, "a RELION job"),
    ("RELION_JOB_EXIT_FAILURE", None, "a RELION job"),
    ("RELION_JOB_EXIT_ABORTED", None, "a RELION job"),
    ("job.star", "data_job", "a RELION job"),
    ("note.txt", "++++ Executing new job", "a RELION job"),
    ("job.json", '"project_uid"', "a cryoSPARC job"),
    ("project.json", '"uid"', "a cryoSPARC project"),
)
#: Of those, what marks a job folder (not a whole project): nothing may be written below
#: one either.
_JOB_MARKS = {
    "RELION_JOB_EXIT_SUCCESS",
    "RELION_JOB_EXIT_FAILURE",
    "RELION_JOB_EXIT_ABORTED",
    "job.star",
    "note.txt",
    "job.json",
}
#: How RELION names a job's folder inside a job-type folder (``Class2D/job012``).
_JOB_FOLDER_NAME = re.compile(r"job[0-9]{3,}")


def recorded_command(folder: str | Path) -> str | None:
    """The ``command`` of ``folder/run_record.json`` (this project's outputs), or None."""
    record = Path(folder) / "run_record.json"
    try:
        command = json.loads(record.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, str) else None


def check_output_folder(out_dir: str | Path, command: str | None = None) -> Path:
    """Refuse an output folder that cannot be used, before any work is done.

    Creates nothing: the nearest existing ancestor must be a folder this process can
    write in (probed by creating and removing a file, so the answer is right for root
    and for ACLs too). With ``command``, a folder that belongs to a RELION or cryoSPARC
    job or project (:data:`FOREIGN_JOB_FILES`: RELION's pipeline and exit markers, or a
    ``job.star``, ``note.txt`` or ``job.json`` with RELION's or cryoSPARC's content), or
    that holds a job folder (``Class2D/`` of a project holding ``job001``), is refused
    too, unless it holds this command's own earlier outputs (a ``run_record.json`` of
    ``command``); so is any folder inside a job's folder or a job-type folder. Those
    folders are RELION's and cryoSPARC's, and writing into them would mix outputs into a
    job they describe.

    Raises
    ------
    InputError
        ``out_dir`` (or a parent) is an existing file, the folder cannot be written, or
        it is another program's job folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(
            out, "exists and is not a folder; give a folder for the outputs"
        )
    if command is not None:
        _refuse_foreign_job(out, command)
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(out, f"cannot create the folder: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
    except OSError as err:
        raise InputError(out, f"cannot write here ({err.strerror})") from err
    os.close(fd)
    os.unlink(probe)
    return out


def _refuse_foreign_job(out: Path, command: str) -> None:
    if out.is_dir():
        _refuse_foreign_folder(out, command)
    for parent in out.resolve().parents:  # nothing goes inside another job's folder
        owner = _foreign_owner(parent, _JOB_MARKS)
        if owner is not None:
            raise InputError(
                out,
                f"is inside {owner[0]}'s folder {parent} (it holds {owner[1]}); give "
                "a folder outside it for the outputs",
            )
        job = _job_in(parent)
        if job is not None:  # nor inside a job-type folder (Class2D/mine)
            raise InputError(
                out,
                f"is inside the job-type folder {parent} (it holds {job[0]}, "
                f"{job[1]}); give a folder outside it for the outputs",
            )


def _refuse_foreign_folder(out: Path, command: str) -> None:
    recorded = recorded_command(out)
    if recorded == command:
        return
    if recorded is not None:
        raise InputError(
            out,
            f"holds the outputs of {recorded} (run_record.json), not of {command}; "
            "give a new folder for the outputs",
        )
    owner = _foreign_owner(out, {name for name, _, _ in FOREIGN_JOB_FILES})
    if owner is not None:
        raise InputError(
            out,
            f"is {owner[0]}'s folder (it holds {owner[1]}), not an output folder of "
            f"{command}; give a new folder for the outputs",
        )
    job = _job_in(out)
    if job is not None:
        raise InputError(
            out,
            f"is a job-type folder (it holds {job[0]}, {job[1]}), not an output "
            f"folder of {command}; give a new folder for the outputs",
        )


def _job_in(folder: Path) -> tuple[str, str] | None:
    """``(name, whose)`` of a job folder directly in ``folder``, named as RELION names
    them (``job`` and three or more digits) and holding a job's marks: ``folder`` is then
    a job-type folder such as a project's ``Class2D/``. None otherwise."""
    for child in sorted(folder.glob("job[0-9][0-9][0-9]*")):
        if _JOB_FOLDER_NAME.fullmatch(child.name) and child.is_dir():
            owner = _foreign_owner(child, _JOB_MARKS)
            if owner is not None:
                return child.name, owner[0]
    return None


def _foreign_owner(folder: Path, names: set[str]) -> tuple[str, str] | None:
    """``(whose, file)`` when ``folder`` holds one of :data:`FOREIGN_JOB_FILES` named in
    ``names`` with its content, else None."""
    for name, holds, owner in FOREIGN_JOB_FILES:
        path = folder / name
        if name not in names or not path.is_file():
            continue
        if holds is not None:
            try:
                with open(path, errors="replace") as fh:
                    if holds not in fh.read(65536):
                        continue
            except OSError:
                continue
        return owner, name
    return None


def _in_set(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@contextlib.contextmanager
def replace_output_set(out_dir: str | Path, names: Iterable[str]) -> Iterator[Path]:
    """Replace a job's set of outputs in ``out_dir`` as a whole; yield a staging folder.

    Write every output into the yielded folder. When the block ends without an
    exception, each staged file is renamed into ``out_dir`` (replacing the file of the
    previous run), and files of the previous set that this run did not write are
    removed, so the folder never mixes two runs. On an exception nothing in ``out_dir``
    changes: a failed first run leaves no outputs, a failed rerun keeps the previous set.
    Every file is complete before the first rename; only the renames, one per file, are
    not one atomic step.

    Parameters
    ----------
    out_dir:
        The output folder (created when missing; checked with
        :func:`check_output_folder`).
    names:
        The output set: glob patterns, relative to ``out_dir`` and matched against
        ``/``-separated paths (``"gallery*.png"``, ``"explain/*"``). Staged files must
        match one; files in ``out_dir`` that match one and were not staged are stale and
        removed. Anything else in ``out_dir`` (RELION's ``run.out``, a user's notes) is
        left alone.

    Raises
    ------
    InputError
        ``out_dir`` cannot be created or written.
    ValueError
        A staged file is outside the declared set (a programming error).
    """
    patterns = tuple(names)
    out = check_output_folder(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as err:
        raise InputError(out, f"cannot write here ({err.strerror})") from err
    try:
        yield stage
        staged = sorted(p for p in stage.rglob("*") if p.is_file())
        written = {p.relative_to(stage).as_posix() for p in staged}
        undeclared = sorted(n for n in written if not _in_set(n, patterns))
        if undeclared:
            raise ValueError(f"outputs outside the declared set: {undeclared}")
        mode = 0o666 & ~_umask()  # temporary files are private; outputs are not
        with commit_section():  # a SIGTERM now waits for the last rename
            for src in staged:
                src.chmod(mode)
                dest = out / src.relative_to(stage)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
            _remove_stale(out, patterns, written)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove_stale(out: Path, patterns: tuple[str, ...], written: set[str]) -> None:
    """Delete files of the set in ``out`` that this run did not write, then the folders
    this leaves empty."""
    emptied: set[Path] = set()
    found = {path for pattern in patterns for path in out.glob(pattern)}
    for path in sorted(found):
        if path.is_file() and path.relative_to(out).as_posix() not in written:
            path.unlink()
            emptied.add(path.parent)
            log.debug("removed %s of an earlier run", path)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        if folder != out and not any(folder.iterdir()):
            folder.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_run_record(
    out_dir: str | Path,
    *,
    command: str,
    argv: list[str] | None,
    config: dict[str, Any] | None = None,
    model_checksum: str | None = None,
    name: str = "run_record.json",
) -> Path:
    """Write ``out_dir/name``: version, time, command line, config and model checksum."""
    record = {
        "cryodiscovery_version": __version__,
        "command": command,
        "argv": list(sys.argv if argv is None else argv),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "config": config or {},
        "model_sha256": model_checksum,
    }
    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path
