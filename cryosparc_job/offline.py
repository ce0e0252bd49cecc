"""Offline mode: score a 2D classification job folder (or an export of one) without a
server, and write the outputs of Select 2D Classes beside the scores, gallery and run
record, named as Select 2D names them in its job folder.

Each non-empty output ``<name>`` is written as cryoSPARC writes it: ``<name>.cs`` with
``uid`` and the slots Select 2D writes itself (``blob`` and ``alignments2D`` for particles,
``blob`` for templates) and ``<JOB>_passthrough_<name>.cs`` with ``uid`` and every other
slot of the input rows (CTF, location, ...); join the two on ``uid`` for the full rows.
``<JOB>`` is the output folder's name when it is a job uid (``J43``), else the 2D job's
uid. Like Select 2D, the class averages of each template output are also written as an
MRC stack, ``templates_selected.mrc`` and ``templates_excluded.mrc`` (in the rows' order,
with the pixel size in the header). Each output also gets ``<name>.csg``, the group file
that cryoSPARC's "Import Result Group" job reads to bring it into a project
(:mod:`~cryodiscovery.cryosparc_job.groups`). Empty outputs are not written. When no
class is kept the run fails and writes nothing. All files appear together or not at all.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.outputs import check_output_folder, replace_output_set
from cryodiscovery.core.person_selection import PersonChoice, check_choice, choose
from cryodiscovery.core.report.selection_files import (
    SELECTION_OUTPUTS,
    write_selection_files,
)
from cryodiscovery.core.selection import require_selection
from cryodiscovery.cryosparc_job.groups import (
    cryosparc_version,
    group_file_name,
    group_file_text,
)
from cryodiscovery.cryosparc_job.partition import (
    OUTPUT_NAMES,
    OUTPUT_TYPES,
    TEMPLATE_FIELD,
    Partition,
    partition,
    passthrough_fields,
    written_fields,
)
from cryodiscovery.cryosparc_job.summary import summary_line
from cryosparc.dataset import Dataset

if TYPE_CHECKING:
    from cryodiscovery.core.correction import Correction
    from cryodiscovery.core.selection import Selection

log = logging.getLogger(__name__)

Selector = Callable[[ClassAverages], "Selection"]
_JOB_UID = re.compile(r"^J\d+$")
_DESCRIPTIONS = {
    "particles_selected": "Particles of the classes kept by cryodiscovery",
    "particles_excluded": "Particles of the classes rejected by cryodiscovery",
    "templates_selected": "Class averages kept by cryodiscovery",
    "templates_excluded": "Class averages rejected by cryodiscovery",
}


@dataclass(frozen=True)
class OfflineResult:
    """Rows written per output (empty outputs absent) and every file written."""

    saved: dict[str, int]
    files: dict[str, Path]
    summary: str


def output_files(name: str, job_uid: str) -> tuple[str, ...]:
    """File names of output ``name`` as Select 2D job ``job_uid`` names them: the written
    slots, the passthrough slots and, for templates, the class-average stack."""
    files = (f"{name}.cs", f"{job_uid}_passthrough_{name}.cs", group_file_name(name))
    return (*files, f"{name}.mrc") if OUTPUT_TYPES[name] == "template" else files


def output_job_uid(out_dir: Path, source_uid: str | None) -> str:
    """The ``JNN`` of the passthrough file names: ``out_dir``'s name when it is a job
    uid, else the 2D job's (``source_uid``), else ``J0``."""
    for uid in (Path(out_dir).name, source_uid or ""):
        if _JOB_UID.match(uid):
            return uid
    return "J0"


