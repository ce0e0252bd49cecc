"""The review page: ``review.html``, one self-contained file in which a person checks and
adjusts a selection in any browser, from the job folder, without a server or network.

Everything is inline: CSS and JavaScript come from the package's
``review_template.html``, the class averages are PNG ``data:`` URIs, the score
histogram is inline SVG drawn by the page. The page shows one tile per class (sorted by
score, or by class number, particle count or resolution), a threshold slider with live
counts, the score histogram with the cut, per-class details (metadata, and the saliency
overlay of a run with ``--explain``), and exports ``backup_selection.star`` and
``selection.csv`` (``class_number,selected,score,source``). The STAR file is
:func:`backup_selection_text`: ``write_star``'s layout of one unnamed ``rlnSelected``
table, one row per class number 1..the largest (0 for numbers the job does not have),
after a ``# version`` line with ``star_version`` of :func:`write_review_page` (30001
unless the caller passes the number its RELION writes), for a Select job's "Load backup
selection".

A class's state is the model's decision unless a person has decided it. At the run's
threshold the model's decision is the run's own (:class:`Selection` ``selected``, or for
a person's selection the model's decision its reasons record, or ``model_selected``); at
any other slider position it is ``score >= threshold`` and not rejected by the run's
particle-count rule (a class rejected for too few particles, or an empty one, stays
rejected; a class without a score is never kept). Clicking a tile (or Space/Enter on a
focused tile) records an explicit per-class decision, keep or reject, that the slider
does not change afterwards. Flipping a class back to what the model decides at the
current threshold removes the person's decision, so two flips undo one. Classes a person
decided are marked on the page and have ``source`` ``person`` in ``selection.csv``. The
page opens with the run's decisions: where one differs from the model's (a run that
applied a person's selection, ``apply-selection`` or ``--selection``), it starts as a
person's decision.

The details of a class (key ``i`` or ``I``, or its i button) show the run's decision
("rejected (a person)" for a person's run) and the model's at the run's threshold as
separate rows, and follow every change while open. A person's decisions and a moved
slider are kept in the browser's ``localStorage`` under :func:`storage_key` (unique to
the run) and restored, with a note, when the page is opened again; while some are not
yet exported, leaving the page asks first (``beforeunload``). A browser whose storage
throws (some ``file://`` pages) gets a working page without that memory. The page is
titled by the job, or by the file's folder and name for a bare stack.

Text from the run (job and file names, model name, metadata, kinds) reaches the page
only HTML-escaped or, from the page's JSON (in which every ``<``, ``>`` and ``&`` is a
``\\u`` escape), through ``textContent``; a NaN score or threshold is ``null`` there.

Class averages are shown at their native size up to :data:`DISPLAY_MAX_PX` (larger boxes
are downsampled for display only, so that 300 classes at 256 px stay under 3 MB and the
page responsive), each stretched to its own percentile range as the gallery does, as
8-bit grey PNGs.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.outputs import atomic_path
from cryodiscovery.core.report.explain import overlay
from cryodiscovery.core.report.gallery import resample_tiles, stretch_to_tiles, to_rgb8
from cryodiscovery.core.report.png import png_data_uri
from cryodiscovery.core.selection import Selection

#: Largest edge (px) at which class averages are embedded; larger boxes are downsampled.
DISPLAY_MAX_PX = 128
#: Smallest edge (px) a tile is shown at: smaller boxes are enlarged by a whole factor
#: with square pixels (no blur).
DISPLAY_MIN_PX = 96
#: The ``# version`` number of the exported ``backup_selection.star`` unless the caller
#: passes its own: what ``write_star`` writes for RELION 3.1/4.0 (RELION 5.0, which
#: writes 50001, reads it too).
STAR_VERSION = 30001
#: ``backup_selection.star`` around its rows, as ``write_star`` writes an unnamed
#: ``rlnSelected`` table (``{version}``: the ``# version`` number).
BACKUP_STAR_HEAD = "\n# version {version}\n\ndata_\n\nloop_ \n_rlnSelected #1 \n"
BACKUP_STAR_TAIL = " \n"
#: The slider's position when the run's threshold is unknown.
_UNKNOWN_THRESHOLD_START = 0.5
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


def backup_selection_text(flags: npt.ArrayLike, version: int = STAR_VERSION) -> str:
    """``backup_selection.star`` for ``flags`` (1/0 for classes 1..n), as the page
    exports it, with ``version`` on its ``# version`` line."""
    rows = "".join(f"{int(bool(f))} \n" for f in np.asarray(flags).ravel())
    return _star_head(version) + rows + BACKUP_STAR_TAIL


