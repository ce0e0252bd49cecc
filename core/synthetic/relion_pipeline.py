"""RELION project bookkeeping around a Class2D job: Select jobs (as ``relion_display --gui``
writes them after a person's selection), ``job.star``/``note.txt`` and ``default_pipeline.star``.

Node and process type labels follow RELION's ``src/pipeline_jobs.h``: 3.1 uses numeric types,
4.0 labels such as ``ParticlesData.star.relion.class2d`` and
``ProcessData.star.relion.optimiser.class2d``, 5.0 ``ParticleGroupMetadata.star.relion.class2d``
and ``OptimiserData.star.relion.class2d`` with a ``rlnPipeLineNodeTypeLabelDepth`` column and
``# version 50001``. In 4.0+ a Select job reads the Class2D ``run_itNNN_optimiser.star``,
in 3.1 the ``run_itNNN_model.star``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryodiscovery.core.classes import Label
from cryodiscovery.core.io.relion_class2d import RelionClass2DJob
from cryodiscovery.core.io.star_tables import loop_table, read_star, write_star
from cryodiscovery.core.outputs import staged_outputs

log = logging.getLogger(__name__)

WRITER_VERSIONS = ("3.1", "4.0", "5.0")
_JOB_NAME_RE = re.compile(r"^[A-Za-z0-9]+/job\d{3,}$")
STAR_VERSION = {"3.1": 30001, "4.0": 30001, "5.0": 50001}


def check_job(job: str, version: str) -> None:
    if not _JOB_NAME_RE.match(job):
        raise ValueError(f"job must look like 'Class2D/job012', got {job!r}")
    if version not in WRITER_VERSIONS:
        raise ValueError(f"version must be one of {WRITER_VERSIONS}, got {version!r}")


def write_job_files(
    folder: Path,
    job: str,
    type_label: str,
    version: str,
    options: dict[str, str],
    command: str,
) -> None:
    """note.txt, job.star (RELION 4.0+) and RELION_JOB_EXIT_SUCCESS in a job folder."""
    (folder / "note.txt").write_text(
        f"\n ++++ Executing new job on Mon Jan  1 12:00:00 2024\n"
        f" ++++ with the following command(s): \n{command}\n ++++ \n"
    )
    if version != "3.1":
        job_block: dict[str, Any] = {
            "rlnJobTypeLabel": type_label,
            "rlnJobIsContinue": 0,
        }
        if version == "5.0":
            job_block["rlnJobIsTomo"] = 0
        values = pd.DataFrame(
            {
                "rlnJobOptionVariable": list(options),
                "rlnJobOptionValue": list(options.values()),
            }
        )
        write_star(
            folder / "job.star",
            {"job": job_block, "joboptions_values": values},
            version=STAR_VERSION[version],
        )
    (folder / "RELION_JOB_EXIT_SUCCESS").write_text("")


def write_relion_selection(
    job: RelionClass2DJob, labels: npt.ArrayLike, select_job: str = "Select/job002"
) -> Path:
    """Write a Select job as ``relion_display --gui`` does after a person's selection.

    Parameters
    ----------
    job:
        The Class2D job selected from.
    labels:
        ``(n,)`` labels per class, 1 selected / 0 rejected (no unknowns).
    select_job:
        ``"Select/jobNNN"``, created under ``job.project_dir``.

    Returns
    -------
    Path
        The written ``backup_selection.star``.
    """
    check_job(select_job, job.version if job.version in WRITER_VERSIONS else "3.1")
    labs = np.asarray(labels, dtype=np.int64)
    n = len(job.classes)
    if labs.shape != (n,) or not np.isin(labs, (Label.REJECTED, Label.SELECTED)).all():
        raise ValueError(f"labels must be ({n},) values 0/1, got shape {labs.shape}")
    version = job.version if job.version in WRITER_VERSIONS else "3.1"
    star_ver = STAR_VERSION[version]
    selected = job.classes.class_numbers[labs == Label.SELECTED]
    out_dir = job.project_dir / select_job
    with staged_outputs(out_dir) as stage:
        write_star(
            stage / "backup_selection.star",
            {"": pd.DataFrame({"rlnSelected": labs})},
            version=star_ver,
        )
        model = loop_table(
            read_star(job.model_star, n_blocks=2), "model_classes", job.model_star
        )
        chosen = model[np.isin(np.arange(1, len(model) + 1), selected)].copy()
        chosen["rlnClassNumber"] = selected
        write_star(
            stage / "class_averages.star",
            {"": chosen.reset_index(drop=True)},
            version=star_ver,
        )
        if job.data_star.is_file():
            data = read_star(job.data_star)
            parts = loop_table(data, "particles", job.data_star)
            keep = parts[parts["rlnClassNumber"].isin(selected)].reset_index(drop=True)
            write_star(
                stage / "particles.star",
                {"optics": data["optics"], "particles": keep},
                version=star_ver,
            )
        source = (
            job.optimiser_star
            if version != "3.1" and job.optimiser_star
            else job.model_star
        )
        fn_model = source.resolve().relative_to(job.project_dir.resolve()).as_posix()
        command = (
            f"`which relion_display` --gui --i {fn_model} --allow_save "
            f"--fn_parts {select_job}/particles.star --fn_imgs {select_job}/class_averages.star "
            f"--pipeline_control {select_job}/"
        )
        write_job_files(
            stage,
            select_job,
            "relion.select.interactive",
            version,
            {"fn_model": fn_model, "do_recenter": "No", "do_regroup": "No"},
            command,
        )
    return out_dir / "backup_selection.star"


#: RELION 3.1 numeric process types (pipeline_jobs.h PROC_*) by 4.0+ type label prefix.
_PROC_TYPE_31 = {
    "relion.import": 0,
    "relion.motioncorr": 1,
    "relion.ctffind": 2,
    "relion.manualpick": 3,
    "relion.autopick": 4,
    "relion.extract": 5,
    "relion.select": 7,
    "relion.class2d": 8,
    "relion.class3d": 9,
    "relion.refine3d": 10,
    "relion.initialmodel": 18,
}
#: Node type labels per version: (class2d particles, class2d optimiser, particles, class averages).
_NODE_LABELS = {
    "4.0": (
        "ParticlesData.star.relion.class2d",
        "ProcessData.star.relion.optimiser.class2d",
        "ParticlesData.star.relion",
        "ImagesData.star.relion.classaverages",
    ),
    "5.0": (
        "ParticleGroupMetadata.star.relion.class2d",
        "OptimiserData.star.relion.class2d",
        "ParticleGroupMetadata.star.relion",
        "Image2DGroupMetadata.star.relion.classaverages",
    ),
}
#: RELION 3.1 numeric node types (NODE_PART_DATA, NODE_MODEL, NODE_2DREFS).
_NODE_31 = {"data": 3, "model": 8, "parts": 3, "refs": 5}
_INPUT_RE = re.compile(r"--i\s+(\S+)")


def write_default_pipeline(
    project_dir: Path, version: str, jobs: list[tuple[str, str]]
) -> Path:
    """Write the project's ``default_pipeline.star`` for finished jobs.

    Parameters
    ----------
    project_dir:
        The RELION project folder.
    version:
        ``"3.1"`` (numeric node and process types), ``"4.0"`` (type labels such as
        ``ParticlesData.star.relion``) or ``"5.0"`` (``ParticleGroupMetadata.star.relion``
        labels with a depth column, ``# version 50001``).
    jobs:
        ``(job, process type label)`` pairs, e.g. ``("Class2D/job003",
        "relion.class2d")``, ``("Select/job004", "relion.select.interactive")``. Output
        nodes come from the files in each job folder (latest Class2D iteration), input
        edges from the ``--i`` argument in the job's ``note.txt``.

    Returns
    -------
    Path
        ``project_dir / "default_pipeline.star"``.
    """
    if version not in WRITER_VERSIONS:
        raise ValueError(f"version must be one of {WRITER_VERSIONS}, got {version!r}")
    project = Path(project_dir)
    procs, nodes, in_edges, out_edges = [], {}, [], []
    for job, type_label in jobs:
        check_job(job, version)
        procs.append((job.rstrip("/") + "/", type_label))
        for node, kind in _job_outputs(project, job, type_label, version):
            nodes[node] = kind
            out_edges.append((job + "/", node))
        source = _job_input(project / job)
        if source is not None:
            nodes.setdefault(
                source,
                "model"
                if source.endswith("_model.star")
                else "opt"
                if source.endswith("_optimiser.star")
                else "parts",
            )
            in_edges.append((source, job + "/"))
    counter = max((int(j.split("/job")[1]) for j, _ in jobs), default=0) + 1
    blocks = _pipeline_blocks(version, counter, procs, nodes, in_edges, out_edges)
    path = project / "default_pipeline.star"
    write_star(path, blocks, version=STAR_VERSION[version])
    return path


def _job_outputs(
    project: Path, job: str, type_label: str, version: str
) -> list[tuple[str, str]]:
    """(node name, kind) of a job's outputs; kind: data, opt, model, parts, refs."""
    folder = project / job
    if type_label.startswith("relion.class2d"):
        its = sorted(
            int(m[1])
            for p in folder.glob("run_it*_data.star")
            if (m := re.match(r"run_it(\d+)_data", p.name))
        )
        stem = f"{job}/run_it{its[-1] if its else 25:03d}"
        third = (
            (f"{stem}_model.star", "model")
            if version == "3.1"
            else (f"{stem}_optimiser.star", "opt")
        )
        return [(f"{stem}_data.star", "data"), third]
    if type_label.startswith("relion.select"):
        return [
            (f"{job}/particles.star", "parts"),
            (f"{job}/class_averages.star", "refs"),
        ]
    if type_label.startswith("relion.extract"):
        return [(f"{job}/particles.star", "parts")]
    return []


def _job_input(folder: Path) -> str | None:
    note = folder / "note.txt"
    if not note.is_file():
        return None
    found = _INPUT_RE.findall(note.read_text(errors="replace"))
    return found[-1] if found else None


def _pipeline_blocks(
    version: str,
    counter: int,
    procs: list[tuple[str, str]],
    nodes: dict[str, str],
    in_edges: list[tuple[str, str]],
    out_edges: list[tuple[str, str]],
) -> dict[str, Any]:
    if version == "3.1":
        processes = pd.DataFrame(
            {
                "rlnPipeLineProcessName": [p for p, _ in procs],
                "rlnPipeLineProcessAlias": ["None"] * len(procs),
                "rlnPipeLineProcessType": [
                    _PROC_TYPE_31.get(".".join(t.split(".")[:2]), 99) for _, t in procs
                ],
                "rlnPipeLineProcessStatus": [2] * len(procs),
            }
        )
        node_table = pd.DataFrame(
            {
                "rlnPipeLineNodeName": list(nodes),
                "rlnPipeLineNodeType": [_NODE_31.get(k, 9) for k in nodes.values()],
            }
        )
    else:
        c2d_data, c2d_opt, parts, refs = _NODE_LABELS[version]
        label = {
            "data": c2d_data,
            "opt": c2d_opt,
            "parts": parts,
            "refs": refs,
            "model": c2d_opt,
        }
        processes = pd.DataFrame(
            {
                "rlnPipeLineProcessName": [p for p, _ in procs],
                "rlnPipeLineProcessAlias": ["None"] * len(procs),
                "rlnPipeLineProcessTypeLabel": [t for _, t in procs],
                "rlnPipeLineProcessStatusLabel": ["Succeeded"] * len(procs),
            }
        )
        node_table = pd.DataFrame(
            {
                "rlnPipeLineNodeName": list(nodes),
                "rlnPipeLineNodeTypeLabel": [label[k] for k in nodes.values()],
            }
        )
        if version == "5.0":
            node_table["rlnPipeLineNodeTypeLabelDepth"] = 1
    return {
        "pipeline_general": {"rlnPipeLineJobCounter": counter},
        "pipeline_processes": processes,
        "pipeline_nodes": node_table,
        "pipeline_input_edges": pd.DataFrame(
            {
                "rlnPipeLineEdgeFromNode": [a for a, _ in in_edges],
                "rlnPipeLineEdgeProcess": [b for _, b in in_edges],
            }
        ),
        "pipeline_output_edges": pd.DataFrame(
            {
                "rlnPipeLineEdgeProcess": [a for a, _ in out_edges],
                "rlnPipeLineEdgeToNode": [b for _, b in out_edges],
            }
        ),
    }
