"""MRC image stacks: checked reading of class-average stacks and atomic float32 writing.

Every reader of class averages (RELION ``run_itNNN_classes.mrcs``, cryoSPARC
``JNN_NNN_class_averages.mrc``, a bare stack) loads its images through
:func:`read_mrc_images`, so a bad file gives the same one-line error everywhere.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import atomic_path

log = logging.getLogger(__name__)

#: MRC modes accepted for class averages: int16, float32, uint16, float16.
_ACCEPTED_MODES = {1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_MODE_NAMES = {0: "int8", 3: "complex int16", 4: "complex float32", 101: "4-bit"}


def read_mrc_images(path: Path) -> tuple[npt.NDArray[np.float32], float | None]:
    """Read and check a stack of 2D images.

    Parameters
    ----------
    path:
        An MRC file (``.mrcs`` or ``.mrc``) holding one image or a stack.

    Returns
    -------
    images:
        ``(n, h, w)`` float32, ``h == w``, all values finite.
    voxel_size:
        The header pixel size in Å, or None when the header has 0.

    Raises
    ------
    InputError
        Missing or truncated file, a bad header, an unsupported mode (int8, complex),
        an empty stack, non-square images, or NaN/Inf values.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    _check_header(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", permissive=True) as mrc:
                data = None if mrc.data is None else np.array(mrc.data)
                voxel = float(mrc.voxel_size.x)
        except Exception as exc:  # mrcfile raises ValueError and others on bad headers
            raise InputError(path, f"not a readable MRC file ({exc})") from exc
    if data is None:
        why = "; ".join(str(w.message) for w in caught) or "no image data"
        raise InputError(path, f"truncated or corrupt MRC file ({why})")
    for w in caught:
        if "smaller than expected" in str(w.message) or "truncated" in str(w.message):
            raise InputError(path, f"truncated MRC file ({w.message})")
    return _check_images(path, data), (voxel if voxel > 0 else None)


def _check_header(path: Path) -> None:
    """Check the header against the file size before any image data is read, so that a
    bogus header (dimensions of millions) is refused without allocating for it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header
                mode = int(header.mode)
                dims = (int(header.nx), int(header.ny), int(header.nz))
                extended = int(header.nsymbt)
    except Exception as exc:  # mrcfile raises ValueError and others on bad headers
        raise InputError(path, f"not a readable MRC file ({exc})") from exc
    if mode not in _ACCEPTED_MODES:
        name = _MODE_NAMES.get(mode, "unknown")
        raise InputError(
            path,
            f"MRC mode {mode} ({name}) is not supported; class averages are float32 (mode 2)",
        )
    if min(dims) < 0 or extended < 0:
        raise InputError(
            path,
            f"MRC header has negative sizes (nx, ny, nz {dims}, extended {extended})",
        )
    itemsize = mrcfile.utils.dtype_from_mode(mode).itemsize
    expected = header.nbytes + extended + dims[0] * dims[1] * dims[2] * itemsize
    size = os.path.getsize(path)
    if size < expected:
        raise InputError(
            path,
            f"truncated or corrupt MRC file: the header describes {dims[2]} images of "
            f"{dims[0]}x{dims[1]} px ({expected:,} bytes) but the file has {size:,} bytes",
        )


def _check_images(path: Path, data: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3:
        raise InputError(
            path, f"expected a stack of 2D images, got data of shape {data.shape}"
        )
    n, h, w = data.shape
    if n == 0 or h == 0 or w == 0:
        raise InputError(path, "empty stack (no images)")
    if h != w:
        raise InputError(
            path, f"images are {w}x{h} pixels; class averages must be square"
        )
    images = np.ascontiguousarray(data, dtype=np.float32)
    bad = ~np.isfinite(images).all(axis=(1, 2))
    if bad.any():
        first = int(np.flatnonzero(bad)[0]) + 1
        raise InputError(
            path,
            f"{int(bad.sum())} of {n} images contain NaN or Inf values (first: image {first})",
        )
    return images


def read_stack(path: Path, angpix: float | None = None) -> ClassAverages:
    """Class averages from a bare ``.mrcs``/``.mrc`` stack, for image-only scoring.

    Parameters
    ----------
    path:
        The stack; image ``i`` becomes class number ``i + 1``.
    angpix:
        Pixel size in Å; default: the header's voxel size when it is nonzero, else
        unknown (None).

    Returns
    -------
    ClassAverages
        ``(n, h, w)`` float32 images, no metadata, unknown labels.
    """
    if angpix is not None and not angpix > 0:
        raise InputError(
            None, f"--angpix must be a positive pixel size in Å, got {angpix}"
        )
    images, voxel = read_mrc_images(path)
    pixel_size = angpix if angpix is not None else voxel
    if angpix is not None and voxel is not None and abs(voxel - angpix) > 0.01 * angpix:
        log.warning(
            "%s: header pixel size %.3f Å overridden by %.3f Å", path, voxel, angpix
        )
    return ClassAverages.create(
        images,
        pixel_size=pixel_size,
        provenance=Provenance("mrcs", (str(path),), ""),
    )


def write_stack(path: Path, images: npt.ArrayLike, pixel_size: float | None) -> None:
    """Write ``(n, h, w)`` images as a float32 MRC image stack, atomically.

    Parameters
    ----------
    path:
        Output file (``.mrcs`` for RELION, ``.mrc`` for cryoSPARC); its folder is
        created.
    images:
        ``(n, h, w)`` (or one ``(h, w)``) image(s).
    pixel_size:
        Voxel size in Å for the header; None writes 0 (unknown).
    """
    data = np.asarray(images, dtype=np.float32)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or data.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty (n, h, w) stack, got shape {data.shape}"
        )
    if pixel_size is not None and not pixel_size > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size}")
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            mrc.set_image_stack()
            mrc.voxel_size = 0.0 if pixel_size is None else float(pixel_size)
            mrc.update_header_stats()