def _star_head(version: int) -> str:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise ValueError(f"STAR version must be an integer, got {version!r}")
    return BACKUP_STAR_HEAD.format(version=int(version))


def display_size(box: int) -> int:
    """Edge (px) at which a ``box`` px class average is embedded: native up to
    :data:`DISPLAY_MAX_PX`."""
    return min(int(box), DISPLAY_MAX_PX)


def _number(value: float | None, digits: int | None = None) -> float | int | None:
    """A finite value for JSON (integral ones as integers, others rounded to
    ``digits`` when given), else ``None``."""
    if value is None or not math.isfinite(value):
        return None
    if float(value).is_integer():
        return int(value)
    return float(value) if digits is None else round(float(value), digits)


def _details(classes: ClassAverages, i: int) -> list[str | None]:
    """The class's values for :data:`_DETAIL_LABELS`, ``None`` where unknown."""
    values: list[str | None] = [
        None if math.isnan(v := classes.field(name)[i]) else fmt.format(v)
        for name, (_, fmt) in _DETAILS.items()
    ]
    values.append(classes.kinds[i].replace("_", " ") or None)
    return values


#: Labels of a class's details, in the order of each class's ``details`` values.
_DETAIL_LABELS = [label for label, _ in _DETAILS.values()] + ["Kind (simulated truth)"]


def model_decisions(
    selection: Selection, model_selected: npt.ArrayLike | None = None
) -> tuple[npt.NDArray[np.bool_], list[str]]:
    """The model's decision of the run per class and the model's reason for a
    rejection (``""`` when kept), as the page shows them at the run's threshold.

    For a selection the model made these are ``selected`` and ``reasons``. For a
    person's selection (reasons ``"person: kept (model: score)"``, see
    :mod:`cryodiscovery.core.person_selection`) they come from the ``(model: ...)``
    part: ``"kept"`` or none is the model keeping the class, anything else its reasons
    for rejecting it. ``model_selected``, when the caller knows it, takes precedence
    over what the reasons say.
    """
    kept: list[bool] = []
    why: list[str] = []
    for selected, reason in zip(
        selection.selected.tolist(), selection.reasons, strict=True
    ):
        if reason.startswith("person:"):
            said = re.search(r"\(model: ([^()]*)\)\s*$", reason)
            model_reason = said.group(1).strip() if said else ""
            if model_reason == "kept":
                model_reason = ""
            kept.append(not model_reason)
            why.append(model_reason)
        else:
            kept.append(bool(selected))
            why.append(reason)
    decided = np.asarray(kept, dtype=bool)
    if model_selected is not None:
        given = np.asarray(model_selected, dtype=bool).ravel()
        if given.shape != decided.shape:
            raise ValueError(
                f"model_selected has {given.size} entries for {decided.size} classes"
            )
        decided = given
    return decided, why


