"""One entry point for class averages in any supported format (RELION, cryoSPARC, a bare
MRC stack)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import read_cryosparc_class2d
from cryodiscovery.core.io.relion_class2d import read_relion_class2d
from cryodiscovery.core.io.stack import read_stack

log = logging.getLogger(__name__)


def read_class_averages(path: Path, angpix: float | None = None) -> ClassAverages:
    """Read class averages from any supported source.

    Parameters
    ----------
    path:
        A RELION ``run_itNNN_data.star``/``_model.star``/``_optimiser.star`` or Class2D job
        folder; a cryoSPARC 2D classification job folder or ``.cs`` file; or a bare
        ``.mrcs``/``.mrc`` stack.
    angpix:
        Pixel size in Å: required knowledge for a bare stack without one in its header;
        for RELION/cryoSPARC inputs it overrides the recorded value (with a warning when
        they differ).

    Raises
    ------
    InputError
        An unknown kind of file, or any problem the format reader finds.
    """
    path = Path(path)
    if angpix is not None and not angpix > 0:
        raise InputError(
            None, f"--angpix must be a positive pixel size in Å, got {angpix}"
        )
    if not path.exists():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in (".mrcs", ".mrc"):
        return read_stack(path, angpix)
    if suffix == ".cs" or (path.is_dir() and any(path.glob("*_class_averages.cs"))):
        classes = read_cryosparc_class2d(path).classes
    elif suffix == ".star" or (path.is_dir() and any(path.glob("*_it*_model.star"))):
        classes = read_relion_class2d(path).classes
    else:
        raise InputError(
            path,
            "not a RELION Class2D .star, cryoSPARC .cs/job folder or .mrcs/.mrc stack",
        )
    if angpix is not None:
        if (
            classes.pixel_size is not None
            and abs(classes.pixel_size - angpix) > 0.01 * angpix
        ):
            log.warning(
                "%s: pixel size %.3f Å overridden by --angpix %.3f Å",
                path,
                classes.pixel_size,
                angpix,
            )
        classes = replace(classes, pixel_size=float(angpix))
    return classes