def write_partition(
    parts: Partition,
    folder: Path,
    job_uid: str,
    classes: ClassAverages,
    source_dir: Path | None = None,
) -> dict[str, Path]:
    """Write the non-empty outputs of ``parts`` into ``folder`` (with the class-average
    stacks of the template outputs, images from ``classes``, and a group file per
    output for cryoSPARC's "Import Result Group"; its version from ``source_dir``'s
    group files when there are any); returns name -> path."""
    written: dict[str, Path] = {}
    version = cryosparc_version(source_dir)
    for name, dset in parts.outputs():
        if len(dset) == 0:
            log.info("%s is empty; not written", name)
            continue
        otype = OUTPUT_TYPES[name]
        main, passthrough, group, *stack = output_files(name, job_uid)
        files = {main: dset.filter_fields(written_fields(dset, otype), copy=True)}
        extra = passthrough_fields(dset, otype)
        if len(extra) > 1:
            files[passthrough] = dset.filter_fields(extra, copy=True)
            written[f"passthrough_{name}"] = folder / passthrough
        for file_name, part in files.items():
            part.save(folder / file_name)
        written[name] = folder / main
        text = group_file_text(
            name, otype, files, version=version, description=_DESCRIPTIONS[name]
        )
        (folder / group).write_text(text)
        written[f"{name}_group"] = folder / group
        if stack:
            write_template_stack(dset, classes, folder / stack[0])
            written[f"{name}_stack"] = folder / stack[0]
    return written


def write_template_stack(
    templates: Dataset, classes: ClassAverages, path: Path
) -> None:
    """The class averages of the ``templates`` rows (by ``blob/idx``, in row order) as
    an MRC stack with the classes' pixel size."""
    position = {int(n) - 1: i for i, n in enumerate(classes.class_numbers)}
    order = [position[int(idx)] for idx in np.asarray(templates[TEMPLATE_FIELD])]
    write_stack(path, classes.images[order], classes.pixel_size)


def output_set() -> tuple[str, ...]:
    """The offline job's output set, as patterns: every output's files under any job
    uid, the names this module used before it followed Select 2D
    (``passthrough_<name>.cs``), and the report. An output that is empty now must not
    keep its old rows, so a rerun removes what it did not write again."""
    outputs = (
        pattern
        for name in OUTPUT_NAMES
        for pattern in (*output_files(name, "J*"), f"passthrough_{name}.cs")
    )
    return (*outputs, *SELECTION_OUTPUTS)


def _passthrough_file(particles_cs: Path) -> Path | None:
    """The 2D job's passthrough particles (``J42_passthrough_particles.cs``), if present."""
    job_uid = particles_cs.name.split("_")[0]
    for name in (f"{job_uid}_passthrough_particles.cs", "passthrough_particles.cs"):
        if (particles_cs.parent / name).is_file():
            return particles_cs.parent / name
    return None


def _load(path: Path) -> Dataset:
    try:
        return Dataset.load(path)
    except Exception as err:  # cryosparc-tools raises DatasetLoadError, numpy others
        raise InputError(
            path, f"not a readable cryoSPARC .cs file ({err.__cause__ or err})"
        ) from err


def read_particles(particles_cs: Path) -> Dataset:
    """All fields of the 2D job's particles: its own ``.cs`` joined on ``uid`` with the
    passthrough ``.cs`` (CTF, location...) when that file is there."""
    particles = _load(particles_cs)
    passthrough = _passthrough_file(particles_cs)
    if passthrough is None:
        log.warning(
            "%s: no passthrough particles file beside it; outputs carry only its own fields",
            particles_cs,
        )
        return particles
    extra = _load(passthrough)
    new = [f for f in extra.fields(exclude_uid=True) if f not in particles.fields()]
    if not new:
        return particles
    joined = particles.innerjoin(extra.filter_fields(["uid", *new], copy=True))
    if len(joined) != len(particles):
        raise InputError(
            passthrough,
            f"has {len(joined)} of the {len(particles)} particles of {particles_cs.name}",
        )
    uid, joined_uid = np.asarray(particles["uid"]), np.asarray(joined["uid"])
    if not np.array_equal(uid, joined_uid):  # keep the particles' row order
        order = np.argsort(joined_uid)
        joined = joined.take(order[np.searchsorted(joined_uid[order], uid)])
    return joined