def _class_entries(
    classes: ClassAverages,
    selection: Selection,
    overlays: list[str] | None,
    model_selected: npt.ArrayLike | None,
) -> list[dict[str, Any]]:
    """Per class, what the page's script needs (JSON-safe: NaN is ``None``).

    ``model``: the model's decision at the run's threshold; ``few``: rejected by the
    run's particle-count rule (too few particles, or none), whatever the threshold;
    ``run``, ``modelRun``: the run's and the model's decision there as the details
    show them.
    """
    counts = classes.field("particle_count")
    resolution = classes.field("resolution_A")
    model, why = model_decisions(selection, model_selected)
    return [
        {
            "n": int(classes.class_numbers[i]),
            "score": _number(float(selection.scores[i])),
            "scoreText": f"{float(selection.scores[i]):.6f}",  # as scores.csv has it
            "kept": bool(selection.selected[i]),
            "model": bool(model[i]),
            "few": "min_particles" in why[i],
            "run": _decision_text(
                bool(selection.selected[i]), selection.reasons[i], why[i]
            ),
            "modelRun": _decision_text(bool(model[i]), why[i], why[i]),
            "count": _number(counts[i], 3),
            "res": _number(resolution[i], 3),
            "details": _details(classes, i),
            "saliency": None if overlays is None else overlays[i],
        }
        for i in range(len(classes))
    ]


#: How the details word the run's reasons for a rejection.
_REASON_WORDS = {
    "score": "score below the threshold",
    "min_particles": "too few particles",
}


def _decision_text(kept: bool, reason: str, model_reason: str) -> str:
    """A decision as the details show it: ``"kept"``, ``"rejected (too few
    particles)"``, or ``"rejected (a person)"`` where a person decided (``reason``
    starts with ``"person:"``); ``model_reason`` is the model's reason for a
    rejection."""
    if reason.startswith("person:"):
        return f"{'kept' if kept else 'rejected'} (a person)"
    if kept:
        return "kept"
    words = [_REASON_WORDS.get(r, r) for r in model_reason.split(",") if r]
    return f"rejected ({', '.join(words)})" if words else "rejected"


def _tile_html(entry: dict[str, Any], image: str, edge: int) -> str:
    """One tile: the image and its label lines; the script adds the state line (with
    the details button) and keeps state, marks and ``aria-checked`` up to date."""
    n, score = entry["n"], entry["score"]
    shown = "–" if score is None else f"{score:.3f}"
    facts = []
    if entry["count"] is not None:
        facts.append(f"{entry['count']:,.0f} ptcls")
    if entry["res"] is not None:
        facts.append(f"{entry['res']:.1f} Å")
    state = "kept" if entry["kept"] else "rejected"
    return (
        f'<div class="tile {state}" data-class="{n}" tabindex="0" role="checkbox" '
        f'aria-label="class {n}, score {shown}">'
        f'<img src="{image}" width="{edge}" height="{edge}" alt="class {n}">'
        f'<div class="line"><b>#{n}</b><span>{shown}</span></div>'
        f'<div class="line facts">{html.escape(" · ".join(facts)) or "&nbsp;"}</div>'
        "</div>"
    )


def source_label(path: str) -> str:
    """A class-average file named by its folder and name, with the job type folder
    when the folder is a job's (``"Class2D/job012/run_it025_classes.mrcs"``,
    ``"P3/J42/J42_class_averages.cs"``), since bare names repeat across jobs."""
    parts = [p for p in Path(path).parts if p not in (Path(path).anchor, ".", "")]
    keep = 2
    if len(parts) >= 3 and re.fullmatch(r"job\d+|J\d+", parts[-2]):
        keep = 3
    return "/".join(parts[-keep:]) or path


