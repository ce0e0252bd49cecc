"""Output nodes of the job (``RELION_OUTPUT_NODES.star``) in the running RELION's dialect,
and detection of that version from the project's ``default_pipeline.star``.

When an External job ends with success, RELION reads table ``data_output_nodes`` of
``RELION_OUTPUT_NODES.star`` in the job folder and adds each node to the pipeline
(``PipeLine::getOutputNodesFromStarFile``). RELION 4.0 and 5.0 read a node type *label*
(``_rlnPipeLineNodeTypeLabel``) and the two versions name the same kind of node
differently; RELION 3.1 reads an integer (``_rlnPipeLineNodeType``). A label of the wrong
version is accepted silently but the node then does not appear as an input choice of the
next job, so the version matters.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.star_tables import write_star

log = logging.getLogger(__name__)

OUTPUT_NODES_FILE = "RELION_OUTPUT_NODES.star"
VERSIONS: tuple[str, ...] = ("3.1", "4.0", "5.0")
#: ``# version`` number RELION writes in its STAR files, per RELION version.
STAR_VERSION: dict[str, int] = {"3.1": 30001, "4.0": 30001, "5.0": 50001}

#: Node kinds this job writes, per RELION version: the labels RELION's own Select job
#: gives its outputs (``LABEL_SELECT_PARTS``, ``LABEL_SELECT_CLAVS`` in
#: ``src/pipeline_jobs.h`` of 4.0.x and 5.0.x) and, for 3.1, the integer node types
#: (``NODE_PART_DATA`` = 3, ``NODE_2DREFS`` = 5).
NODE_TYPES: dict[str, dict[str, str | int]] = {
    "5.0": {
        "particles": "ParticleGroupMetadata.star.relion",
        "class_averages": "Image2DGroupMetadata.star.relion.classaverages",
    },
    "4.0": {
        "particles": "ParticlesData.star.relion",
        "class_averages": "ImagesData.star.relion.classaverages",
    },
    "3.1": {"particles": 3, "class_averages": 5},
}

_VERSION_LINE = re.compile(r"^#\s*version\s+(\d+)", re.MULTILINE)


def normalise_version(text: str) -> str:
    """Map a user's version string (``"5"``, ``"4.0.1"``, ``"3.1"``) to a key of
    :data:`NODE_TYPES`; raise :class:`InputError` for anything else."""
    match = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:\.\d+)?\s*", text)
    major = int(match.group(1)) if match else -1
    if major in (4, 5):
        return f"{major}.0"
    if major == 3 and match is not None and (match.group(2) or "1") == "1":
        return "3.1"
    raise InputError(
        None, f"--relion_version {text!r}: expected one of {', '.join(VERSIONS)}"
    )


def version_from_pipeline(path: Path) -> str | None:
    """RELION version that wrote a ``default_pipeline.star``, or None if it cannot tell.

    RELION 5.0 writes its tables with ``# version 50001``; 4.0 and 3.1 both write
    ``# version 30001``, 4.0 with string node labels (``_rlnPipeLineNodeTypeLabel``) and
    3.1 with integer node types (``_rlnPipeLineNodeType``).
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        log.warning("cannot read %s (%s)", path, err.strerror)
        return None
    versions = [int(v) for v in _VERSION_LINE.findall(text)]
    if versions and max(versions) >= 50001:
        return "5.0"
    if "_rlnPipeLineNodeTypeLabel" in text:
        return "4.0"
    if re.search(r"^_rlnPipeLineNodeType\b", text, re.MULTILINE):
        return "3.1"
    return None


def find_pipeline(project_dir: Path, data_star: Path) -> Path | None:
    """The project's ``default_pipeline.star``: in ``project_dir`` (RELION runs jobs from
    the project folder), else in a parent folder of ``data_star``."""
    candidates = [project_dir, *Path(data_star).resolve().parents]
    for folder in candidates:
        path = folder / "default_pipeline.star"
        if path.is_file():
            return path
    return None


def detect_version(
    project_dir: Path,
    data_star: Path,
    *,
    override: str | None = None,
    fallback: str | None = None,
) -> tuple[str, str]:
    """The RELION version whose node labels to write, and how it was decided.

    Parameters
    ----------
    project_dir:
        RELION project folder (the working folder RELION starts the job in).
    data_star:
        The input ``run_itNNN_data.star``, to find the project when it is elsewhere.
    override:
        ``--relion_version`` as given, or None.
    fallback:
        A guess from the Class2D files (columns), used when there is no pipeline.

    Returns
    -------
    (version, source):
        ``version`` is a key of :data:`NODE_TYPES`; ``source`` says where it came from,
        for the log.
    """
    if override:
        return normalise_version(override), "--relion_version"
    pipeline = find_pipeline(project_dir, data_star)
    if pipeline is not None:
        version = version_from_pipeline(pipeline)
        if version is not None:
            return version, str(pipeline)
        log.warning("cannot tell the RELION version from %s", pipeline)
    if fallback in NODE_TYPES:
        return str(fallback), "the Class2D STAR files; no default_pipeline.star"
    return "5.0", "the default; no default_pipeline.star, set --relion_version"


def node_table(nodes: dict[str, str], version: str) -> pd.DataFrame:
    """The ``output_nodes`` table for ``nodes`` (kind -> node name) in ``version``'s
    dialect; ``kind`` is a key of ``NODE_TYPES[version]``."""
    if version not in NODE_TYPES:
        raise ValueError(f"unknown RELION version {version!r}")
    types = NODE_TYPES[version]
    unknown = set(nodes) - set(types)
    if unknown:
        raise ValueError(f"unknown node kinds {sorted(unknown)}")
    column = "rlnPipeLineNodeType" if version == "3.1" else "rlnPipeLineNodeTypeLabel"
    return pd.DataFrame(
        {
            "rlnPipeLineNodeName": list(nodes.values()),
            column: [types[kind] for kind in nodes],
        }
    )


def write_output_nodes(out_dir: Path, nodes: dict[str, str], version: str) -> Path:
    """Write ``out_dir/RELION_OUTPUT_NODES.star`` (atomically).

    Parameters
    ----------
    out_dir:
        Folder to write in (the job folder or a staging folder inside it).
    nodes:
        Node kind -> node name as RELION records it: the path relative to the project
        folder, e.g. ``{"particles": "External/job010/particles.star"}``.
    version:
        Key of :data:`NODE_TYPES`.
    """
    path = Path(out_dir) / OUTPUT_NODES_FILE
    table = node_table(nodes, version)
    write_star(path, {"output_nodes": table}, version=STAR_VERSION[version])
    return path
