"""bench_relion_job runs the whole RELION External job end to end on a small generated
project and prints one line per box; the 5 s verdict is printed only for 200 classes."""

from __future__ import annotations

import re

import pytest
from support.benchmarks import load_benchmark


def test_bench_relion_job_times_a_small_job(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_benchmark("bench_relion_job", monkeypatch)
    argv = ["--classes", "8", "--boxes", "64", "--repeats", "2"]
    assert module.main([*argv, "--max-particles", "2600"]) == 0
    out = capsys.readouterr().out
    assert "8 generated classes" in out and "target" not in out
    row = re.search(
        r"^\s+64\s+([\d,]+)\s+\d+ MB\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+) MiB\s*$",
        out,
        re.MULTILINE,
    )
    assert row is not None, out
    particles = int(row.group(1).replace(",", ""))
    assert 8 * 2500 <= particles <= 8 * 2600
    walls = sorted(float(row.group(i)) for i in (2, 3))
    assert float(row.group(4)) == pytest.approx(sum(walls) / 2, abs=0.01)
    assert 0 < walls[0] and int(row.group(5)) > 50  # a python process with torch loaded