def _title(classes: ClassAverages, selection: Selection) -> tuple[str, str]:
    prov = classes.provenance
    source = prov.job or (
        source_label(prov.sources[0]) if prov.sources else "class averages"
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
    model_selected: npt.ArrayLike | None = None,
    star_version: int = STAR_VERSION,
) -> Path:
    """Write ``review.html`` for a scored set of classes (atomically).

    Parameters
    ----------
    path:
        The file to write.
    classes, selection:
        The scored class averages and the decision (same classes, same order). A NaN
        score or threshold gives a page without it (the class is never kept by the
        slider's rule; the run's decisions still show).
    saliency:
        ``(n, box, box)`` saliency maps in [0, 1] (as ``--explain`` computes them),
        shown as overlays in each class's details; ``None`` leaves them out.
    model_selected:
        ``(n,)`` the model's decisions at the run's threshold when ``selection`` is a
        person's and the caller knows them; ``None``: as :func:`model_decisions` reads
        them from ``selection``.
    star_version:
        The number on the ``# version`` line of the exported ``backup_selection.star``
        (RELION 3.1/4.0 write 30001, RELION 5.0 50001).

    Returns
    -------
    ``path``.
    """
    if not np.array_equal(selection.class_numbers, classes.class_numbers):
        raise ValueError("selection and class averages list different class numbers")
    star_head = _star_head(star_version)
    images, overlays, edge = _page_images(classes, saliency)
    entries = _class_entries(classes, selection, overlays, model_selected)
    order = np.lexsort((classes.class_numbers, -np.asarray(selection.scores)))
    tiles = "\n".join(_tile_html(entries[i], images[i], edge) for i in order)
    title, subtitle = _title(classes, selection)
    threshold = None if selection.threshold is None else _number(selection.threshold)
    start = _UNKNOWN_THRESHOLD_START if threshold is None else threshold
    shown = "–" if threshold is None else f"{threshold:.3f}"
    data = {
        "threshold": threshold,
        "start": start,
        "maxClass": int(np.max(classes.class_numbers, initial=0)),
        "starHead": star_head,
        "starTail": BACKUP_STAR_TAIL,
        "detailLabels": _DETAIL_LABELS,
        "storageKey": storage_key(classes, selection, entries, Path(path)),
        "classes": entries,
    }
    fields = {
        "__TITLE__": html.escape(title),
        "__SUBTITLE__": html.escape(subtitle),
        "__START__": repr(float(start)),
        "__THRESHOLD__": shown,
        "__MARKS__": "" if threshold is None else f'<option value="{threshold!r}">',
        "__RUN_BUTTON__": html.escape(_run_button(selection, shown)),
        "__THRESHOLD_SOURCE__": html.escape(selection.threshold_source),
        "__EDGE__": str(edge),
        "__TILES__": tiles,
        "__DATA__": script_json(data),
    }
    page = resources.files(__package__).joinpath(_TEMPLATE).read_text("utf-8")
    page = re.sub("|".join(fields), lambda m: fields[m.group(0)], page)
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(path)


def _person_run(selection: Selection) -> bool:
    return selection.threshold_source.endswith("overridden by a person") or any(
        r.startswith("person:") for r in selection.reasons
    )


def _run_button(selection: Selection, shown: str) -> str:
    """The short text of the button that returns the slider to the run's threshold."""
    if _person_run(selection):
        return "run: person's selection"
    source = selection.threshold_source.split(",")[0].strip()
    return f"run threshold {shown} ({source})"


def storage_key(
    classes: ClassAverages,
    selection: Selection,
    entries: list[dict[str, Any]],
    page: Path | None = None,
) -> str:
    """The key under which the page keeps a person's decisions in the browser: unique
    to the run (model, job, files, each class's number, score and decision, and the
    output folder the page is written for), so that another run's page (also one of the
    same input in another folder), or this job's after ``apply-selection``, starts
    afresh."""
    prov = classes.provenance
    # the output folder, not a staging folder inside it
    folder = "" if page is None else str(page.resolve().parent).split("/.staging-")[0]
    run = [
        folder,
        selection.model_sha256,
        prov.job,
        list(prov.sources),
        _number(selection.threshold),
        [[c["n"], c["scoreText"], c["kept"], c["model"]] for c in entries],
    ]
    digest = hashlib.sha256(json.dumps(run).encode()).hexdigest()[:24]
    return f"cryodiscovery-review:{digest}"


def script_json(data: Any) -> str:
    """``data`` as strict JSON (NaN or infinity raise ``ValueError``) that is safe
    inside a ``<script>`` element: every ``<``, ``>`` and ``&`` is written as its
    ``\\u`` escape, so no string can end the element or open a comment in it."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(char, escape)
    # JSON allows U+2028/2029 unescaped; escape them too for older script parsers.
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
