"""The cryoSPARC custom job: score a finished 2D classification on a live instance and save
the four outputs of Select 2D Classes to a new External job in the same workspace.

Order of work: check the 2D job (exists, is a 2D classification, has completed) before
anything is created; then create the External job and, inside ``with job.run():``, connect
it to the 2D job's outputs, load and score, build every output dataset, and only then save
them. Any error is written to the job's event log as one line and marks the job failed, so
a run never ends with some outputs saved and the job shown as completed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import class_averages_from_datasets
from cryodiscovery.core.person_selection import PersonChoice, check_choice, choose
from cryodiscovery.core.report.selection_files import (
    render_gallery,
    write_selection_outputs,
)
from cryodiscovery.core.selection import require_selection
from cryodiscovery.cryosparc_job.partition import (
    OUTPUT_TYPES,
    WRITTEN_SLOTS,
    Partition,
    fill_allocated,
    partition,
)
from cryodiscovery.cryosparc_job.session import ServerError, api_detail
from cryodiscovery.cryosparc_job.summary import score_table, summary_line
from cryosparc.dataset import Dataset

if TYPE_CHECKING:
    from cryodiscovery.core.selection import Selection

log = logging.getLogger(__name__)

Selector = Callable[[ClassAverages], "Selection"]
#: Input name on the External job, and the 2D job output it connects to, per output type.
INPUTS: dict[str, tuple[str, str, str]] = {
    "particle": ("particles", "particles", "Particles"),
    "template": ("templates", "class_averages", "2D class averages"),
}


class JobInterrupted(Exception):
    """The run was interrupted (Ctrl-C); raised inside ``job.run()`` so the job fails."""


@dataclass(frozen=True)
class OnlineRequest:
    """What to score and where to put the result.

    ``workspace`` defaults to the 2D job's first workspace; ``out_dir`` keeps a local copy
    of the scores, gallery and run record (otherwise they only go to the job's log);
    ``choice`` is a person's selection to save instead of the model's decisions.
    """

    project: str
    job: str
    workspace: str | None = None
    title: str | None = None
    out_dir: Path | None = None
    argv: list[str] | None = None
    choice: PersonChoice | None = None


@dataclass(frozen=True)
class OnlineResult:
    """The External job made and the rows saved per output (empty outputs are absent)."""

    project: str
    job: str
    saved: dict[str, int]


def _fail(err: BaseException, what: str) -> Exception:
    code = getattr(err, "code", None)
    if code in (404, 422):
        return InputError(None, f"{what} not found ({api_detail(err)})")
    if code in (401, 403):
        return InputError(None, f"not allowed to read {what} ({api_detail(err)})")
    return ServerError(f"could not read {what}: {api_detail(err)}")


def _output_names(job: Any) -> list[str]:
    try:
        return list(job.outputs)  # cryosparc-tools 5
    except AttributeError:
        return [g["name"] for g in job.doc["output_result_groups"]]  # 4.x


def _workspaces(job: Any) -> list[str]:
    try:
        return list(job.model.workspace_uids)
    except AttributeError:
        return list(job.doc["workspace_uids"])


def find_class2d_job(cs: Any, project: str, job: str) -> Any:
    """The 2D classification job ``project/job``; an :class:`InputError` when it is not one."""
    what = f"{project}/{job}"
    try:
        cs.find_project(project)
    except Exception as err:
        raise _fail(err, f"project {project}") from err
    try:
        source = cs.find_job(project, job)
        jtype, status = str(source.type), str(source.status)
    except Exception as err:
        raise _fail(err, f"job {what}") from err
    if not jtype.startswith("class_2D"):
        raise InputError(
            None,
            f"{what} is a {jtype} job, not a 2D classification (class_2D_new or class_2D)",
        )
    if status != "completed":
        raise InputError(
            None, f"{what} is {status}; run it on a completed 2D classification"
        )
    missing = {"particles", "class_averages"} - set(_output_names(source))
    if missing:
        raise InputError(None, f"{what} has no {' or '.join(sorted(missing))} output")
    return source


def resolve_workspace(cs: Any, source: Any, project: str, workspace: str | None) -> str:
    """``workspace`` if it exists in ``project``, else the 2D job's first workspace."""
    uid = workspace or (_workspaces(source) or [""])[0]
    if not uid:
        raise InputError(
            None, f"{project}/{source.uid} is in no workspace; give --workspace"
        )
    try:
        cs.find_workspace(project, uid)
    except Exception as err:
        raise _fail(err, f"workspace {project}/{uid}") from err
    return uid


def _download(what: str, fetch: Callable[[], Any]) -> Any:
    """Run one download; an unreadable dataset or image stack is bad input, said once."""
    try:
        return fetch()
    except Exception as err:
        if getattr(err, "code", None) is not None:  # an API error: the server said why
            raise
        cause = err.__cause__ or err
        raise InputError(what, f"unreadable ({type(cause).__name__}: {cause})") from err


def load_class2d(
    cs: Any, source: Any, project: str
) -> tuple[ClassAverages, Dataset, Dataset]:
    """The 2D job's class averages (with images and metadata), templates and particles."""
    what = f"{project}/{source.uid}"
    templates = _download(
        f"{what} class_averages", lambda: source.load_output("class_averages")
    )
    particles = _download(
        f"{what} particles",
        lambda: source.load_output("particles", slots=list(WRITTEN_SLOTS["particle"])),
    )
    paths = sorted({str(p) for p in templates["blob/path"]}) if len(templates) else []
    if len(paths) != 1:
        raise InputError(what, f"class averages in {len(paths)} stacks; expected one")
    _, stack = _download(paths[0], lambda: cs.download_mrc(project, paths[0]))
    classes = class_averages_from_datasets(
        templates,
        particles,
        stack,
        provenance=Provenance("cryosparc", tuple(paths), what),
        what=f"{what} class_averages",
        particles_what=f"{what} particles",
    )
    log.info(
        "loaded %d classes and %d particles from %s", len(classes), len(particles), what
    )
    return classes, templates, particles


def prepare_outputs(ext: Any, parts: Partition, what: str) -> list[tuple[str, Dataset]]:
    """Add each non-empty output to ``ext`` and fill the dataset ``alloc_output`` allocates.

    Nothing is saved here, so a problem with any output stops the run before the first
    save.
    """
    ready: list[tuple[str, Dataset]] = []
    for name, dset in parts.outputs():
        if len(dset) == 0:
            ext.log(f"{name} is empty; not saved")
            continue
        otype = OUTPUT_TYPES[name]
        ext.add_output(
            otype,
            name=name,
            slots=list(WRITTEN_SLOTS[otype]),
            passthrough=INPUTS[otype][0],
            title=name.replace("_", " ").capitalize(),
        )
        allocated = ext.alloc_output(name, dset)
        ready.append((name, fill_allocated(allocated, dset, f"{what} {name}")))
    return ready


def one_line(err: BaseException) -> str:
    """A one-line description of an error for the job log and the terminal."""
    if isinstance(err, (InputError, ServerError, JobInterrupted)):
        return str(err)
    if getattr(err, "code", None) is not None:
        return f"cryoSPARC API error: {api_detail(err)}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip(": ")


@contextlib.contextmanager
def logged_failure(ext: Any) -> Iterator[None]:
    """Write the error to the job's event log as one line; Ctrl-C becomes a failure too."""
    try:
        yield
    except KeyboardInterrupt as err:
        _log_quietly(ext, "Interrupted by the user", "error")
        raise JobInterrupted(
            f"interrupted; External job {ext.uid} marked failed"
        ) from err
    except Exception as err:
        _log_quietly(ext, f"cryodiscovery failed: {one_line(err)}", "error")
        raise


def _log_quietly(ext: Any, text: str, level: str = "text") -> None:
    # The log line is a courtesy: the job's status records the failure regardless.
    try:
        ext.log(text, level=level)
    except Exception as err:
        log.warning("could not write to the job log: %s", one_line(err))


def _subset(
    classes: ClassAverages, selection: Selection, mask: np.ndarray
) -> tuple[ClassAverages, Selection]:
    idx = np.flatnonzero(mask)
    sub = dataclasses.replace(
        selection,
        class_numbers=selection.class_numbers[idx],
        scores=selection.scores[idx],
        selected=selection.selected[idx],
        reasons=tuple(selection.reasons[i] for i in idx),
    )
    return classes.subset(idx), sub


def _set_images(
    ext: Any,
    classes: ClassAverages,
    selection: Selection,
    reports: dict[str, Path],
    saved: list[str],
) -> None:
    """Tile and output images where the cryosparc-tools version has them (5.x)."""
    if not hasattr(ext, "set_tile_image"):
        return
    try:
        ext.set_tile_image(reports["gallery"])
        for name, want in (("templates_selected", True), ("templates_excluded", False)):
            if name in saved:
                sub_classes, sub_sel = _subset(
                    classes, selection, selection.selected == want
                )
                path = render_gallery(
                    sub_classes, sub_sel, reports["gallery"].with_name(f"{name}.png")
                )
                ext.set_output_image(name, path)
    except Exception as err:
        _log_quietly(ext, f"could not set the job images: {one_line(err)}", "warning")


def _report(
    ext: Any,
    classes: ClassAverages,
    selection: Selection,
    parts: Partition,
    reports: dict[str, Path],
    saved: list[str],
) -> None:
    ext.log(summary_line(classes, selection, parts))
    ext.log("Scores per class:\n" + score_table(classes, selection))
    ext.log_plot(
        reports["gallery"],
        "Classes kept (blue) and rejected (vermillion)",
        formats=["png"],
        raw_data_file=reports["scores"],
        raw_data_format="csv",
    )
    # The review page rides along as the histogram's data: downloadable from the log.
    ext.log_plot(
        reports["score_histogram"],
        "Score histogram",
        formats=["png"],
        raw_data_file=reports["review"],
        raw_data_format="html",
    )
    ext.log(
        "Review page: download review.html (the score histogram's data) and open it "
        "in a browser to check, adjust and export the selection"
    )
    _set_images(ext, classes, selection, reports, saved)


def score_in_job(
    cs: Any,
    ext: Any,
    source: Any,
    request: OnlineRequest,
    select: Selector,
    workdir: Path,
) -> dict[str, int]:
    """Everything that happens inside ``job.run()``; returns rows saved per output."""
    what = f"{request.project}/{request.job}"
    for otype, (input_name, output_name, title) in INPUTS.items():
        ext.connect(
            input_name,
            request.job,
            output_name,
            slots=list(WRITTEN_SLOTS[otype]),
            title=title,
        )
    classes, templates, particles = load_class2d(cs, source, request.project)
    choice = request.choice
    if choice is not None:  # checked before the job was made; the data may differ now
        choice = check_choice(choice, classes.class_numbers)
    ext.log(
        f"Scoring {len(classes)} class averages of {what} ({len(particles):,} particles)"
    )
    selection, who = choose(select(classes), choice, classes.field("particle_count"))
    if request.choice is not None:
        n_flipped = who["person_selection"]["n_flipped"]
        ext.log(
            f"Saving a person's selection ({request.choice.path.name}): "
            f"{selection.n_selected} classes kept, {n_flipped} differ from the model"
        )
    for warning in selection.warnings:
        _log_quietly(ext, warning, "warning")
    require_selection(selection)  # nothing kept: the job fails, nothing is saved
    parts = partition(
        templates, particles, selection.class_numbers[selection.selected], what=what
    )
    ready = prepare_outputs(ext, parts, what)
    reports = write_selection_outputs(
        request.out_dir or workdir,
        classes,
        selection,
        argv=request.argv,
        command="cryodiscovery-cryosparc",
        config={
            "cryosparc_job": what,
            "external_job": f"{request.project}/{ext.uid}",
            **who,
        },
    )
    for name, dset in ready:
        ext.save_output(name, dset)
        log.info("saved %s: %d rows", name, len(dset))
    _report(ext, classes, selection, parts, reports, [n for n, _ in ready])
    return {name: len(dset) for name, dset in ready}


def _class_numbers(source: Any, project: str) -> np.ndarray:
    """The 2D job's class numbers (``blob/idx`` + 1 of its class averages)."""
    what = f"{project}/{source.uid} class_averages"
    templates = _download(what, lambda: source.load_output("class_averages"))
    return np.asarray(templates["blob/idx"], dtype=np.int64) + 1


def run_online(cs: Any, request: OnlineRequest, select: Selector) -> OnlineResult:
    """Score ``request.project/request.job`` and save the selection to a new External job.

    Raises
    ------
    InputError
        Unknown project, workspace or job, a job that is not a completed 2D
        classification, or a person's selection of other classes (no job is
        created), or bad data found during the run.
    ServerError, JobInterrupted, APIError
        During the run: the External job is marked failed with the message.
    """
    source = find_class2d_job(cs, request.project, request.job)
    workspace = resolve_workspace(cs, source, request.project, request.workspace)
    if request.choice is not None:  # a selection of another job makes no job
        check_choice(request.choice, _class_numbers(source, request.project))
    title = request.title or f"cryodiscovery selection of {request.job}"
    ext = cs.create_external_job(
        request.project,
        workspace,
        title=title,
        desc="Automated 2D class selection by cryodiscovery",
    )
    log.info("created External job %s/%s in %s", request.project, ext.uid, workspace)
    with (
        tempfile.TemporaryDirectory(prefix="cryodiscovery-") as tmp,
        ext.run(),
        logged_failure(ext),
    ):
        saved = score_in_job(cs, ext, source, request, select, Path(tmp))
    log.info("External job %s/%s completed: %s", request.project, ext.uid, saved)
    return OnlineResult(request.project, str(ext.uid), saved)
