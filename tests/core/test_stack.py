"""MRC stacks: round trips, pixel-size rules and every kind of bad file."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.stack import read_mrc_images, read_stack, write_stack


def _raw_mrc(path: Path, data: np.ndarray, voxel: float = 1.0) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel
    return path


def test_round_trip_keeps_images_and_pixel_size(tmp_path: Path) -> None:
    images = np.random.default_rng(0).normal(size=(7, 24, 24)).astype(np.float32)
    path = tmp_path / "sub" / "classes.mrcs"
    write_stack(path, images, 1.75)
    classes = read_stack(path)
    np.testing.assert_array_equal(classes.images, images)
    assert classes.pixel_size == pytest.approx(1.75)
    np.testing.assert_array_equal(classes.class_numbers, np.arange(1, 8))
    assert not classes.has_metadata
    assert (classes.labels == -1).all()
    assert classes.provenance.format == "mrcs"
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 2
        assert mrc.is_image_stack()
    assert [p.name for p in path.parent.iterdir()] == ["classes.mrcs"]  # no temp left


def test_pixel_size_from_angpix_header_or_unknown(tmp_path: Path) -> None:
    path = tmp_path / "a.mrcs"
    write_stack(path, np.ones((2, 8, 8)), None)
    assert read_stack(path).pixel_size is None
    assert read_stack(path, angpix=3.2).pixel_size == pytest.approx(3.2)
    write_stack(path, np.ones((2, 8, 8)), 1.1)
    assert read_stack(path, angpix=2.0).pixel_size == pytest.approx(2.0)
    with pytest.raises(InputError, match="angpix"):
        read_stack(path, angpix=0.0)


def test_single_image_and_float16_and_int16_are_read(tmp_path: Path) -> None:
    one = _raw_mrc(tmp_path / "one.mrc", np.arange(64, dtype=np.float32).reshape(8, 8))
    images, voxel = read_mrc_images(one)
    assert images.shape == (1, 8, 8) and voxel == pytest.approx(1.0)
    for dtype in (np.float16, np.int16):
        path = _raw_mrc(
            tmp_path / f"{np.dtype(dtype).name}.mrcs", np.ones((3, 8, 8), dtype)
        )
        images, _ = read_mrc_images(path)
        assert images.dtype == np.float32 and images.shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "file not found"),
        (lambda p: _raw_mrc(p, np.zeros((2, 8, 8), np.int8)), "mode 0 \\(int8\\)"),
        (lambda p: _raw_mrc(p, np.zeros((2, 8, 8), np.complex64)), "complex"),
        (lambda p: _raw_mrc(p, np.zeros((0, 8, 8), np.float32)), "empty stack"),
        (lambda p: _raw_mrc(p, np.zeros((2, 8, 10), np.float32)), "10x8 pixels"),
        (lambda p: p.write_bytes(b"not an mrc file" * 10), "not a readable MRC"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.mrcs"
    make(path)
    with pytest.raises(InputError, match=message) as err:
        read_stack(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.mrcs"
    write_stack(path, np.ones((4, 16, 16)), 1.0)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="truncated"):
        read_stack(path)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's header stats
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_rejected(tmp_path: Path, bad: float) -> None:
    data = np.ones((5, 8, 8), np.float32)
    data[3, 2, 2] = bad
    path = _raw_mrc(tmp_path / "nan.mrcs", data)
    with pytest.raises(
        InputError, match="1 of 5 images contain NaN or Inf values \\(first: image 4\\)"
    ):
        read_stack(path)


def test_write_stack_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        write_stack(tmp_path / "x.mrcs", np.ones((2, 3, 4, 5)), 1.0)
    with pytest.raises(ValueError, match="positive"):
        write_stack(tmp_path / "x.mrcs", np.ones((2, 4, 4)), -1.0)
    assert not list(tmp_path.iterdir())


def test_bogus_header_is_refused_before_reading_data(tmp_path: Path) -> None:
    import tracemalloc

    path = _raw_mrc(tmp_path / "bogus.mrcs", np.zeros((2, 16, 16), np.float32))
    with open(path, "r+b") as fh:  # nz (bytes 8-11): 30,000 images of 16x16 float32
        fh.seek(8)
        fh.write(np.int32(30_000).tobytes())
    with open(path, "r+b") as fh:  # and nx, ny: 160x160, about 3 GB claimed
        fh.write(np.array([160, 160], np.int32).tobytes())
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="header describes 30000 images"):
            read_mrc_images(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6
