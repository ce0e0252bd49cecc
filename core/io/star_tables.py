"""STAR file reading and writing for the RELION readers and writers.

Reading goes through :mod:`starfile` with every failure turned into an
:class:`~cryodiscovery.core.errors.InputError`; a fast path reads one column of a large
loop (``rlnClassNumber`` of a million-particle ``run_itNNN_data.star``) without parsing
the others. Writing produces RELION's own layout (``# version`` line, ``data_`` block,
``loop_`` with ``#n`` column numbers) and is atomic.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import atomic_path

log = logging.getLogger(__name__)

#: A STAR data block as :mod:`starfile` returns it: a loop table or a key-value dict.
Block: TypeAlias = pd.DataFrame | dict[str, Any]

_VERSION_RE = re.compile(rb"^#\s*version\s+(\d+)", re.MULTILINE)
#: Characters that make :func:`_format_scalar` quote a text field.
_NEEDS_QUOTES = re.compile(r"[ \t\n]").search
#: Rows whose values decide whether a float column is formatted value by value.
_SAMPLE_ROWS = 1024


def read_star(path: Path, n_blocks: int | None = None) -> dict[str, Block]:
    """Read the data blocks of a STAR file, keyed by name without ``data_``.

    Parameters
    ----------
    path:
        The STAR file.
    n_blocks:
        Read only the first ``n_blocks`` blocks (e.g. 2 for ``model_general`` and
        ``model_classes`` of a model.star with hundreds of spectra tables).

    Raises
    ------
    InputError
        The file is missing, unreadable or has no data block.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        blocks = starfile.read(path, read_n_blocks=n_blocks, always_dict=True)
    except Exception as exc:  # starfile raises many kinds on malformed text
        raise InputError(
            path, f"unreadable STAR file ({type(exc).__name__}: {exc})"
        ) from exc
    if not blocks:
        raise InputError(path, "no data block found (not a STAR file?)")
    return dict(blocks)


def star_version(path: Path) -> int | None:
    """The number on the first ``# version NNNNN`` line (30001, 50001), or None."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    match = _VERSION_RE.search(head)
    return int(match.group(1)) if match else None


def loop_table(blocks: Mapping[str, Block], name: str, path: Path) -> pd.DataFrame:
    """The loop table ``data_<name>``; an InputError naming the file when absent."""
    block = blocks.get(name)
    if block is None:
        found = ", ".join(f"data_{k}" for k in blocks) or "none"
        raise InputError(path, f"no data_{name} table (found: {found})")
    if isinstance(block, dict):  # a one-row loop can come back as a dict
        return pd.DataFrame({k: [v] for k, v in block.items()})
    return block


def require_columns(
    table: pd.DataFrame, columns: list[str], path: Path, name: str
) -> None:
    """Raise an InputError naming the first of ``columns`` missing from ``table``."""
    for col in columns:
        if col not in table.columns:
            raise InputError(path, f"data_{name} has no column _{col}")


def numeric_column(table: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
    """A column as float64; RELION's ``inf``/``-nan`` and anything unparsable give NaN."""
    values: npt.NDArray[np.float64] = np.array(
        pd.to_numeric(table[column], errors="coerce"), dtype=np.float64
    )
    values[~np.isfinite(values)] = np.nan
    return values


def read_loop_column(path: Path, block: str | None, column: str) -> npt.NDArray[Any]:
    """One column of the loop ``data_<block>``, read without parsing the other columns.

    Streams the file and splits each row only up to the wanted field, so counting
    ``rlnClassNumber`` in a million-particle ``run_itNNN_data.star`` (400 MB) takes a
    few seconds and little memory. With ``block=None`` the first loop that has
    ``column`` is used (RELION 3.0 files name their particle table differently).

    Returns
    -------
    numpy.ndarray
        ``(n_rows,)`` int64 if every value is an integer, else float64 if every value
        is a number, else str.

    Raises
    ------
    InputError
        Missing file, block or column, or a row with too few fields.
    """
    if not path.is_file():
        raise InputError(path, "file not found")
    with open(path, "rb") as fh:
        k = _seek_loop_column(fh, path, block, column)
        values: list[bytes] = []
        append = values.append
        for number, line in enumerate(fh, start=1):
            fields = line.split(None, k + 1)
            if len(fields) > k:
                append(fields[k])
            elif not fields or line.lstrip().startswith((b"data_", b"#")):
                break  # the loop ends at a blank line or the next block
            else:
                raise InputError(
                    path, f"data row {number} of the loop has no value for _{column}"
                )
    raw = np.array(values) if values else np.array([], dtype="S1")
    for dtype in (np.int64, np.float64):
        try:
            return raw.astype(dtype)
        except ValueError:
            continue
    return raw.astype(str)


