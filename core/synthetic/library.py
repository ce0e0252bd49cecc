"""Real structures for the generator from files on disk: atomic models (PDB or mmCIF,
plain or ``.gz``/``.bz2``; an mmCIF file's first biological assembly is built from its
assembly records) and EM maps (MRC), each as a :class:`~.density.Structure`.

The files are not shipped (they are large and some licences forbid it): training recipes
point :attr:`SimulationConfig.structures` at a folder such as ``../shared/data/maps_models``
when it is there, and record which files they used.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import re
import shlex
from pathlib import Path

import mrcfile
import numpy as np
from cryodiscovery.core.synthetic.density import (
    F64,
    Structure,
    coarse_grain,
    parse_pdb,
)

#: File names the library reads (a compression suffix may follow).
STRUCTURE_SUFFIXES: tuple[str, ...] = (".pdb", ".ent", ".cif", ".mrc", ".map")

# Electrons per heavy atom (relative scattering is all that matters).
_ELEMENT_WEIGHT = {"C": 6.0, "N": 7.0, "O": 8.0, "S": 16.0, "P": 15.0}
#: Points kept per structure before the generator bounds them for its sampling.
_MAX_POINTS = 200_000


def find_structures(root: str | Path) -> tuple[Path, ...]:
    """Every structure file under ``root`` (sorted; empty when ``root`` is absent)."""
    folder = Path(root)
    if not folder.is_dir():
        return ()
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file() and _base_suffix(p) in STRUCTURE_SUFFIXES
    ]
    return tuple(sorted(found))


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        raw = gzip.decompress(raw)
    elif path.suffix.lower() == ".bz2":
        raw = bz2.decompress(raw)
    return raw.decode("ascii", errors="replace")


@functools.lru_cache(maxsize=64)
def load_structure(path: str) -> Structure:
    """The structure in ``path``, centred, at most :data:`_MAX_POINTS` points (cached
    per process).

    Raises
    ------
    ValueError
        When the file holds no atoms or no density.
    """
    file = Path(path)
    kind = _base_suffix(file)
    name = file.name.split(".")[0]
    if kind in (".mrc", ".map"):
        structure = map_structure(file)
    elif kind == ".cif":
        structure = parse_mmcif(_read_text(file), name)
    else:
        structure = parse_pdb(_read_text(file), name)
    if len(structure.points) == 0:
        raise ValueError(f"{file}: no atoms or density found")
    grid = 2.0
    while len(structure.points) > _MAX_POINTS:
        structure = coarse_grain(structure, grid)
        grid *= 1.5
    return structure.centred()


def map_structure(path: Path) -> Structure:
    """An EM map as points at the voxels above its contour (the 92nd percentile, about
    a molecule's share of a tightly boxed map), weighted by density above it. A map
    without a voxel size in its header is taken at 1 Å/voxel (the generator rescales
    the sampling to fit the molecule in the box anyway)."""
    with mrcfile.open(path, permissive=True) as mrc:
        if mrc.data is None or mrc.data.ndim != 3:
            raise ValueError(f"{path}: not a 3D map")
        data = np.asarray(mrc.data, dtype=np.float64)
        voxel = float(mrc.voxel_size.x) or 1.0
    contour = float(np.percentile(data, 92.0))
    zyx = np.argwhere(data > contour)
    weights = (data[tuple(zyx.T)] - contour).astype(np.float32)
    points = (zyx[:, ::-1] - (np.array(data.shape[::-1]) - 1) / 2.0) * voxel
    return Structure(points.astype(np.float32), weights, (), path.name.split(".")[0])


def parse_mmcif(text: str, name: str = "") -> Structure:
    """Heavy atoms of an mmCIF file's first model, expanded to its first biological
    assembly when the file describes one with operator lists (``(1-60)``, ``1,2,5``);
    other expressions (products of operator groups) keep the asymmetric unit."""
    keys, rows = _atom_rows(text)
    if not rows:
        return Structure(
            np.zeros((0, 3), np.float32), np.zeros(0, np.float32), (), name
        )
    col = {k: i for i, k in enumerate(keys)}
    x, y, z = (col[f"Cartn_{a}"] for a in "xyz")
    element_col, comp_col = col.get("type_symbol"), col.get("label_comp_id")
    asym_col, model_col = col.get("label_asym_id"), col.get("pdbx_PDB_model_num")
    first_model = rows[0][model_col] if model_col is not None else None
    coords: list[tuple[float, float, float]] = []
    weights: list[float] = []
    chains: list[str] = []
    for row in rows:
        if model_col is not None and row[model_col] != first_model:
            continue
        element = row[element_col].upper() if element_col is not None else "C"
        if element in ("H", "D") or (
            comp_col is not None and row[comp_col] in ("HOH", "WAT")
        ):
            continue
        coords.append((float(row[x]), float(row[y]), float(row[z])))
        weights.append(_ELEMENT_WEIGHT.get(element, 6.0))
        chains.append(row[asym_col] if asym_col is not None else "")
    xyz = np.asarray(coords, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float32)
    copies = _assembly(text, np.asarray(chains), xyz)
    if copies is not None:
        xyz, w = copies[0], w[copies[1]]
    return Structure(xyz.astype(np.float32), w, (), name)


def _assembly(text: str, chains: np.ndarray, xyz: F64) -> tuple[F64, np.ndarray] | None:
    """Coordinates of assembly 1 and the index of each point's source atom, or None."""
    gens = [g for g in _cif_table(text, "_pdbx_struct_assembly_gen.") if g]
    opers = {o["id"]: o for o in _cif_table(text, "_pdbx_struct_oper_list.")}
    gens = [g for g in gens if g.get("assembly_id") == "1"]
    if not gens or not opers:
        return None
    parts: list[F64] = []
    index: list[np.ndarray] = []
    for gen in gens:
        ids = _operator_ids(gen.get("oper_expression", ""))
        if ids is None or any(i not in opers for i in ids):
            return None
        pick = np.flatnonzero(np.isin(chains, gen.get("asym_id_list", "").split(",")))
        for op in (opers[i] for i in ids):
            rot = np.array(
                [[float(op[f"matrix[{r}][{c}]"]) for c in (1, 2, 3)] for r in (1, 2, 3)]
            )
            shift = np.array([float(op[f"vector[{r}]"]) for r in (1, 2, 3)])
            parts.append(xyz[pick] @ rot.T + shift)
            index.append(pick)
    if len(parts) <= 1:
        return None
    return np.concatenate(parts), np.concatenate(index)


def _operator_ids(expression: str) -> list[str] | None:
    """Operator ids of ``1``, ``1,2,5``, ``(1-60)``; None for products like ``(1)(2-5)``."""
    expr = expression.strip().strip("'\"")
    if expr.count("(") > 1:
        return None
    expr = expr.strip("()")
    ids: list[str] = []
    for part in expr.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", part)
        if m:
            ids += [str(i) for i in range(int(m[1]), int(m[2]) + 1)]
        elif part.strip():
            ids.append(part.strip())
    return ids or None


def _atom_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (split on whitespace) of the ``_atom_site`` loop."""
    keys: list[str] = []
    rows: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("_atom_site."):
            keys.append(line.split()[0][len("_atom_site.") :])
            inside = True
        elif inside:
            if not line.strip() or line.startswith(("#", "loop_", "_", "data_")):
                break
            words = line.split()
            if len(words) == len(keys):
                rows.append(words)
    return keys, rows


def _cif_table(text: str, prefix: str) -> list[dict[str, str]]:
    """Rows of one mmCIF category (``prefix`` = ``"_atom_site."``), looped or not."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith(prefix):
            continue
        if i > 0 and lines[i - 1].strip() == "loop_":
            return _cif_loop(lines, i, prefix)
        return [_cif_pairs(lines, i, prefix)]
    return []


def _cif_loop(lines: list[str], start: int, prefix: str) -> list[dict[str, str]]:
    keys: list[str] = []
    i = start
    while i < len(lines) and lines[i].startswith(prefix):
        keys.append(lines[i].split()[0][len(prefix) :])
        i += 1
    rows: list[dict[str, str]] = []
    values: list[str] = []
    simple = prefix == "_atom_site."  # atom records hold no spaces inside quotes
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith(("#", "loop_", "_", "data_")):
            break
        values += line.split() if simple else shlex.split(line, posix=True)
        while len(values) >= len(keys):
            rows.append(dict(zip(keys, values[: len(keys)], strict=True)))
            values = values[len(keys) :]
        i += 1
    return rows


def _cif_pairs(lines: list[str], start: int, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith(prefix):
            break
        key, _, value = line.partition(" ")
        words = shlex.split(value, posix=True) if value.strip() else [""]
        out[key[len(prefix) :]] = words[0] if words else ""
    return out