def read_job(job_dir: Path) -> tuple[ClassAverages, Dataset, Dataset]:
    """Class averages, templates and particles (all fields) of a 2D job folder or its
    ``class_averages`` ``.cs``."""
    from cryodiscovery.core.io.cryosparc_class2d import (
        find_class2d_files,
        read_cryosparc_class2d,
    )

    if not job_dir.exists():
        raise InputError(job_dir, "no such file or folder")
    job = read_cryosparc_class2d(job_dir)
    _, particles_cs = find_class2d_files(job_dir)
    if particles_cs is None:
        raise InputError(
            job_dir, "no particles .cs of the 2D classification (JNN_NNN_particles.cs)"
        )
    return job.classes, job.class_averages, read_particles(particles_cs)


def run_offline(
    job_dir: Path,
    out_dir: Path,
    select: Selector,
    *,
    argv: list[str] | None = None,
    choice: PersonChoice | None = None,
    record: Mapping[str, Any] | None = None,
) -> OfflineResult:
    """Score the 2D job in ``job_dir`` and write the Select 2D outputs to ``out_dir``.

    With ``choice`` (a person's selection) the classes are still scored but the
    person's decisions are written. ``record`` adds to (and overrides) the config in
    the run record.

    Raises
    ------
    InputError
        The folder is not a readable cryoSPARC 2D classification (missing or corrupt
        ``.cs`` or ``.mrc`` files), or its particles and templates do not match, or the
        person's selection is not about its classes or keeps none.
    """
    # refused before the scoring, not after: an unusable folder, the 2D job's own, or
    # another cryoSPARC job's (a Select 2D job's .cs files must never be replaced)
    source_dir = Path(job_dir) if Path(job_dir).is_dir() else Path(job_dir).parent
    if Path(out_dir).resolve() == source_dir.resolve():
        raise InputError(
            out_dir, "is the 2D job's own folder; give a new folder for the outputs"
        )
    check_output_folder(out_dir, "cryodiscovery-cryosparc")
    classes, templates, particles = read_job(Path(job_dir))
    what = classes.provenance.job or str(job_dir)
    if choice is not None:
        choice = check_choice(choice, classes.class_numbers)
    selection, who = choose(select(classes), choice, classes.field("particle_count"))
    require_selection(selection)
    parts = partition(
        templates, particles, selection.class_numbers[selection.selected], what=what
    )
    out = Path(out_dir)
    job_uid = output_job_uid(out, what.rsplit("/", 1)[-1])
    config = {"job_dir": str(job_dir), "working_dir": str(Path.cwd()), **who}
    with replace_output_set(out, output_set()) as stage:
        written = write_partition(parts, stage, job_uid, classes, source_dir)
        reports = write_selection_files(
            stage,
            classes,
            selection,
            argv=argv,
            command="cryodiscovery-cryosparc",
            config={**config, "outputs": sorted(written), **(record or {})},
        )
        files = {
            k: out / p.relative_to(stage) for k, p in {**written, **reports}.items()
        }
    summary = summary_line(classes, selection, parts)  # the caller prints it
    return OfflineResult(
        {n: len(d) for n, d in parts.outputs() if len(d)}, files, summary
    )


def rewrite_offline_job(correction: Correction) -> str:
    """Write an offline run's outputs again from a person's selection (``cryodiscovery
    apply-selection``): the 2D job is read again, nothing is scored, every particle
    lands in exactly one output as in the run."""
    if not correction.config.get("job_dir"):
        raise InputError(
            correction.record_path,
            "the report of an online run: its outputs are on the cryoSPARC server; run "
            "cryodiscovery-cryosparc --project P --job J --selection FILE instead",
        )
    job_dir = correction.path("job_dir")

    def person(classes: ClassAverages) -> Selection:
        correction.check_classes(classes.class_numbers, job_dir)
        return correction.in_input_order(classes.class_numbers)

    result = run_offline(
        job_dir,
        correction.job_dir,
        person,
        argv=correction.argv,
        record=correction.record_config(),
    )
    return result.summary
