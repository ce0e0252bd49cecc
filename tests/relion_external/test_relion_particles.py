"""The streaming particles.star filter: RELION's Select output, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile
from cryodiscovery.core.errors import InputError
from cryodiscovery.relion_external import particles
from cryodiscovery.relion_external.particles import filter_particles

DATA_STAR = "Class2D/job001/run_it025_data.star"

HANDMADE = b"""
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
opticsGroup1 1
\x20

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnClassNumber #3
_rlnDefocusU #4
000001@Extract/job005/a.mrcs   "Movies/mic one.mrc"     2   1.000000e+04
000002@Extract/job005/a.mrcs   Movies/mic_2.mrc         1   12000.50
000003@Extract/job005/a.mrcs   Movies/mic_2.mrc        02   13000
000004@Extract/job005/a.mrcs\tMovies/mic_3.mrc\t3.000000\t9000
000005@Extract/job005/a.mrcs   'Movies/mic 4.mrc'       1   8000
\x20

# version 30001

data_trailing_table

loop_
_rlnClassNumber #1
_rlnSomething #2
1 x
2 y
"""


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_generated_data_star_keeps_optics_columns_and_order(relion_project, tmp_path):
    project = relion_project(version="5.0", n=10)
    source = project / DATA_STAR
    dest = tmp_path / "particles.star"
    keep = [1, 4, 5, 9]
    result = filter_particles(source, dest, keep, max_class=10)
    before = starfile.read(source, always_dict=True)
    after = starfile.read(dest, always_dict=True)
    assert after.keys() == before.keys()
    assert after["optics"].equals(before["optics"])
    expected = before["particles"][before["particles"]["rlnClassNumber"].isin(keep)]
    assert (
        after["particles"]
        .reset_index(drop=True)
        .equals(expected.reset_index(drop=True))
    )
    counts = before["particles"]["rlnClassNumber"].value_counts()
    assert result.class_counts == {int(k): int(v) for k, v in sorted(counts.items())}
    assert result.n_read == len(before["particles"])
    assert result.n_written == len(expected) > 0


def test_lines_are_copied_byte_for_byte(tmp_path):
    source = tmp_path / "in.star"
    source.write_bytes(HANDMADE)
    dest = tmp_path / "out.star"
    result = filter_particles(source, dest, {2})
    src, out = _lines(source), _lines(dest)
    rows = [line for line in src if line.startswith(b"00000")]
    kept = [rows[0], rows[2]]  # class "2" (quoted micrograph name) and "02"
    header = src[: src.index(rows[0])]
    assert out[: len(header)] == header
    assert out[len(header) : len(header) + 2] == kept
    # the table after the particles, which also has rlnClassNumber, is filtered too
    assert out[len(header) + 2 :] == [
        line for line in src[src.index(rows[-1]) + 1 :] if line != b"1 x\n"
    ]
    assert result.class_counts == {1: 3, 2: 3, 3: 1}
    assert (result.n_read, result.n_written) == (7, 3)


def test_windows_line_ends_are_kept(tmp_path):
    source = tmp_path / "in.star"
    source.write_bytes(HANDMADE.replace(b"\n", b"\r\n"))
    filter_particles(source, tmp_path / "out.star", {1})
    out = (tmp_path / "out.star").read_bytes()
    assert out.count(b"\r\n") == out.count(b"\n")
    assert b"000002@" in out and b"000005@" in out and b"000001@" not in out


def test_legacy_unnamed_table_is_filtered(tmp_path):
    source = tmp_path / "old.star"
    source.write_bytes(
        b"\ndata_\n\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\na 1\nb 2\nc 1\n"
    )
    result = filter_particles(source, tmp_path / "out.star", [1])
    assert (
        (tmp_path / "out.star").read_bytes().endswith(b"_rlnClassNumber #2\na 1\nc 1\n")
    )
    assert result.n_written == 2


def test_abort_is_checked_while_streaming(tmp_path, monkeypatch):
    monkeypatch.setattr(particles, "CHUNK_BYTES", 100)
    source = tmp_path / "in.star"
    source.write_bytes(HANDMADE)
    calls = []

    def abort() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        filter_particles(source, tmp_path / "out.star", {1}, abort_check=abort)
    assert len(calls) == 2


def test_small_chunks_give_the_same_file(tmp_path, monkeypatch):
    source = tmp_path / "in.star"
    source.write_bytes(HANDMADE)
    whole = filter_particles(source, tmp_path / "whole.star", {1, 3})
    monkeypatch.setattr(particles, "CHUNK_BYTES", 7)  # shorter than most lines
    pieces = filter_particles(source, tmp_path / "pieces.star", {1, 3})
    assert (tmp_path / "pieces.star").read_bytes() == (
        tmp_path / "whole.star"
    ).read_bytes()
    assert pieces == whole


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"data_particles\nloop_\n_rlnImageName #1\na\n", "no particle table"),
        (b"data_optics\nloop_\n_rlnClassNumber #1\n1\n", "no particle table"),
        (
            b"data_particles\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\na x\n",
            "line 5",
        ),
        (
            b"data_particles\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\na 0\n",
            "not a class",
        ),
        (
            b"data_particles\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\na 1\nb\n",
            "too few",
        ),
        (
            b"data_particles\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\na 1.5\n",
            "not a class",
        ),
        (
            b"data_particles\nloop_\n_rlnImageName #1\n_rlnClassNumber #2\na 11\n",
            "only 10",
        ),
    ],
)
def test_bad_files_are_input_errors(tmp_path, body, message):
    source = tmp_path / "bad.star"
    source.write_bytes(body)
    with pytest.raises(InputError, match=message) as info:
        filter_particles(source, tmp_path / "out.star", {1}, max_class=10)
    assert str(source) in str(info.value)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        filter_particles(tmp_path / "nope.star", tmp_path / "out.star", {1})


def test_matches_a_plain_filter_on_many_particles(tmp_path):
    rng = np.random.default_rng(1)
    classes = rng.integers(1, 51, 20_000)
    rows = "".join(
        f"{i:06d}@s.mrcs {c} {rng.random():.6f}\n" for i, c in enumerate(classes)
    )
    header = "data_optics\nloop_\n_rlnOpticsGroup #1\n1\n\ndata_particles\nloop_\n"
    header += "_rlnImageName #1\n_rlnClassNumber #2\n_rlnAnglePsi #3\n"
    source = tmp_path / "many.star"
    source.write_text(header + rows)
    keep = set(range(1, 51, 3))
    result = filter_particles(source, tmp_path / "out.star", keep, max_class=50)
    expected = [
        r + "\n" for r, c in zip(rows.splitlines(), classes, strict=True) if c in keep
    ]
    assert (tmp_path / "out.star").read_text() == header + "".join(expected)
    assert result.n_written == len(expected)
    assert sum(result.class_counts.values()) == len(classes)
