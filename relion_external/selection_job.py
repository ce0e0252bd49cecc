"""One run of the External job: read a Class2D iteration, score and select its classes, and
write what RELION's auto-selecting Select job writes, plus the gallery and scores table.

The outputs are one set (:data:`OUTPUTS`), replaced as a whole by
:func:`~cryodiscovery.core.outputs.replace_output_set`: a failed or aborted run leaves the
folder as it was (a rerun's earlier outputs stay whole; a first run leaves none). Each
input is read once: model.star and the class numbers of data.star by the reader, then
data.star once more only to copy the kept particles' lines. Inputs are only read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.relion_class2d import RelionClass2DJob, read_relion_class2d
from cryodiscovery.core.outputs import replace_output_set
from cryodiscovery.core.person_selection import (
    PersonChoice,
    check_choice,
    choose,
    read_person_choice,
)
from cryodiscovery.core.report.selection_files import (
    SELECTION_OUTPUTS,
    write_selection_files,
)
from cryodiscovery.relion_external.config import ExternalJobConfig
from cryodiscovery.relion_external.job import ABORT_NOW, ExternalJob, JobAborted
from cryodiscovery.relion_external.nodes import (
    STAR_VERSION,
    detect_version,
    write_output_nodes,
)
from cryodiscovery.relion_external.outputs import (
    class_averages_table,
    write_backup_selection,
    write_class_averages,
)
from cryodiscovery.relion_external.particles import FilterResult, filter_particles

if TYPE_CHECKING:
    from cryodiscovery.core.correction import Correction
    from cryodiscovery.core.model.scorer import ClassScorer
    from cryodiscovery.core.selection import Selection

log = logging.getLogger(__name__)

COMMAND = "cryodiscovery-relion"
#: The job's output set: what RELION's Select job writes, the node list and the report.
OUTPUTS: tuple[str, ...] = (
    "particles.star",
    "class_averages.star",
    "backup_selection.star",
    "RELION_OUTPUT_NODES.star",
    *SELECTION_OUTPUTS,
)


@dataclass(frozen=True)
class JobSummary:
    """What a successful run selected and wrote."""

    n_classes: int
    n_selected: int
    n_particles: int
    n_particles_kept: int
    relion_version: str
    outputs: tuple[Path, ...]


@dataclass(frozen=True)
class OutputPlan:
    """Where and how the output set is written.

    ``folder`` is where the files go; ``job_name`` the job folder as RELION names it
    (``External/job010/``, for the node list); ``record`` the config for the run record.
    """

    folder: Path
    job_name: str
    version: str
    explain: bool
    record: dict[str, Any]
    argv: list[str] | None


def _load(config: ExternalJobConfig) -> tuple[RelionClass2DJob, str]:
    """The Class2D iteration and the RELION version to write for."""
    log.info("Reading %s ...", config.in_parts)
    class2d = read_relion_class2d(config.in_parts)
    if not class2d.data_star.is_file():
        raise InputError(
            class2d.data_star, "file not found (needed for particles.star)"
        )
    if config.out_dir.resolve() == class2d.data_star.parent.resolve():
        raise InputError(
            config.out_dir, "--o is the Class2D job folder; give a new job folder"
        )
    version, source = detect_version(
        Path.cwd(),
        class2d.data_star,
        override=config.relion_version,
        fallback=class2d.version,
    )
    n_parts = np.nansum(class2d.classes.field("particle_count"))
    log.info(
        "%s: %d classes, %d particles, %s px at %s A/px (%s)",
        class2d.job or class2d.model_star.parent,
        len(class2d.classes),
        int(n_parts),
        class2d.classes.box_size,
        class2d.classes.pixel_size,
        class2d.algorithm,
    )
    log.info("Writing for RELION %s (from %s)", version, source)
    return class2d, version


def _select(
    config: ExternalJobConfig,
    class2d: RelionClass2DJob,
    job: ExternalJob,
    choice: PersonChoice | None,
) -> tuple[Selection, ClassScorer, dict[str, Any]]:
    """Score every class and decide which to keep (the person decides when ``choice``
    is given); also return what the run record says about who selected."""
    import torch
    from cryodiscovery.core.model.checkpoint import load_scorer
    from cryodiscovery.core.selection import require_selection, select_classes

    torch.set_num_threads(config.threads)
    scorer = load_scorer(config.selection.model_path)
    log.info("Model %s (sha256 %s)", scorer.name, scorer.sha256[:12])
    job.check_abort()
    log.info("Scoring %d class averages ...", len(class2d.classes))
    model = select_classes(
        class2d.classes, config.selection, scorer=scorer, abort_check=job.check_abort
    )
    job.check_abort()
    selection, record = choose(model, choice, class2d.classes.field("particle_count"))
    if choice is not None:
        log.info(
            "The person's selection %s: %d classes kept, %d differ from the model",
            choice.path,
            selection.n_selected,
            record["person_selection"]["n_flipped"],
        )
    _log_scores(class2d, selection)
    require_selection(selection)  # nothing kept: the job fails, nothing is written
    return selection, scorer, record


def _log_scores(class2d: RelionClass2DJob, selection: Selection) -> None:
    counts = class2d.classes.field("particle_count")
    resolution = class2d.classes.field("resolution_A")
    log.info("Class    Score  Particles  Res(A)  Decision")
    for i, number in enumerate(selection.class_numbers):
        reason = selection.reasons[i] or "score"
        decision = "selected" if selection.selected[i] else f"rejected ({reason})"
        count = "-" if np.isnan(counts[i]) else str(int(counts[i]))
        res = "-" if not np.isfinite(resolution[i]) else f"{resolution[i]:.1f}"
        log.info(
            "%5d  %7.3f  %9s  %6s  %s",
            number,
            selection.scores[i],
            count,
            res,
            decision,
        )


def _write_outputs(
    plan: OutputPlan,
    class2d: RelionClass2DJob,
    selection: Selection,
    scorer: ClassScorer | None,
    job: ExternalJob,
) -> tuple[FilterResult, set[Path]]:
    """Write the output set; return the particle counts and the files written (relative
    to the job folder)."""
    n_classes = len(class2d.model_classes)
    chosen = np.sort(selection.class_numbers[np.asarray(selection.selected, bool)])
    prefix = plan.job_name.rstrip("/") + "/"
    with replace_output_set(plan.folder, OUTPUTS) as stage:
        log.info("Writing particles.star ...")
        kept = filter_particles(
            class2d.data_star,
            stage / "particles.star",
            chosen,
            abort_check=job.check_abort,
            max_class=n_classes,
        )
        _check_counts(class2d, kept)
        if kept.n_written == 0:
            raise InputError(
                class2d.data_star, "the selected classes have no particles"
            )
        table = class_averages_table(
            class2d.model_classes, class2d.classes, selection.scores, selection.selected
        )
        write_class_averages(stage / "class_averages.star", table, version=plan.version)
        write_backup_selection(
            stage / "backup_selection.star", n_classes, chosen, version=plan.version
        )
        log.info(
            "Drawing the gallery%s ...", " and explanations" if plan.explain else ""
        )
        write_selection_files(
            stage,
            class2d.classes,
            selection,
            argv=plan.argv,
            command=COMMAND,
            explain=plan.explain,
            scorer=scorer if plan.explain else None,
            config=plan.record,
            star_version=STAR_VERSION[plan.version],
        )
        nodes = {k: f"{prefix}{k}.star" for k in ("particles", "class_averages")}
        write_output_nodes(stage, nodes, plan.version)
        job.check_abort()  # the last moment at which an abort leaves no outputs
        written = {p.relative_to(stage) for p in stage.rglob("*") if p.is_file()}
    log.info(
        "Written %d of %d particles (%.1f%%) to %sparticles.star",
        kept.n_written,
        kept.n_read,
        100.0 * kept.n_written / max(kept.n_read, 1),
        prefix,
    )
    log.info(
        "Written %d selected classes to %sclass_averages.star", len(chosen), prefix
    )
    return kept, written


def _check_counts(class2d: RelionClass2DJob, kept: FilterResult) -> None:
    """The copy must see the particles the reader counted (data.star unchanged since)."""
    counts = class2d.classes.field("particle_count")
    read = {
        int(c): int(n)
        for c, n in zip(class2d.classes.class_numbers, counts, strict=True)
    }
    if any(kept.class_counts.get(c, 0) != n for c, n in read.items()):
        raise InputError(
            class2d.data_star,
            "changed while the job ran (particle counts differ from the first reading)",
        )


def run_selection_job(
    config: ExternalJobConfig, job: ExternalJob, *, argv: list[str] | None = None
) -> JobSummary:
    """Run the job; raise :class:`InputError` (or :class:`JobAborted`) to end it.

    Parameters
    ----------
    config:
        The checked options.
    job:
        The entered job context (abort polling).
    argv:
        The command line, for the run record.
    """
    start = time.monotonic()
    class2d, version = _load(config)
    choice = None
    if config.selection_file is not None:  # refused before minutes of scoring
        choice = read_person_choice(config.selection_file, len(class2d.model_classes))
        choice = check_choice(choice, class2d.classes.class_numbers)
    job.check_abort()
    selection, scorer, record = _select(config, class2d, job, choice)
    plan = OutputPlan(
        folder=config.out_dir,
        job_name=config.out_dir.as_posix(),
        version=version,
        explain=config.explain,
        record={
            **config.record(),
            "relion_version": version,
            "working_dir": str(Path.cwd()),
            **record,
        },
        argv=argv,
    )
    kept, written = _write_outputs(plan, class2d, selection, scorer, job)
    log.info("Done in %.1f s", time.monotonic() - start)
    return JobSummary(
        n_classes=len(class2d.classes),
        n_selected=int(np.sum(selection.selected)),
        n_particles=kept.n_read,
        n_particles_kept=kept.n_written,
        relion_version=version,
        outputs=tuple(sorted(config.out_dir / p for p in written)),
    )


def rewrite_relion_job(correction: Correction) -> str:
    """Write an External job's outputs again from a person's selection (``cryodiscovery
    apply-selection``): the same writers and guarantees as the job. Inputs are read
    again, nothing is scored; on success the job shows ``RELION_JOB_EXIT_SUCCESS``, on
    any failure the folder (markers included) stays as it was. A leftover
    ``RELION_JOB_ABORT_NOW`` (the job was aborted; RELION removes it only when it runs
    the job again) is refused before anything is read."""
    config = correction.config
    control = correction.path("control_dir") if config.get("control_dir") else None
    if control is None or control.resolve() == correction.path("out_dir").resolve():
        control = correction.job_dir
    job = ExternalJob(control)
    aborted = InputError(
        job.marker(ABORT_NOW),
        "the job was aborted in RELION; delete this file to write its outputs from "
        "the selection (RELION deletes it when it runs the job again)",
    )
    if job.abort_requested():
        raise aborted
    class2d = read_relion_class2d(correction.path("in_parts"))
    if not class2d.data_star.is_file():
        raise InputError(
            class2d.data_star, "file not found (needed for particles.star)"
        )
    correction.check_classes(class2d.classes.class_numbers, class2d.model_star)
    scorer = correction.explain_scorer()
    plan = OutputPlan(
        folder=correction.job_dir,
        job_name=str(config.get("out_dir") or correction.job_dir.as_posix()),
        version=str(config.get("relion_version") or class2d.version),
        explain=scorer is not None,
        record=correction.record_config(),
        argv=correction.argv,
    )
    selection = correction.in_input_order(class2d.classes.class_numbers)
    try:
        kept, _ = _write_outputs(plan, class2d, selection, scorer, job)
    except JobAborted as err:  # aborted in RELION meanwhile: nothing was replaced
        raise aborted from err
    job.finish("success")  # the outputs are whole and this run's
    return (
        f"{selection.n_selected} of {len(selection.scores)} classes kept, "
        f"{kept.n_written} of {kept.n_read} particles, in {correction.job_dir}"
    )
