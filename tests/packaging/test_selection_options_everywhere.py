"""One set of selection options for every tool: the same bad value or combination gives
the same one-line error and exit status 2 from `score`, `evaluate`, the RELION job and
both modes of the cryoSPARC job, before any input is read or server asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryodiscovery.core import cli as core_cli
from cryodiscovery.cryosparc_job import cli as cryosparc_cli
from cryodiscovery.relion_external import cli as relion_cli
from cryodiscovery.relion_external.job import EXIT_FAILURE

# (flags of score/evaluate/cryoSPARC, RELION's --label value shapes, the error)
BAD = [
    (
        ["--threshold", "0.5", "--target-fnr", "0.05"],
        ["--threshold", "0.5", "--target_fnr", "0.05"],
        "both a threshold and a target false-negative rate given: give one of them",
    ),
    (
        ["--threshold", "1.5"],
        ["--threshold", "1.5"],
        "threshold must be in [0, 1], got 1.5",
    ),
    (
        ["--target-fnr", "1"],
        ["--target_fnr", "1"],
        "target false-negative rate must be in [0, 1), got 1.0",
    ),
    (
        ["--min-particles", "-2"],
        ["--min_particles", "-2"],
        "minimum particle count must be >= 0, got -2",
    ),
]


def _tools(tmp_path: Path, flags: list[str], relion: list[str]) -> dict[str, object]:
    """Each tool as a call returning its exit status; none of the inputs exist."""
    missing = str(tmp_path / "missing")
    job = str(tmp_path / "External" / "job010") + "/"
    return {
        "score": lambda: core_cli.main(
            ["score", missing, "--out", str(tmp_path / "o1"), *flags]
        ),
        "evaluate": lambda: core_cli.main(["evaluate", "--data", missing, *flags]),
        "relion": lambda: relion_cli.main(
            ["--o", job, "--in_parts", missing, *relion, "--j", "1"]
        ),
        "cryosparc offline": lambda: cryosparc_cli.main(
            ["--job-dir", missing, "--out", str(tmp_path / "o2"), *flags]
        ),
        "cryosparc online": lambda: cryosparc_cli.main(
            ["--url", "http://127.0.0.1:9", "--project", "P1", "--job", "J1", *flags]
        ),
    }


@pytest.mark.parametrize(("flags", "relion", "message"), BAD)
def test_same_refusal_from_every_tool(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    relion: list[str],
    message: str,
) -> None:
    for name, call in _tools(tmp_path, flags, relion).items():
        code = call()  # type: ignore[operator]
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1, (name, err)
        assert err[0].endswith(f"error: {message}"), (name, err)
    assert (tmp_path / "External" / "job010" / EXIT_FAILURE).is_file()
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
