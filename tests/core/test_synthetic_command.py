"""``cryodiscovery simulate``: folders that the readers read back with the true labels."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from cryodiscovery.core.commands import simulate
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import (
    read_cryosparc_class2d,
    read_cryosparc_selection,
)
from cryodiscovery.core.io.history import find_labelled_sets
from cryodiscovery.core.io.relion_class2d import (
    read_relion_class2d,
    read_relion_selection,
)
from cryodiscovery.core.synthetic.generator import simulate_run

ARGS = ["--n-classes", "12", "--seed", "4", "--box", "64", "--angpix", "3.0"]


def _run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    simulate.add_args(parser)
    args = parser.parse_args(argv)
    args._argv = argv
    return simulate.main(args)


def _truth(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_relion_project_reads_back_with_the_true_selection(tmp_path):
    out = tmp_path / "sim"
    assert _run_command(["relion", "--out", str(out), "--version", "4.0", *ARGS]) == 0
    config = simulate.config_from_args(
        argparse.Namespace(
            n_classes=12,
            box=64,
            angpix=3.0,
            snr_range=(0.01, 0.5),
            junk_fraction=0.45,
            junk_kinds=list(simulate.JUNK_KINDS),
            shapes=list(simulate.SHAPE_FAMILIES),
            no_nuisance=False,
            format="relion",
        )
    )
    expected = simulate_run(config, 4).classes
    job = read_relion_class2d(out / "Class2D/job001/run_it025_data.star")
    assert job.iteration == 25 and job.version == "4.0"
    assert np.array_equal(job.classes.images, expected.images)
    assert job.classes.pixel_size == pytest.approx(3.0)
    assert np.array_equal(
        job.classes.field("particle_count"), expected.field("particle_count")
    )
    labels = read_relion_selection(out / "Select/job002/backup_selection.star", 12)
    assert np.array_equal(labels, expected.labels)
    truth = _truth(out / "truth.csv")
    assert list(truth[0]) == ["class_number", "label", "kind", "snr", "n_particles"]
    assert [int(r["label"]) for r in truth] == list(expected.labels)
    assert tuple(r["kind"] for r in truth) == expected.kinds
    assert (out / "default_pipeline.star").is_file()
    assert (out / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "run_record.json").read_text())
    assert record["config"]["seed"] == 4 and record["config"]["run"]["box"] == 64
    sets = find_labelled_sets(out)
    assert len(sets) == 1 and np.array_equal(sets[0].labels, expected.labels)


def test_cryosparc_folders_read_back_with_the_true_selection(tmp_path):
    out = tmp_path / "cs"
    assert _run_command(["cryosparc", "--out", str(out), *ARGS, "--no-nuisance"]) == 0
    job = read_cryosparc_class2d(out / "J1")
    truth = _truth(out / "truth.csv")
    assert len(job.classes) == 12
    order = job.classes.class_numbers - 1
    labels = read_cryosparc_selection(out / "J2", n_classes=12)
    assert list(labels) == [int(r["label"]) for r in truth]
    counts = job.classes.field("particle_count")
    assert list(counts) == [int(truth[i]["n_particles"]) for i in order]
    assert (out / "montage.png").is_file()


def test_same_seed_writes_the_same_images(tmp_path):
    for name in ("a", "b"):
        _run_command(["cryosparc", "--out", str(tmp_path / name), *ARGS])
    stack = "J1/J1_020_class_averages.mrc"
    data = []
    for name in ("a", "b"):  # the MRC header has a creation time; the images must not
        with mrcfile.open(tmp_path / name / stack, permissive=True) as mrc:
            data.append(np.asarray(mrc.data).tobytes())
    assert data[0] == data[1]
    assert (tmp_path / "a/truth.csv").read_bytes() == (
        tmp_path / "b/truth.csv"
    ).read_bytes()


def test_bad_options_and_occupied_folders_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="junk_fraction"):
        _run_command(["relion", "--out", str(tmp_path / "x"), "--junk-fraction", "2"])
    with pytest.raises(InputError, match="box"):
        _run_command(["relion", "--out", str(tmp_path / "x"), "--box", "8"])
    with pytest.raises(InputError, match="seed"):
        _run_command(["relion", "--out", str(tmp_path / "x"), "--seed", "-1"])
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        _run_command(["relion", "--out", str(busy), *ARGS])
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]


def test_relative_out_as_the_help_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        _run_command(["relion", "--out", "sim", "--n-classes", "4", "--box", "32"]) == 0
    )
    assert (tmp_path / "sim" / "Class2D" / "job001" / "run_it025_model.star").is_file()
    assert not list((tmp_path / "sim").glob(".staging-*"))
