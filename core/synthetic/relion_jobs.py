"""Write realistic RELION Class2D job folders, for the synthetic generator and round trips.

A written job has what a real EM run leaves in ``Class2D/jobNNN/``:
``run_itNNN_{data,model,optimiser,sampling}.star`` (column sets of RELION 3.1/4.0/5.0 as
written by ``src/ml_model.cpp`` and ``src/ml_optimiser.cpp``), the float32
``run_itNNN_classes.mrcs`` with its pixel size, ``note.txt``, ``job.star`` (4.0/5.0) and
``RELION_JOB_EXIT_SUCCESS``. Select jobs and ``default_pipeline.star`` are written by
:mod:`cryodiscovery.core.synthetic.relion_pipeline`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.io.relion_class2d import RelionClass2DJob, read_relion_class2d
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.io.star_tables import write_star
from cryodiscovery.core.outputs import staged_outputs
from cryodiscovery.core.synthetic.relion_pipeline import (
    STAR_VERSION,
    check_job,
    write_job_files,
)

log = logging.getLogger(__name__)


def write_relion_class2d(
    classes: ClassAverages,
    project_dir: Path,
    job: str = "Class2D/job001",
    *,
    iteration: int = 25,
    version: str = "5.0",
    seed: int = 0,
) -> RelionClass2DJob:
    """Write ``classes`` as one EM iteration of a RELION Class2D job.

    Parameters
    ----------
    classes:
        ``(n, h, w)`` class averages with a pixel size and finite ``particle_count``
        (the number of particles in data.star per class); other metadata NaN is written
        as RELION does for empty classes (999 accuracies, ``inf`` resolution).
    project_dir:
        The RELION project folder (created); the job goes to ``project_dir / job``.
    job, iteration, version:
        ``"Class2D/jobNNN"``, the ``run_itNNN`` number, ``"3.1"``/``"4.0"``/``"5.0"``.
    seed:
        Seed for the particle-level columns (coordinates, defocus, angles...).

    Returns
    -------
    RelionClass2DJob
        The job as read back, with the labels and kinds of ``classes``.
    """
    check_job(job, version)
    if classes.pixel_size is None:
        raise ValueError("a RELION job needs a pixel size")
    counts = classes.field("particle_count")
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts % 1).any():
        raise ValueError(
            "particle_count must be a known whole number >= 0 for every class"
        )
    rng = np.random.default_rng(seed)
    job_dir = Path(project_dir) / job
    stem = f"run_it{iteration:03d}"
    with staged_outputs(job_dir) as stage:
        write_stack(stage / f"{stem}_classes.mrcs", classes.images, classes.pixel_size)
        optics, particles, n_groups = _particle_tables(
            classes, counts.astype(np.int64), rng, version
        )
        star_ver = STAR_VERSION[version]
        write_star(
            stage / f"{stem}_data.star",
            {"optics": optics, "particles": particles},
            version=star_ver,
        )
        write_star(
            stage / f"{stem}_model.star",
            _model_blocks(classes, job, stem, n_groups, version, rng),
            version=star_ver,
        )
        opt_comment = f"RELION optimiser; version {version}.0\n{_class2d_command(job, len(classes), iteration, classes)}"
        write_star(
            stage / f"{stem}_optimiser.star",
            _optimiser_blocks(classes, job, stem, iteration, version, seed),
            version=star_ver,
            comment=opt_comment,
        )
        write_star(
            stage / f"{stem}_sampling.star",
            {"sampling_general": _sampling_general()},
            version=star_ver,
        )
        write_job_files(
            stage,
            job,
            "relion.class2d",
            version,
            _class2d_options(len(classes), iteration),
            _class2d_command(job, len(classes), iteration, classes),
        )
    written = read_relion_class2d(job_dir / f"{stem}_model.star", Path(project_dir))
    return replace(
        written,
        classes=replace(
            written.classes, labels=classes.labels.copy(), kinds=classes.kinds
        ),
    )


def _particle_tables(
    classes: ClassAverages,
    counts: npt.NDArray[np.int64],
    rng: np.random.Generator,
    version: str,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Optics and particle tables: particles on micrographs, in micrograph order."""
    apix = float(classes.pixel_size or 1.0)
    box = classes.box_size
    n = int(counts.sum())
    optics: dict[str, list[Any]] = {
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnOpticsGroup": [1],
        "rlnMtfFileName": ["mtf_k3_standard_300kV_FL2.star"],
        "rlnMicrographOriginalPixelSize": [round(apix / max(1, round(apix / 0.83)), 4)],
        "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7],
        "rlnAmplitudeContrast": [0.1],
        "rlnImagePixelSize": [apix],
        "rlnImageSize": [box],
        "rlnImageDimensionality": [2],
    }
    if version == "5.0":
        optics["rlnCtfDataAreCtfPremultiplied"] = [0]
    per_mic = rng.integers(40, 250, size=n // 40 + 1)  # enough micrographs for n
    first = np.cumsum(per_mic) - per_mic  # row of each micrograph's first particle
    mic = np.repeat(np.arange(1, len(per_mic) + 1), per_mic)[:n]
    index_in_mic = np.arange(n) - first[mic - 1] + 1
    n_mics = int(mic.max()) if n else 1
    n_groups = max(1, min(24, n_mics // 4))
    group = (mic - 1) * n_groups // max(n_mics, 1) + 1
    defocus = rng.uniform(5000.0, 30000.0, size=n_mics + 1)[mic]
    astig = rng.uniform(50.0, 600.0, size=n_mics + 1)[mic]
    cls = rng.permutation(np.repeat(np.arange(1, len(counts) + 1), counts))
    res = classes.field("resolution_A")
    quality = np.clip(1.0 - (np.nan_to_num(res, nan=40.0) - 6.0) / 40.0, 0.05, 0.95)
    pmax = (
        np.clip(rng.beta(2.0 + 8.0 * quality[cls - 1], 3.0), 0.01, 1.0)
        if n
        else np.zeros(0)
    )
    offsets = np.arange(-3, 4) * 2.0 * apix
    # Plain object columns: pandas' own string dtype costs a conversion each way.
    image_names = list(
        map(
            "{:06d}@Extract/job005/Movies/mic_{:04d}.mrcs".format,
            index_in_mic.tolist(),
            mic.tolist(),
        )
    )
    mic_names = np.array(
        [f"MotionCorr/job002/Movies/mic_{m:04d}.mrc" for m in range(n_mics + 1)],
        dtype=object,
    )
    particles = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(box, 4096 - box, n).round(6),
            "rlnCoordinateY": rng.uniform(box, 4096 - box, n).round(6),
            "rlnClassNumber": cls,
            "rlnAutopickFigureOfMerit": rng.gamma(2.0, 0.5, n),
            "rlnAnglePsi": rng.uniform(-180.0, 180.0, n),
            "rlnImageName": pd.Series(image_names, dtype=object),
            "rlnMicrographName": pd.Series(mic_names[mic], dtype=object),
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnCtfMaxResolution": rng.uniform(2.8, 6.0, n_mics + 1)[mic],
            "rlnCtfFigureOfMerit": rng.uniform(0.08, 0.3, n_mics + 1)[mic],
            "rlnDefocusU": defocus + astig,
            "rlnDefocusV": defocus - astig,
            "rlnDefocusAngle": rng.uniform(-180.0, 180.0, n_mics + 1)[mic],
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnPhaseShift": np.zeros(n),
            "rlnGroupNumber": group,
            "rlnAngleRot": np.zeros(n),
            "rlnAngleTilt": np.zeros(n),
            "rlnOriginXAngst": rng.choice(offsets, n),
            "rlnOriginYAngst": rng.choice(offsets, n),
            "rlnNormCorrection": rng.normal(0.85, 0.04, n),
            "rlnLogLikeliContribution": rng.normal(9850.0, 60.0, n),
            "rlnMaxValueProbDistribution": pmax,
            "rlnNrOfSignificantSamples": np.maximum(
                1, rng.geometric(np.clip(pmax, 0.05, 1.0))
            ),
        }
    )
    return pd.DataFrame(optics), particles, n_groups


def _model_blocks(
    classes: ClassAverages,
    job: str,
    stem: str,
    n_groups: int,
    version: str,
    rng: np.random.Generator,
) -> dict[str, Any]:
    n, box, apix = len(classes), classes.box_size, float(classes.pixel_size or 1.0)
    counts = classes.field("particle_count")
    dist = classes.field("class_distribution")
    dist = np.where(np.isfinite(dist), dist, counts / max(counts.sum(), 1.0))
    res = classes.field("resolution_A")
    best = (
        float(np.nanmin(res))
        if np.isfinite(res).any()
        else 2.0 * apix * box / (box - 2)
    )
    general: dict[str, Any] = {
        "rlnReferenceDimensionality": 2,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": box,
        "rlnCurrentResolution": best,
        "rlnCurrentImageSize": box - box % 2,
        "rlnPaddingFactor": 2.0,
        "rlnIsHelix": 0,
        "rlnFourierSpaceInterpolator": 1,
        "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": apix,
        "rlnNrClasses": n,
        "rlnNrBodies": 1,
        "rlnNrGroups": n_groups,
    }
    if version != "3.1":
        general["rlnNrOpticsGroups"] = 1
    general.update(
        {
            "rlnTau2FudgeFactor": 2.0,
            "rlnNormCorrectionAverage": 0.85,
            "rlnSigmaOffsetsAngst": 3.0 * apix,
            "rlnOrientationalPriorMode": 0,
            "rlnSigmaPriorRotAngle": 0.0,
            "rlnSigmaPriorTiltAngle": 0.0,
            "rlnSigmaPriorPsiAngle": 0.0,
            "rlnLogLikelihood": 9.3e7,
            "rlnAveragePmax": 0.8,
        }
    )
    acc_rot = classes.field("accuracy_rotation_deg")
    acc_tr = classes.field("accuracy_translation_A")
    table = pd.DataFrame(
        {
            "rlnReferenceImage": [
                f"{k:06d}@{job}/{stem}_classes.mrcs" for k in range(1, n + 1)
            ],
            "rlnClassDistribution": dist,
            "rlnAccuracyRotations": np.where(np.isfinite(acc_rot), acc_rot, 999.0),
            "rlnAccuracyTranslationsAngst": np.where(
                np.isfinite(acc_tr), acc_tr, 999.0
            ),
            "rlnEstimatedResolution": np.where(np.isfinite(res), res, np.inf),
            "rlnOverallFourierCompleteness": classes.field("fourier_completeness"),
            "rlnClassPriorOffsetX": rng.normal(0.0, 0.05, n),
            "rlnClassPriorOffsetY": rng.normal(0.0, 0.05, n),
        }
    )
    blocks: dict[str, Any] = {"model_general": general, "model_classes": table}
    for k in range(n):
        blocks[f"model_class_{k + 1}"] = _class_spectrum(box, apix, float(res[k]))
    blocks["model_groups"] = pd.DataFrame(
        {
            "rlnGroupNumber": np.arange(1, n_groups + 1),
            "rlnGroupName": [f"group_{g:02d}" for g in range(1, n_groups + 1)],
            "rlnGroupNrParticles": np.diff(
                np.linspace(0, counts.sum(), n_groups + 1).astype(np.int64)
            ),
            "rlnGroupScaleCorrection": rng.normal(1.0, 0.08, n_groups),
        }
    )
    return blocks


def _class_spectrum(box: int, apix: float, resolution: float) -> pd.DataFrame:
    """Per-class spectra; the SSNR crosses 1 at the class's estimated resolution."""
    shells = np.arange(box // 2 + 1)
    freq = shells / (box * apix)
    res = resolution if np.isfinite(resolution) else 2.0 * apix * 20
    ssnr = 150.0 * np.exp(-np.log(150.0) * freq * res)
    tau2 = 0.04 * np.exp(-freq * 60.0)
    with np.errstate(divide="ignore"):
        angstrom = np.where(freq > 0, 1.0 / np.where(freq > 0, freq, 1.0), 999.0)
    return pd.DataFrame(
        {
            "rlnSpectralIndex": shells,
            "rlnResolution": freq,
            "rlnAngstromResolution": angstrom,
            "rlnSsnrMap": ssnr,
            "rlnGoldStandardFsc": np.zeros_like(freq),
            "rlnFourierCompleteness": (ssnr > 1.0).astype(np.float64),
            "rlnReferenceSigma2": tau2 / np.maximum(ssnr, 1e-6),
            "rlnReferenceTau2": tau2,
            "rlnSpectralOrientabilityContribution": np.zeros_like(freq),
        }
    )


def _optimiser_blocks(
    classes: ClassAverages, job: str, stem: str, iteration: int, version: str, seed: int
) -> dict[str, Any]:
    diameter = round(0.8 * classes.box_size * float(classes.pixel_size or 1.0))
    general: dict[str, Any] = {
        "rlnOutputRootName": f"{job}/run",
        "rlnModelStarFile": f"{job}/{stem}_model.star",
        "rlnExperimentalDataStarFile": f"{job}/{stem}_data.star",
        "rlnOrientSamplingStarFile": f"{job}/{stem}_sampling.star",
        "rlnCurrentIteration": iteration,
        "rlnNumberOfIterations": iteration,
        "rlnDoSplitRandomHalves": 0,
        "rlnJoinHalvesUntilThisResolution": -1.0,
        "rlnAdaptiveOversampleOrder": 1,
        "rlnAdaptiveOversampleFraction": 0.999,
        "rlnRandomSeed": 1_600_000_000 + seed,
        "rlnParticleDiameter": float(diameter),
        "rlnWidthMaskEdge": 5,
        "rlnDoZeroMask": 1,
        "rlnDoSolventFlattening": 1,
        "rlnSolventMaskName": "None",
        "rlnMaximumCoarseImageSize": -1,
        "rlnHighresLimitExpectation": -1.0,
        "rlnIncrementImageSize": 10,
        "rlnDoMapEstimation": 1,
        "rlnDoAutoRefine": 0,
        "rlnDoCorrectCtf": 1,
        "rlnDoIgnoreCtfUntilFirstPeak": 0,
        "rlnDoCorrectNorm": 1,
        "rlnDoCorrectScale": 1,
        "rlnHasConverged": 0,
        "rlnChangesOptimalOffsets": 0.9,
        "rlnChangesOptimalOrientations": 3.1,
        "rlnChangesOptimalClasses": 0.02,
        "rlnMaxNumberOfPooledParticles": 30,
    }
    if version != "3.1":
        general.update(
            {
                "rlnDoGradientRefine": 0,
                "rlnDoStochasticGradientDescent": 0,
                "rlnGradEmIters": 0,
                "rlnSgdClassInactivityThreshold": 0.0,
            }
        )
    return {"optimiser_general": general}


def _sampling_general() -> dict[str, Any]:
    return {
        "rlnIs3DSampling": 0,
        "rlnIs3DTranslationalSampling": 0,
        "rlnHealpixOrder": 0,
        "rlnPsiStep": 6.0,
        "rlnOffsetRange": 5.0,
        "rlnOffsetStep": 2.0,
    }


def _class2d_command(job: str, n: int, iteration: int, classes: ClassAverages) -> str:
    diameter = round(0.8 * classes.box_size * float(classes.pixel_size or 1.0))
    return (
        f"`which relion_refine_mpi` --o {job}/run --i Extract/job005/particles.star "
        f"--dont_combine_weights_via_disc --preread_images --pool 30 --pad 2 --ctf "
        f"--iter {iteration} --tau2_fudge 2 --particle_diameter {diameter} --K {n} "
        f"--flatten_solvent --zero_mask --center_classes --oversampling 1 --psi_step 12 "
        f'--offset_range 5 --offset_step 2 --norm --scale --j 6 --gpu "" '
        f"--pipeline_control {job}/"
    )


def _class2d_options(n: int, iteration: int) -> dict[str, str]:
    return {
        "fn_img": "Extract/job005/particles.star",
        "nr_classes": str(n),
        "do_em": "Yes",
        "nr_iter_em": str(iteration),
        "do_grad": "No",
        "tau_fudge": "2",
        "do_ctf_correction": "Yes",
        "do_zero_mask": "Yes",
        "psi_sampling": "6",
        "offset_range": "5",
        "offset_step": "1",
    }
