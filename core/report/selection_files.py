"""What a scoring run leaves for the user: the scores table, the class gallery, the score
histogram, the review page (:mod:`~cryodiscovery.core.report.review`), optional saliency
overlays and the record of how it was made, replaced as one
set (:func:`~cryodiscovery.core.outputs.replace_output_set`) so that a failed run leaves
nothing half-written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.outputs import replace_output_set, write_run_record
from cryodiscovery.core.report import explain as saliency
from cryodiscovery.core.report.gallery import (
    KEPT_COLOUR,
    REJECTED_COLOUR,
    LabelLine,
    Section,
    TileGrid,
    render_grid,
    resample_tiles,
    rgb01,
    stretch_to_tiles,
    tile_size_for,
    to_rgb8,
)
from cryodiscovery.core.report.review import (
    STAR_VERSION,
    model_decisions,
    write_review_page,
)
from cryodiscovery.core.report.scores_table import check_matches, write_scores_csv
from cryodiscovery.core.selection import Selection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

#: Tiles per gallery page (tiles shrink to 96 px past 100 classes; 300 still read well).
GALLERY_PAGE_TILES = 300
#: The files :func:`write_selection_files` writes, as patterns (pages and overlays vary
#: in number): the report part of every selection job's output set.
SELECTION_OUTPUTS: tuple[str, ...] = (
    "scores.csv",
    "gallery.png",
    "gallery_*.png",
    "score_histogram.png",
    "review.html",
    "run_record.json",
    "explain/class_*.png",
    "explain/overview*.png",
)


def _tile_labels(classes: ClassAverages, selection: Selection) -> list[list[LabelLine]]:
    """Per class: "#class  score", then "n=count  reason", then the kind when known."""
    counts = classes.field("particle_count")
    show_counts = bool(np.isfinite(counts).any()) or any(
        "min_particles" in r for r in selection.reasons
    )
    model_kept, _ = model_decisions(selection)
    labels = []
    for i in range(len(classes)):
        lines: list[LabelLine] = [
            (f"#{int(classes.class_numbers[i])}", f"{float(selection.scores[i]):.3f}")
        ]
        reason = selection.reasons[i]
        mark = (
            "a person's"  # flipped against the model's decision
            if bool(selection.selected[i]) != bool(model_kept[i])
            else "few particles"
            if "min_particles" in reason
            else ""
        )
        if show_counts:
            count = "" if math.isnan(counts[i]) else f"n={round(counts[i]):,}"
            lines.append((count, mark))
        elif mark:
            lines.append(("", mark))
        if any(classes.kinds):
            lines.append((classes.kinds[i].replace("_", " "), ""))
        labels.append(lines)
    return labels


def _sections(selection: Selection) -> list[Section]:
    """Kept then rejected, each by score (highest first; ties by class number)."""
    scores = np.asarray(selection.scores, dtype=np.float64)
    kept = np.asarray(selection.selected, dtype=bool)
    order = np.lexsort((selection.class_numbers, -scores))
    keep_idx, reject_idx = order[kept[order]], order[~kept[order]]
    n = scores.size
    if any(r.startswith("person:") for r in selection.reasons):
        threshold = "chosen by a person"
    else:
        threshold = (
            f"score ≥ {selection.threshold:.3f} "
            f"({selection.threshold_source} threshold)"
        )
    return [
        Section(
            f"Kept: {keep_idx.size} of {n} classes   {threshold}, best first",
            KEPT_COLOUR,
            keep_idx.astype(np.int64),
        ),
        Section(
            f"Rejected: {reject_idx.size} of {n} classes   highest score first",
            REJECTED_COLOUR,
            reject_idx.astype(np.int64),
        ),
    ]


def _source_name(classes: ClassAverages) -> str:
    prov = classes.provenance
    return prov.job or (
        Path(prov.sources[0]).name if prov.sources else "class averages"
    )


def _title(classes: ClassAverages, selection: Selection) -> str:
    return (
        f"{_source_name(classes)}: {len(classes)} classes, box {classes.box_size} px, "
        f"{selection.mode}, model {selection.model_name}"
    )


def render_gallery(
    classes: ClassAverages, selection: Selection, path: Path, *, max_tiles: int = 300
) -> Path:
    """Draw the kept and the rejected classes as labelled tiles.

    Each tile is one class average, stretched to its own 0.5-99.5 percentile range and
    framed blue (kept) or vermillion (rejected), labelled with class number, score,
    particle count and, when known, the rejection reason and the class kind. Past
    ``max_tiles`` classes further pages go to ``<stem>_2.png``, ``<stem>_3.png``...

    Returns
    -------
    The path of the first page (``path``).
    """
    return render_gallery_pages(classes, selection, path, max_tiles=max_tiles)[0]


def render_gallery_pages(
    classes: ClassAverages,
    selection: Selection,
    path: Path,
    *,
    max_tiles: int = 300,
    maps: npt.NDArray[np.float32] | None = None,
    title_suffix: str = "",
) -> list[Path]:
    """:func:`render_gallery`, returning every page; with ``(n, B, B)`` saliency
    ``maps`` (0-1) the tiles show the saliency overlay instead of the plain class."""
    check_matches(classes, selection)
    size = tile_size_for(min(len(classes), max_tiles))
    greys = stretch_to_tiles(classes.images, size)
    if maps is None:
        tiles = to_rgb8(greys)
    else:
        tiles = to_rgb8(saliency.overlay(greys, resample_tiles(maps, size)))
    grid = TileGrid(
        tiles,
        _tile_labels(classes, selection),
        _sections(selection),
        _title(classes, selection) + title_suffix,
    )
    return render_grid(grid, path, max_tiles=max_tiles)


def render_score_histogram(selection: Selection, path: Path) -> Path:
    """Histogram of scores (0-1), kept and rejected stacked, with the threshold marked."""
    scores = np.asarray(selection.scores, dtype=np.float64)
    kept = np.asarray(selection.selected, dtype=bool)
    # A fixed layout: the constrained layout engine doubles the drawing time.
    fig = Figure(figsize=(9.0, 3.8), dpi=110)
    fig.subplots_adjust(left=0.07, right=0.72, bottom=0.14, top=0.9)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    few = sum("min_particles" in r for r in selection.reasons)
    rejected = f"rejected ({int((~kept).sum())}"
    rejected += f"; {few} for too few\nparticles)" if few else ")"
    ax.hist(
        [scores[kept], scores[~kept]],
        bins=bins.tolist(),
        stacked=True,
        color=[rgb01(KEPT_COLOUR), rgb01(REJECTED_COLOUR)],
        label=[f"kept ({int(kept.sum())})", rejected],
        edgecolor="white",
        linewidth=0.5,
    )
    ax.axvline(
        selection.threshold,
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=f"threshold {selection.threshold:.3f} ({selection.threshold_source})",
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("score (probability that the class is good)")
    ax.set_ylabel("classes")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(
        f"{scores.size} classes, {selection.mode}, model {selection.model_name}"
    )
    fig.legend(loc="upper left", bbox_to_anchor=(0.73, 0.9), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.savefig(path)
    return path


def _explanations(
    stage: Path,
    classes: ClassAverages,
    selection: Selection,
    scorer: saliency.ExplainableScorer,
    method: str,
) -> tuple[list[Path], npt.NDArray[np.float32]]:
    """Write explain/class_NNN.png and explain/overview.png into the staging folder;
    return the files and the ``(n, B, B)`` saliency maps."""
    toward_good = np.asarray(selection.scores) >= selection.threshold
    maps = saliency.saliency_maps(scorer, classes, toward_good, method=method)
    counts = classes.field("particle_count")
    name = "Grad-CAM" if method == "gradcam" else "gradient x input"
    captions = []
    for i, number in enumerate(classes.class_numbers):
        state = (
            "kept" if selection.selected[i] else f"rejected ({selection.reasons[i]})"
        )
        count = "" if math.isnan(counts[i]) else f"{round(counts[i]):,} particles.  "
        evidence = "good" if toward_good[i] else "junk"
        captions.append(
            (
                f"Class {int(number)}   score {float(selection.scores[i]):.3f}   {state}",
                f"{count}Right: evidence for '{evidence}' ({name})",
            )
        )
    paths = saliency.write_class_overlays(
        stage / "explain", classes, maps, captions, selection.selected
    )
    suffix = f"; {name} (bright = evidence for the decision)"
    overview = stage / "explain" / "overview.png"
    pages = render_gallery_pages(
        classes,
        selection,
        overview,
        max_tiles=GALLERY_PAGE_TILES,
        maps=maps,
        title_suffix=suffix,
    )
    return paths + pages, maps


def write_selection_outputs(
    out_dir: Path,
    classes: ClassAverages,
    selection: Selection,
    *,
    argv: list[str] | None,
    command: str,
    explain: bool = False,
    scorer: saliency.ExplainableScorer | None = None,
    config: Mapping[str, Any] | None = None,
    explain_method: str = "gradient-x-input",
) -> dict[str, Path]:
    """Write every output of a scoring run into ``out_dir``, all or nothing: the set of
    :data:`SELECTION_OUTPUTS` of an earlier run there is replaced as a whole.

    Parameters and result as :func:`write_selection_files`, with paths in ``out_dir``.
    """
    out = Path(out_dir)
    with replace_output_set(out, SELECTION_OUTPUTS) as stage:
        staged = write_selection_files(
            stage,
            classes,
            selection,
            argv=argv,
            command=command,
            explain=explain,
            scorer=scorer,
            config=config,
            explain_method=explain_method,
        )
    log.info("wrote %d files to %s", len(staged), out)
    return {k: out / p.relative_to(stage) for k, p in staged.items()}


def write_selection_files(
    folder: Path,
    classes: ClassAverages,
    selection: Selection,
    *,
    argv: list[str] | None,
    command: str,
    explain: bool = False,
    scorer: saliency.ExplainableScorer | None = None,
    config: Mapping[str, Any] | None = None,
    explain_method: str = "gradient-x-input",
    star_version: int = STAR_VERSION,
) -> dict[str, Path]:
    """Write the report files of a scoring run straight into ``folder`` (a staging
    folder of :func:`~cryodiscovery.core.outputs.replace_output_set`, whose names must
    include :data:`SELECTION_OUTPUTS`).

    Parameters
    ----------
    folder:
        Where to write (exists).
    classes, selection:
        The scored class averages and the decision (same classes, same order).
    argv, command:
        Recorded in ``run_record.json`` (``argv=None`` records ``sys.argv``).
    explain:
        Also write saliency overlays ``explain/class_NNN.png`` and
        ``explain/overview.png``; needs ``scorer``.
    scorer:
        The scorer that made ``selection`` (for ``explain``).
    config:
        Extra settings to record (options of the command).
    explain_method:
        A method of :data:`cryodiscovery.core.report.explain.METHODS`.
    star_version:
        The ``# version`` of the review page's exported ``backup_selection.star`` (the
        RELION job passes its RELION's: 50001 for 5.0).

    Returns
    -------
    Output name -> path: ``scores``, ``gallery`` (plus ``gallery_2``... for more pages),
    ``score_histogram``, ``review`` (the review page, with the saliency overlays when
    ``explain``), ``run_record``, and with ``explain`` ``explain_overview`` and
    ``explain`` (the folder).
    """
    check_matches(classes, selection)
    if explain and scorer is None:
        raise ValueError("explain=True needs the scorer that made the selection")
    stage = Path(folder)
    written = [write_scores_csv(stage / "scores.csv", classes, selection)]
    written += render_gallery_pages(
        classes, selection, stage / "gallery.png", max_tiles=GALLERY_PAGE_TILES
    )
    written.append(render_score_histogram(selection, stage / "score_histogram.png"))
    maps = None
    if explain and scorer is not None:
        overlays, maps = _explanations(
            stage, classes, selection, scorer, explain_method
        )
        written += overlays
    written.append(
        write_review_page(
            stage / "review.html",
            classes,
            selection,
            saliency=maps,
            star_version=star_version,
        )
    )
    _warn_if_replacing_a_person(stage, selection)
    record = _record_config(classes, selection, explain, explain_method, config)
    names = sorted(str(p.relative_to(stage)) for p in written)
    record["outputs"] = [n for n in names if not n.startswith("explain/class_")]
    record["explain_overlays"] = len(names) - len(record["outputs"])
    written.append(
        write_run_record(
            stage,
            command=command,
            argv=argv,
            config=record,
            model_checksum=selection.model_sha256,
        )
    )
    result = {p.stem: p for p in written if p.parent == stage}
    if explain:
        result["explain"] = stage / "explain"
        result["explain_overview"] = stage / "explain" / "overview.png"
    return result


def _warn_if_replacing_a_person(stage: Path, selection: Selection) -> None:
    """A run of the model into a folder whose outputs a person corrected replaces the
    person's selection: say so (the person's file is named in the old record)."""
    if any(r.startswith("person:") for r in selection.reasons):
        return
    previous = stage.parent / "run_record.json"  # the stage is inside the output folder
    if not stage.name.startswith(".staging-") or not previous.is_file():
        return
    try:
        config = json.loads(previous.read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return
    if config.get("selection_source") == "person":
        chosen = (config.get("person_selection") or {}).get("file", "a selection file")
        log.warning(
            "%s held a person's selection (%s); it is replaced by the model's: apply "
            "that file again with `cryodiscovery apply-selection` to restore it",
            stage.parent,
            chosen,
        )


def _record_config(
    classes: ClassAverages,
    selection: Selection,
    explain: bool,
    method: str,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    prov = classes.provenance
    kept = np.asarray(selection.selected, dtype=bool)
    return {
        **dict(extra or {}),
        "input": {
            "format": prov.format,
            "sources": list(prov.sources),
            "job": prov.job,
        },
        "n_classes": len(classes),
        "box_px": classes.box_size,
        "pixel_size_A": classes.pixel_size,
        "mode": selection.mode,
        "model_name": selection.model_name,
        "threshold": float(selection.threshold),
        "threshold_source": selection.threshold_source,
        "n_selected": int(kept.sum()),
        "n_rejected": int((~kept).sum()),
        "explain": method if explain else None,
    }


_THRESHOLD_SOURCES = {
    "model": "stored with the model",
    "user": "set with --threshold",
    "target-fnr": "recalibrated for --target-fnr on the model's validation scores",
    "adaptive": "adapted to this job's score distribution",
}


def format_summary(
    classes: ClassAverages, selection: Selection, outputs: Mapping[str, Path]
) -> str:
    """A short plain-text summary of a scoring run for the terminal or a job log."""
    kept = int(np.count_nonzero(selection.selected))
    n = len(classes)
    few = sum(
        "min_particles" in r and not r.startswith("person:") for r in selection.reasons
    )
    source = _THRESHOLD_SOURCES.get(
        selection.threshold_source, selection.threshold_source
    )
    mode = selection.mode
    if mode == "image-only" and not classes.has_metadata:
        mode += " (the input has no per-class metadata)"
    apix = "" if classes.pixel_size is None else f", {classes.pixel_size:.3g} Å/px"
    lines = [
        f"{kept} of {n} classes kept, {n - kept} rejected"
        + (f" ({few} for too few particles)" if few else ""),
        f"  input      {_source_name(classes)} "
        f"({classes.provenance.format}, box {classes.box_size} px{apix})",
        f"  mode       {mode}",
        f"  threshold  {selection.threshold:.3f} ({source})",
        f"  model      {selection.model_name} (sha256 {selection.model_sha256[:12]})",
    ]
    main = [
        outputs[k]
        for k in ("scores", "gallery", "score_histogram", "review")
        if k in outputs
    ]
    lines.append("  outputs    " + ", ".join(str(p) for p in main))
    if "explain" in outputs:
        lines.append(
            f"  saliency   {outputs['explain']}/class_NNN.png and overview.png"
        )
    return "\n".join(lines)
