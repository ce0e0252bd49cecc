"""The built wheel holds every module, the shipped weights, the RELION job.star template
and the review page template, all under the cryodiscovery namespace (nothing installs a
bare `core` package)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("core", "relion_external", "cryosparc_job", "federation")


def test_wheel_contents(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("cryodiscovery-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in TOP:
        for src in (ROOT / top).rglob("*.py"):
            rel = src.relative_to(ROOT).as_posix()
            assert f"cryodiscovery/{rel}" in names, f"{rel} missing from the wheel"
    assert not any(n.split("/")[0] in TOP for n in names)
    shipped = [n for n in names if n.startswith("cryodiscovery/core/weights/")]
    assert any(n.endswith(".pt") for n in shipped), "default model weights not shipped"
    assert any(
        n.startswith("cryodiscovery/relion_external/") and n.endswith(".star")
        for n in names
    ), "RELION job.star template not shipped"
    assert "cryodiscovery/core/report/review_template.html" in names, (
        "the review page template not shipped"
    )