def _seek_loop_column(fh: Any, path: Path, block: str | None, column: str) -> int:
    """Advance ``fh`` to the first row of the wanted loop; return the column's index."""
    current: str | None = None
    in_loop = False
    columns: list[str] = []
    for raw in fh:
        line = raw.strip()
        if line.startswith(b"data_"):
            current, in_loop, columns = line[5:].decode(errors="replace"), False, []
        elif line.startswith(b"loop_"):
            in_loop = current is not None
        elif in_loop and line.startswith(b"_"):
            columns.append(line.split()[0][1:].decode(errors="replace"))
            if columns[-1] == column and (block is None or current == block):
                return _skip_header(fh, len(columns) - 1)
    where = f"data_{block}" if block is not None else "any loop table"
    raise InputError(path, f"no column _{column} in {where}")


def _skip_header(fh: Any, index: int) -> int:
    """Skip the rest of a loop header; leave ``fh`` at the first row; return ``index``."""
    pos = fh.tell()
    for raw in iter(fh.readline, b""):
        if not raw.strip().startswith(b"_"):
            fh.seek(pos)
            break
        pos = fh.tell()
    return index


def write_star(
    path: Path,
    blocks: Mapping[str, Block],
    *,
    version: int | None = 30001,
    comment: str | None = None,
) -> None:
    """Write blocks as RELION does, atomically.

    Parameters
    ----------
    path:
        The file to write (its folder is created).
    blocks:
        ``{name: table}``: a DataFrame becomes a ``loop_``, a dict a key-value block;
        the name is written after ``data_`` (``""`` gives a bare ``data_`` like RELION's
        ``backup_selection.star``).
    version:
        The number for the ``# version`` line before each block (RELION 3.1/4.0 write
        30001, RELION 5.0 50001); None for no line.
    comment:
        Lines written first, each prefixed with ``# `` (RELION's optimiser.star starts
        with its version and command line).
    """
    out = io.StringIO()
    if comment:
        out.writelines(f"# {line}\n" for line in comment.splitlines())
    for name, block in blocks.items():
        out.write("\n")
        if version is not None:
            out.write(f"# version {version}\n\n")
        out.write(f"data_{name}\n\n")
        if isinstance(block, pd.DataFrame):
            _write_loop(out, block)
        else:
            width = max((len(k) for k in block), default=0) + 1
            for key, value in block.items():
                out.write(f"_{key:<{width}} {_format_scalar(value):>12}\n")
        out.write(" \n")
    with atomic_path(path) as tmp:
        tmp.write_text(out.getvalue())


def _write_loop(out: io.StringIO, table: pd.DataFrame) -> None:
    out.write("loop_ \n")
    for i, col in enumerate(table.columns, start=1):
        out.write(f"_{col} #{i} \n")
    if len(table) == 0:
        return
    # One %-format per row over columns prepared with numpy, as numpy.savetxt does but
    # with the loop in C (map): no Python code runs per row or per field, which makes a
    # 100k-particle data.star several times faster than formatting value by value.
    prepared = [_column_values(table[col]) for col in table.columns]
    row = " ".join(spec for spec, _ in prepared) + " \n"
    rows = zip(*(values for _, values in prepared), strict=True)
    out.write("".join(map(row.__mod__, rows)))


def _column_values(values: pd.Series) -> tuple[str, list[Any]]:
    """A column's %-format and its values for it: integers ``%d``; floats as RELION
    prints them, ``%.6f``, or ``%.6e`` for a column with tiny values (both write
    ``nan``/``inf``/``-inf`` as :func:`_format_scalar` does); text ``%s``, formatted."""
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_integer_dtype(
        values.dtype
    ):
        return "%d", values.to_numpy(dtype=np.int64).tolist()
    if pd.api.types.is_float_dtype(values.dtype):
        arr = values.to_numpy(dtype=np.float64)
        small = np.isfinite(arr) & (arr != 0) & (np.abs(arr) < 1e-3)
        fmt = "%.6e" if small.any() else "%.6f"
        bits = arr.view(np.int64)  # exact identity: keeps -0.0 apart from 0.0
        head = bits[:_SAMPLE_ROWS]
        if 2 * len(np.unique(head)) > len(head):  # mostly distinct values
            return fmt, arr.tolist()
        # Per-micrograph and constant columns repeat a lot: format each value once.
        uniq, inverse = np.unique(bits, return_inverse=True)
        text = np.array(list(map(fmt.__mod__, uniq.view(np.float64).tolist())))
        return "%s", text.astype(object)[inverse.ravel()].tolist()
    items = values.to_numpy(dtype=object).tolist()
    if not _plain_words(items):
        items = [_format_scalar(v) for v in items]
    return "%s", items


def _plain_words(items: list[Any]) -> bool:
    """True if every item is a non-empty str that needs no quotes in a STAR file."""
    if not items or set(map(type, items)) != {str} or min(map(len, items)) == 0:
        return False
    return _NEEDS_QUOTES("\0".join(items)) is None


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6e}" if v != 0 and abs(v) < 1e-3 else f"{v:.6f}"
    text = str(value)
    if not text:
        return '""'
    if " " in text or "\t" in text or "\n" in text:
        return '"' + text.replace('"', "'") + '"'
    return text
