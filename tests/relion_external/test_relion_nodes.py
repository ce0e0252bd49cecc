"""RELION_OUTPUT_NODES.star in each version's dialect, and detection of the version."""

from __future__ import annotations

from pathlib import Path

import pytest
import starfile
from cryodiscovery.core.errors import InputError
from cryodiscovery.relion_external.nodes import (
    detect_version,
    normalise_version,
    version_from_pipeline,
    write_output_nodes,
)

NODES = {
    "particles": "External/job010/particles.star",
    "class_averages": "External/job010/class_averages.star",
}
DATA_STAR = Path("Class2D/job001/run_it025_data.star")

# Labels of RELION's own Select job outputs, from src/pipeline_jobs.h of each release.
EXPECTED = {
    "5.0": (
        "rlnPipeLineNodeTypeLabel",
        [
            "ParticleGroupMetadata.star.relion",
            "Image2DGroupMetadata.star.relion.classaverages",
        ],
    ),
    "4.0": (
        "rlnPipeLineNodeTypeLabel",
        ["ParticlesData.star.relion", "ImagesData.star.relion.classaverages"],
    ),
    "3.1": ("rlnPipeLineNodeType", [3, 5]),
}


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_nodes_file_reads_back_with_the_versions_labels(tmp_path, version):
    path = write_output_nodes(tmp_path, NODES, version)
    assert path.name == "RELION_OUTPUT_NODES.star"
    table = starfile.read(path, always_dict=True)["output_nodes"]
    column, labels = EXPECTED[version]
    assert list(table.columns) == ["rlnPipeLineNodeName", column]
    assert list(table["rlnPipeLineNodeName"]) == list(NODES.values())
    assert list(table[column]) == labels
    # RELION 5.0 writes its STAR files as version 50001, earlier ones 30001
    assert f"# version {50001 if version == '5.0' else 30001}" in path.read_text()


@pytest.mark.parametrize("version", ["3.1", "4.0", "5.0"])
def test_version_is_read_from_a_projects_pipeline(relion_project, version):
    project = relion_project(version=version, n=4)
    pipeline = project / "default_pipeline.star"
    assert version_from_pipeline(pipeline) == version
    found, source = detect_version(project, project / DATA_STAR)
    assert (found, source) == (version, str(pipeline))


def test_pipeline_is_found_from_the_data_star_when_run_elsewhere(
    relion_project, tmp_path
):
    project = relion_project(version="4.0", n=4)
    found, _ = detect_version(tmp_path / "elsewhere", project / DATA_STAR)
    assert found == "4.0"


def test_override_and_fallbacks(relion_project):
    project = relion_project(version="4.0", n=4, pipeline=False)
    data = project / DATA_STAR
    assert detect_version(project, data, override="5.0.1")[0] == "5.0"
    assert detect_version(project, data, fallback="3.1") == (
        "3.1",
        "the Class2D STAR files; no default_pipeline.star",
    )
    version, source = detect_version(project, data)
    assert version == "5.0" and "--relion_version" in source


def test_unrecognisable_pipeline_falls_back(tmp_path, caplog):
    (tmp_path / "default_pipeline.star").write_text("data_pipeline_general\n")
    assert detect_version(tmp_path, tmp_path / "x.star", fallback="4.0")[0] == "4.0"
    assert "cannot tell the RELION version" in caplog.text


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("5", "5.0"),
        ("5.0", "5.0"),
        ("4.0.1", "4.0"),
        ("4", "4.0"),
        ("3.1", "3.1"),
        ("3", "3.1"),
    ],
)
def test_version_strings(text, version):
    assert normalise_version(text) == version


@pytest.mark.parametrize("text", ["3.0", "6.0", "two", ""])
def test_unsupported_version_strings(text):
    with pytest.raises(InputError, match="--relion_version"):
        normalise_version(text)


def test_unknown_node_kind_is_a_bug(tmp_path):
    with pytest.raises(ValueError, match="unknown node kinds"):
        write_output_nodes(tmp_path, {"maps": "x.mrc"}, "5.0")
