"""Write a simulated run as a RELION project or cryoSPARC job folders, with the ground
truth (a Select job, ``truth.csv``), a labelled montage and a run record.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.outputs import atomic_path, write_run_record
from cryodiscovery.core.synthetic.generator import SimulatedRun, SimulationConfig
from cryodiscovery.core.synthetic.montage import render_montage

log = logging.getLogger(__name__)

CLASS2D_JOB, SELECT_JOB = "Class2D/job001", "Select/job002"
CRYOSPARC_CLASS2D, CRYOSPARC_SELECT = "J1", "J2"
TRUTH_COLUMNS = ("class_number", "label", "kind", "snr", "n_particles")


def write_truth(classes: ClassAverages, snr: float, path: Path) -> Path:
    """``truth.csv``: class_number, label (1 good, 0 junk), kind, particle SNR, particles."""
    counts = classes.field("particle_count")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(TRUTH_COLUMNS)
        for i in range(len(classes)):
            writer.writerow(
                [
                    int(classes.class_numbers[i]),
                    int(classes.labels[i]),
                    classes.kinds[i],
                    f"{snr:.5g}",
                    int(counts[i]),
                ]
            )
    return Path(path)


def run_summary(run: SimulatedRun) -> dict[str, Any]:
    """What a run was made of (for run records): molecule, sampling, physics, conventions."""
    labels = run.classes.labels
    return {
        "shape": run.shape,
        "molecule": run.molecule,
        "box": run.classes.box_size,
        "pixel_size_A": run.classes.pixel_size,
        "particle_snr": run.snr,
        "mask_diameter_A": run.mask_diameter_A,
        "current_resolution_A": run.current_resolution_A,
        "n_good": int(np.sum(labels == 1)),
        "n_junk": int(np.sum(labels == 0)),
        "display": asdict(run.display),
    }


def write_relion_project(
    run: SimulatedRun, project: Path, *, version: str = "5.0", seed: int = 0
) -> dict[str, Path]:
    """A RELION project: Class2D/job001 (run_it025), Select/job002 with the true selection,
    default_pipeline.star, truth.csv and montage.png. Returns the main paths."""
    from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
    from cryodiscovery.core.synthetic.relion_pipeline import (
        write_default_pipeline,
        write_relion_selection,
    )

    job = write_relion_class2d(
        run.classes, project, CLASS2D_JOB, version=version, seed=seed
    )
    selection = write_relion_selection(job, run.classes.labels, SELECT_JOB)
    pipeline = write_default_pipeline(
        project,
        version,
        [(CLASS2D_JOB, "relion.class2d"), (SELECT_JOB, "relion.select.interactive")],
    )
    return {
        "data_star": job.data_star,
        "model_star": job.model_star,
        "selection": selection,
        "pipeline": pipeline,
        **_truth_and_montage(run, project),
    }


def write_cryosparc_project(
    run: SimulatedRun, project: Path, *, seed: int = 0
) -> dict[str, Path]:
    """cryoSPARC-style folders: J1 (2D classification: .cs files, class-average .mrc) and
    J2 (Select 2D: templates_selected/excluded), truth.csv and montage.png."""
    from cryodiscovery.core.synthetic.cryosparc_jobs import (
        write_cryosparc_class2d,
        write_cryosparc_selection,
    )

    job = write_cryosparc_class2d(run.classes, project / CRYOSPARC_CLASS2D, seed=seed)
    selection = write_cryosparc_selection(
        job, run.classes.labels, project / CRYOSPARC_SELECT
    )
    return {
        "job_dir": job.job_dir,
        "selection": selection,
        **_truth_and_montage(run, project),
    }


def _truth_and_montage(run: SimulatedRun, out: Path) -> dict[str, Path]:
    c = run.classes
    title = (
        f"{run.shape} ({run.molecule}), box {c.box_size}, {c.pixel_size:.2f} Å/px, "
        f"particle SNR {run.snr:.3f}: {int(np.sum(c.labels == 1))} good, "
        f"{int(np.sum(c.labels == 0))} junk"
    )
    return {
        "truth": write_truth(c, run.snr, out / "truth.csv"),
        "montage": render_montage(c, out / "montage.png", title=title),
    }


def write_record(
    out: Path,
    run: SimulatedRun,
    config: SimulationConfig,
    argv: list[str] | None,
    seed: int,
) -> Path:
    """``run_record.json`` with the configuration, seed and what the run was made of."""
    settings = {"seed": seed, "simulation": asdict(config), "run": run_summary(run)}
    return Path(write_run_record(out, command="simulate", argv=argv, config=settings))
