"""The shipped ``job.star`` template: an External job set up to run this package, for
RELION's Jobs > Load job.star and for Schemes (``Schemes/<name>/<job>/job.star``).

The template names the executable ``cryodiscovery-relion`` (found on ``PATH``);
:func:`write_job_star` writes a copy naming the absolute path of the installed entry point,
which works even when the environment is not activated in the shell that runs RELION.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from importlib.resources import files
from pathlib import Path

from cryodiscovery.core.outputs import atomic_path

log = logging.getLogger(__name__)

EXECUTABLE = "cryodiscovery-relion"
_FN_EXE = re.compile(r"^(\s*fn_exe\s+)\S+(.*)$", re.MULTILINE)


def template_text() -> str:
    """Text of the shipped template (``relion_external/job.star``)."""
    return files("cryodiscovery.relion_external").joinpath("job.star").read_text()


def installed_executable() -> str:
    """Absolute path of the ``cryodiscovery-relion`` entry point, or its bare name when it
    cannot be found (then RELION finds it on ``PATH``)."""
    candidates = [Path(sys.argv[0]), Path(sys.executable).with_name(EXECUTABLE)]
    for path in candidates:
        if path.name == EXECUTABLE and path.is_file():
            return str(path.resolve())
    return shutil.which(EXECUTABLE) or EXECUTABLE


def job_star_text(executable: str | None = None) -> str:
    """The template with ``fn_exe`` set to ``executable`` (default: unchanged)."""
    text = template_text()
    if executable is None:
        return text
    if any(ch.isspace() for ch in executable):
        raise ValueError(
            f"RELION cannot run an executable path with spaces: {executable!r}"
        )
    return _FN_EXE.sub(lambda m: f"{m.group(1)}{executable}{m.group(2)}", text)


def write_job_star(folder: str | Path, executable: str | None = None) -> Path:
    """Write ``folder/job.star`` (atomically) naming ``executable`` (default: the
    installed entry point)."""
    path = Path(folder) / "job.star"
    text = job_star_text(executable or installed_executable())
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
