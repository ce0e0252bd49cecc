"""Outputs appear whole or not at all; every output folder gets a record."""

from __future__ import annotations

import json

import pytest
from cryodiscovery.core.outputs import (
    atomic_path,
    sha256_file,
    staged_outputs,
    write_run_record,
)


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new\n")
    assert target.read_text() == "new\n"


def test_staged_outputs_leave_nothing_on_failure(tmp_path):
    out = tmp_path / "job"
    with pytest.raises(ValueError), staged_outputs(out) as stage:
        (stage / "a.star").write_text("a")
        raise ValueError("bad input")
    assert list(out.iterdir()) == []
    with staged_outputs(out) as stage:
        (stage / "a.star").write_text("a")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.png").write_bytes(b"png")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a.star",
        "sub",
        "sub/b.png",
    ]


def test_run_record_names_version_argv_and_checksum(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    path = write_run_record(
        tmp_path,
        command="score",
        argv=["cryodiscovery", "score", "x.star"],
        config={"threshold": 0.4},
        model_checksum=sha256_file(model),
    )
    record = json.loads(path.read_text())
    assert record["argv"] == ["cryodiscovery", "score", "x.star"]
    assert record["config"] == {"threshold": 0.4}
    assert len(record["model_sha256"]) == 64
    assert record["cryodiscovery_version"]


def test_atomic_outputs_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.star") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.star").stat().st_mode & 0o777 == 0o644
