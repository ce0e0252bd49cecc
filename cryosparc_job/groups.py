"""cryoSPARC result-group files (``.csg``): what an "Import Result Group" job reads to bring
``.cs`` outputs written outside cryoSPARC into a project.

A group file is YAML naming the output (``group``: name, type, title, description) and, per
slot (``results``), the ``.cs`` file holding it (``metafile``, ``>`` meaning "beside this
file"), its row count and its type (``<group type>.<slot>``), as cryoSPARC writes them in
job folders and exports::

    created: 2026-12-02 12:00:00.000000
    group: {description: ..., name: particles_selected, title: ..., type: particle}
    results:
      blob: {metafile: '>particles_selected.cs', num_items: 120, type: particle.blob}
      ctf: {metafile: '>J43_passthrough_particles_selected.cs', num_items: 120, ...}
    version: v5.0.0

``version`` is the cryoSPARC version of a group file found in the source job folder, else
that of the installed cryosparc-tools (whose major.minor follows the server's).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from cryosparc.dataset import Dataset

_TITLES = {
    "particles_selected": "Particles selected",
    "particles_excluded": "Particles excluded",
    "templates_selected": "Templates selected",
    "templates_excluded": "Templates excluded",
}
_VERSION = re.compile(r"^version:\s*'?(v[\w.+-]+)'?\s*$", re.MULTILINE)


def group_file_name(name: str) -> str:
    """The group file of output ``name`` (``particles_selected.csg``)."""
    return f"{name}.csg"


def cryosparc_version(job_dir: Path | None = None) -> str:
    """The ``version`` to write: from a ``.csg`` in ``job_dir`` when one names it, else
    ``v`` + the installed cryosparc-tools version."""
    if job_dir is not None and job_dir.is_dir():
        for csg in sorted(job_dir.glob("*.csg")):
            try:
                found = _VERSION.search(csg.read_text(errors="replace"))
            except OSError:
                continue
            if found:
                return found[1]
    return "v" + metadata.version("cryosparc-tools")


def group_file_text(
    name: str,
    group_type: str,
    files: Mapping[str, Dataset],
    *,
    version: str,
    description: str = "",
    created: datetime.datetime | None = None,
) -> str:
    """The YAML text of output ``name``'s group file.

    Parameters
    ----------
    name, group_type:
        Output name (``particles_selected``) and type (``particle``, ``template``).
    files:
        ``.cs`` file name (beside the group file) -> the dataset written there; each of
        its slots (field prefixes other than ``uid``) is listed once, first file first.
    version:
        cryoSPARC version to record (:func:`cryosparc_version`).
    description:
        Shown by cryoSPARC with the imported group.
    created:
        Time stamp (now when None).
    """
    results: dict[str, dict[str, object]] = {}
    for file_name, dset in files.items():
        for slot in dset.prefixes():
            if slot and slot != "uid" and slot not in results:
                results[slot] = {
                    "metafile": f">{file_name}",
                    "num_items": len(dset),
                    "type": f"{group_type}.{slot}",
                }
    if not results:
        raise ValueError(f"group {name}: no slots to list")
    when = created or datetime.datetime.now()
    title = _TITLES.get(name, name.replace("_", " ").capitalize())
    lines = [
        f"created: {when.strftime('%Y-%m-%d %H:%M:%S.%f')}",
        "group:",
        f"  description: {_quoted(description)}",
        f"  name: {_quoted(name)}",
        f"  title: {_quoted(title)}",
        f"  type: {_quoted(group_type)}",
        "results:",
    ]
    for slot in sorted(results):
        entry = results[slot]
        lines += [
            f"  {slot}:",
            f"    metafile: {_quoted(str(entry['metafile']))}",
            f"    num_items: {entry['num_items']}",
            f"    type: {_quoted(str(entry['type']))}",
        ]
    lines.append(f"version: {_quoted(version)}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """A YAML single-quoted scalar (quotes doubled), as cryoSPARC quotes metafiles."""
    return "'" + text.replace("'", "''") + "'"
