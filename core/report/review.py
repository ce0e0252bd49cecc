"""The review page: ``review.html``, one self-contained file in which a person checks and
adjusts a selection in any browser, from the job folder, without a server or network.

Everything is inline: CSS and JavaScript come from the package's
``review_template.html``, the class averages are PNG ``data:`` URIs, the score
histogram is inline SVG drawn by the page. The page shows one tile per class (sorted by
score, or by class number, particle count or resolution), a threshold slider with live
counts, the score histogram with the cut, per-class details (metadata, and the saliency
overlay of a run with ``--explain``), and exports ``backup_selection.star`` (RELION's
layout, as :func:`cryodiscovery.relion_external.outputs.write_backup_selection` writes
it, for a Select job's "Load backup selection") and ``selection.csv``
(``class_number,selected,score,source``).

A class's state is the model's decision at the slider's threshold (``score >=
threshold`` and not rejected for too few particles) unless a person has decided it:
clicking a tile (or Space/Enter on a focused tile) records an explicit per-class
decision, keep or reject, that the slider does not change afterwards. Flipping a class
back to what the model decides at the current threshold removes the person's decision,
so two flips undo one. Classes a person decided are marked on the page and have
``source`` ``person`` in ``selection.csv``. The page opens with the run's decisions: where
one differs from the rule at the run's threshold (a run that applied a person's
selection, ``apply-selection`` or ``--selection``), it starts as a person's decision.

Class averages are shown at their native size up to :data:`DISPLAY_MAX_PX` (larger boxes
are downsampled for display only, so that 300 classes at 256 px stay small and the page
responsive), each stretched to its own percentile range as the gallery does.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import struct
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.outputs import atomic_path
from cryodiscovery.core.report.explain import overlay
from cryodiscovery.core.report.gallery import resample_tiles, stretch_to_tiles, to_rgb8
from cryodiscovery.core.selection import Selection

#: Largest edge (px) at which class averages are embedded; larger boxes are downsampled.
DISPLAY_MAX_PX = 128
#: Smallest edge (px) a tile is shown at: smaller boxes are enlarged by a whole factor
#: with square pixels (no blur).
DISPLAY_MIN_PX = 96
#: ``backup_selection.star`` around its rows, as ``write_star`` writes an unnamed
#: ``rlnSelected`` table for RELION 3.1/4.0 (``# version 30001``; RELION 5.0 reads it).
BACKUP_STAR_HEAD = "\n# version 30001\n\ndata_\n\nloop_ \n_rlnSelected #1 \n"
BACKUP_STAR_TAIL = " \n"
_TEMPLATE = "review_template.html"
#: Metadata shown in a class's details: field -> (label, format).
_DETAILS: dict[str, tuple[str, str]] = {
    "particle_count": ("Particles", "{:,.0f}"),
    "class_distribution": ("Class distribution", "{:.4f}"),
    "resolution_A": ("Resolution (Å)", "{:.2f}"),
    "accuracy_rotation_deg": ("Rotation accuracy (°)", "{:.2f}"),
    "accuracy_translation_A": ("Translation accuracy (Å)", "{:.2f}"),
    "fourier_completeness": ("Fourier completeness", "{:.3f}"),
    "eca": ("Effective class assignment", "{:.3f}"),
    "mean_posterior": ("Mean posterior", "{:.3f}"),
}


def backup_selection_text(flags: npt.ArrayLike) -> str:
    """``backup_selection.star`` for ``flags`` (1/0 for classes 1..n), as the page
    exports it."""
    rows = "".join(f"{int(bool(f))} \n" for f in np.asarray(flags).ravel())
    return BACKUP_STAR_HEAD + rows + BACKUP_STAR_TAIL


def _filtered_rows(x: npt.NDArray[np.int16], channels: int) -> npt.NDArray[np.uint8]:
    """PNG rows with their filter byte: per row the filter (None, Sub, Up, Average,
    Paeth) with the smallest sum of absolute differences, libpng's heuristic."""
    a = np.zeros_like(x)  # left neighbour (same channel)
    a[:, channels:] = x[:, :-channels]
    b = np.zeros_like(x)  # above
    b[1:] = x[:-1]
    c = np.zeros_like(x)  # above left
    c[1:] = a[:-1]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    predictors = np.stack([np.zeros_like(x), a, b, (a + b) // 2, paeth])
    candidates = ((x[None] - predictors) % 256).astype(np.uint8)
    cost = np.minimum(candidates, 256 - candidates.astype(np.int16)).sum(axis=2)
    best = np.argmin(cost, axis=0)
    rows = candidates[best, np.arange(x.shape[0])]
    return np.concatenate([best[:, None].astype(np.uint8), rows], axis=1)


def png_bytes(pixels: npt.ArrayLike) -> bytes:
    """Encode ``(h, w)`` grey or ``(h, w, 3)`` RGB uint8 pixels as a PNG (8 bits per
    channel, per-row adaptive filters, deflate level 9).

    A class average at 128 px takes about 7 KB (Pillow's optimised PNG is no smaller);
    grey images are stored as grey, a third of RGB.
    """
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"pixels must be (h, w) or (h, w, 3), got {arr.shape}")
    height, width = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else 3
    raw = _filtered_rows(arr.reshape(height, -1).astype(np.int16), channels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    colour = 0 if channels == 1 else 2  # grey or RGB
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    # Z_FILTERED suits filtered continuous-tone rows: 5% smaller than the default.
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    data = deflate.compress(raw.tobytes()) + deflate.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def png_data_uri(pixels: npt.ArrayLike) -> str:
    """Pixels (as :func:`png_bytes` takes them) as a ``data:image/png;base64`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()


def display_size(box: int) -> int:
    """Edge (px) at which a ``box`` px class average is embedded: native up to
    :data:`DISPLAY_MAX_PX`."""
    return min(int(box), DISPLAY_MAX_PX)


def _number(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _details(classes: ClassAverages, i: int) -> list[list[str]]:
    rows = [
        [label, fmt.format(classes.field(name)[i])]
        for name, (label, fmt) in _DETAILS.items()
        if not math.isnan(classes.field(name)[i])
    ]
    if classes.kinds[i]:
        rows.append(["Kind (simulated truth)", classes.kinds[i].replace("_", " ")])
    return rows


def _class_entries(
    classes: ClassAverages, selection: Selection, overlays: list[str] | None
) -> list[dict[str, Any]]:
    """Per class, what the page's script needs (JSON-safe: no NaN)."""
    counts = classes.field("particle_count")
    resolution = classes.field("resolution_A")
    return [
        {
            "n": int(classes.class_numbers[i]),
            "score": float(selection.scores[i]),
            "scoreText": f"{float(selection.scores[i]):.6f}",
            "kept": bool(selection.selected[i]),
            "few": "min_particles" in selection.reasons[i],
            "reason": selection.reasons[i],
            "count": _number(counts[i]),
            "res": _number(resolution[i]),
            "details": _details(classes, i),
            "saliency": None if overlays is None else overlays[i],
        }
        for i in range(len(classes))
    ]


def _tile_html(entry: dict[str, Any], image: str, edge: int) -> str:
    """One tile: the image and its label lines; the script sets state and marks."""
    n, score = entry["n"], entry["score"]
    facts = []
    if entry["count"] is not None:
        facts.append(f"{entry['count']:,.0f} ptcls")
    if entry["res"] is not None:
        facts.append(f"{entry['res']:.1f} Å")
    state = "kept" if entry["kept"] else "rejected"
    return (
        f'<div class="tile {state}" data-class="{n}" tabindex="0" role="checkbox" '
        f'aria-checked="{str(entry["kept"]).lower()}" '
        f'aria-label="class {n}, score {score:.3f}">'
        f'<img src="{image}" width="{edge}" height="{edge}" alt="class {n}">'
        f'<div class="line"><b>#{n}</b><span class="score">{score:.3f}</span></div>'
        f'<div class="line facts">{html.escape(" · ".join(facts)) or "&nbsp;"}</div>'
        f'<div class="line"><span class="state">{state}</span>'
        '<button class="info" tabindex="-1" title="details (key i)">i</button></div>'
        "</div>"
    )


def _title(classes: ClassAverages, selection: Selection) -> tuple[str, str]:
    prov = classes.provenance
    source = prov.job or (
        Path(prov.sources[0]).name if prov.sources else "class averages"
    )
    apix = "" if classes.pixel_size is None else f", {classes.pixel_size:.3g} Å/px"
    subtitle = (
        f"{len(classes)} classes, box {classes.box_size} px{apix}; model "
        f"{selection.model_name} ({selection.mode})"
    )
    return f"Review: {source}", subtitle


def _page_images(
    classes: ClassAverages, saliency: npt.ArrayLike | None
) -> tuple[list[str], list[str] | None, int]:
    """Data URIs of the classes and of their saliency overlays, and the shown edge."""
    size = display_size(classes.box_size)
    greys = stretch_to_tiles(classes.images, size)
    images = [png_data_uri(to_rgb8(g[None])[0, :, :, 0]) for g in greys]
    overlays = None
    if saliency is not None:
        maps = np.asarray(saliency, dtype=np.float32)
        if maps.shape != classes.images.shape:
            raise ValueError(
                f"saliency maps {maps.shape} do not match the classes "
                f"{classes.images.shape}"
            )
        rgb = to_rgb8(overlay(greys, resample_tiles(maps, size)))
        overlays = [png_data_uri(t) for t in rgb]
    edge = size * max(1, math.ceil(DISPLAY_MIN_PX / size))
    return images, overlays, edge


def write_review_page(
    path: Path,
    classes: ClassAverages,
    selection: Selection,
    *,
    saliency: npt.ArrayLike | None = None,
) -> Path:
    """Write ``review.html`` for a scored set of classes (atomically).

    Parameters
    ----------
    path:
        The file to write.
    classes, selection:
        The scored class averages and the decision (same classes, same order).
    saliency:
        ``(n, box, box)`` saliency maps in [0, 1] (as ``--explain`` computes them),
        shown as overlays in each class's details; ``None`` leaves them out.

    Returns
    -------
    ``path``.
    """
    if not np.array_equal(selection.class_numbers, classes.class_numbers):
        raise ValueError("selection and class averages list different class numbers")
    images, overlays, edge = _page_images(classes, saliency)
    entries = _class_entries(classes, selection, overlays)
    order = np.lexsort((classes.class_numbers, -np.asarray(selection.scores)))
    tiles = "\n".join(_tile_html(entries[i], images[i], edge) for i in order)
    title, subtitle = _title(classes, selection)
    data = {
        "threshold": float(selection.threshold),
        "thresholdSource": selection.threshold_source,
        "maxClass": int(np.max(classes.class_numbers, initial=0)),
        "starHead": BACKUP_STAR_HEAD,
        "starTail": BACKUP_STAR_TAIL,
        "classes": entries,
    }
    # "</" inside the JSON must not end the script element.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = resources.files(__package__).joinpath(_TEMPLATE).read_text("utf-8")
    fields = {
        "__TITLE__": html.escape(title),
        "__SUBTITLE__": html.escape(subtitle),
        "__THRESHOLD__": f"{selection.threshold:.3f}",
        "__THRESHOLD_SOURCE__": html.escape(selection.threshold_source),
        "__EDGE__": str(edge),
        "__TILES__": tiles,
        "__DATA__": payload,
    }
    page = re.sub("|".join(fields), lambda m: fields[m.group(0)], page)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)
