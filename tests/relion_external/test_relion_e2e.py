"""End to end, exactly as RELION runs an External job: the installed entry point started
from the project folder with RELION's argv, stdout and stderr appended to the job's run.out
and run.err; then every output is read back with starfile. One generated RELION 5.0
project, and the real RELION 3.1 tutorial STAR files when they are present."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from cryodiscovery.core.io.relion_class2d import read_relion_class2d
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.synthetic.export import write_relion_project
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run

JOB = "External/job010/"
EXE = Path(sys.executable).with_name("cryodiscovery-relion")
TUTORIAL = (
    Path(__file__).resolve().parents[3] / "shared/data/relion31_tutorial_metadata"
)

needs_exe = pytest.mark.skipif(
    not EXE.is_file(), reason="cryodiscovery-relion not installed"
)


def run_as_relion(project: Path, in_parts: str, *params: str) -> int:
    """``<exe> --o JOB --in_parts X --<label> <value>... --j 1 --pipeline_control JOB``
    with ``>> JOB/run.out 2>> JOB/run.err``, from the project folder."""
    (project / JOB).mkdir(parents=True, exist_ok=True)  # RELION makes the folder first
    argv = [str(EXE), "--o", JOB, "--in_parts", in_parts, *params, "--j", "1"]
    argv += ["--pipeline_control", JOB]
    with (
        open(project / JOB / "run.out", "ab") as out,
        open(project / JOB / "run.err", "ab") as err,
    ):
        return subprocess.run(
            argv, cwd=project, stdout=out, stderr=err, timeout=300
        ).returncode


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def check_outputs(project: Path, data_star: Path, model_star: Path) -> pd.DataFrame:
    """Read every output back and check them against each other and the inputs; return
    the scores table."""
    out = project / JOB
    markers = sorted(p.name for p in out.glob("RELION_JOB_*"))
    assert markers == ["RELION_JOB_EXIT_SUCCESS"], (out / "run.err").read_text()
    scores = pd.read_csv(out / "scores.csv")
    chosen = sorted(scores.loc[scores["selected"] == 1, "class_number"])
    assert chosen, "nothing selected"

    source = starfile.read(data_star, always_dict=True)
    result = starfile.read(out / "particles.star", always_dict=True)
    assert result.keys() == source.keys()
    assert result["optics"].equals(source["optics"])
    expected = source["particles"][source["particles"]["rlnClassNumber"].isin(chosen)]
    assert (
        result["particles"]
        .reset_index(drop=True)
        .equals(expected.reset_index(drop=True))
    )

    classes = starfile.read(out / "class_averages.star")
    model = starfile.read(model_star, read_n_blocks=2, always_dict=True)[
        "model_classes"
    ]
    assert list(classes["rlnClassNumber"]) == chosen
    assert list(classes["rlnReferenceImage"]) == [
        model["rlnReferenceImage"][c - 1] for c in chosen
    ]
    by_class = scores.set_index("class_number")["score"]
    np.testing.assert_allclose(
        classes["rlnPredictedClassScore"], by_class[chosen], atol=2e-6
    )
    for column in (
        "rlnClassDistribution",
        "rlnAccuracyRotations",
        "rlnEstimatedResolution",
    ):
        assert column in classes.columns

    backup = starfile.read(out / "backup_selection.star")
    assert len(backup) == len(model)
    assert list(np.flatnonzero(backup["rlnSelected"]) + 1) == chosen
    assert (out / "gallery.png").stat().st_size > 0
    assert not list(out.glob(".staging-*"))
    return scores


def node_table(project: Path) -> pd.DataFrame:
    nodes = starfile.read(project / JOB / "RELION_OUTPUT_NODES.star", always_dict=True)
    table = nodes["output_nodes"]
    assert list(table["rlnPipeLineNodeName"]) == [
        f"{JOB}particles.star",
        f"{JOB}class_averages.star",
    ]
    for name in table["rlnPipeLineNodeName"]:
        assert (project / name).is_file()  # node names are relative to the project
    return table


@pytest.fixture
def simulated_project(tmp_path: Path) -> Path:
    """A RELION 5.0 project from the package's simulator: Class2D/job001 with realistic
    good and junk classes, Select/job002 with the true selection, default_pipeline.star."""
    config = SimulationConfig(n_classes=12, box_sizes=(64,), particle_range=(50, 200))
    project = tmp_path / "project"
    write_relion_project(simulate_run(config, seed=3), project, version="5.0")
    return project


@needs_exe
def test_generated_relion5_project(simulated_project):
    project = simulated_project
    data = "Class2D/job001/run_it025_data.star"
    # a threshold between the 5th and 6th best scores of the shipped model, so the test
    # selects a real subset whatever that model is
    scores = np.sort(load_scorer().predict(read_relion_class2d(project / data).classes))
    threshold = float(scores[-5] + scores[-6]) / 2
    before = digests(project / "Class2D")

    assert run_as_relion(project, data, "--threshold", f"{threshold:.6f}") == 0

    table = check_outputs(
        project, project / data, project / "Class2D/job001/run_it025_model.star"
    )
    assert int(table["selected"].sum()) == 5
    assert list(node_table(project)["rlnPipeLineNodeTypeLabel"]) == [
        "ParticleGroupMetadata.star.relion",
        "Image2DGroupMetadata.star.relion.classaverages",
    ]
    log = (project / JOB / "run.out").read_text()
    for line in (
        "Reading Class2D/job001/run_it025_data.star",
        "Writing for RELION 5.0",
        "Done in",
    ):
        assert line in log
    assert (project / JOB / "run.err").read_text() == ""
    assert digests(project / "Class2D") == before


@needs_exe
@pytest.mark.skipif(
    not TUTORIAL.is_dir(), reason="RELION 3.1 tutorial files not present"
)
def test_relion31_tutorial_star_files(tmp_path):
    """Real RELION 3.1 output (beta-galactosidase tutorial, Class2D job013: 100 classes,
    9,482 particles) with a stand-in stack, since the tutorial files have no images. No
    default_pipeline.star comes with them, so the version is read from the STAR files."""
    project = tmp_path / "tutorial"
    job = project / "Class2D/job013"
    job.mkdir(parents=True)
    for name in ("run_it025_data.star", "run_it025_model.star"):
        shutil.copy(TUTORIAL / "Class2D/job013" / name, job / name)
    rng = np.random.default_rng(0)
    with mrcfile.new(job / "run_it025_classes.mrcs") as mrc:
        mrc.set_data(rng.normal(size=(100, 64, 64)).astype(np.float32))
        mrc.voxel_size = 3.54

    code = run_as_relion(
        project,
        "Class2D/job013/run_it025_data.star",
        "--threshold",
        "0",
        "--min_particles",
        "200",
    )
    assert code == 0, (project / JOB / "run.err").read_text()
    table = check_outputs(
        project, job / "run_it025_data.star", job / "run_it025_model.star"
    )
    counts = table.set_index("class_number")["particle_count"]
    assert sorted(table.loc[table["selected"] == 1, "class_number"]) == sorted(
        counts[counts >= 200].index
    )
    # RELION 3.1 reads integer node types: 3 particles, 5 2D references
    assert list(node_table(project)["rlnPipeLineNodeType"]) == [3, 5]
    assert "Writing for RELION 3.1" in (project / JOB / "run.out").read_text()
    # the particle rows are the input's lines, byte for byte and in order
    source = (job / "run_it025_data.star").read_bytes().splitlines(keepends=True)
    result = (project / JOB / "particles.star").read_bytes().splitlines(keepends=True)
    first = next(i for i, line in enumerate(source) if b"@Extract/" in line)
    assert result[:first] == source[:first]
    kept = iter(source[first:])
    assert all(line in kept for line in result[first:])  # a subsequence of the input
