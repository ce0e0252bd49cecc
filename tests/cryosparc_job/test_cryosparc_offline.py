"""Offline mode on generated cryoSPARC 2D job folders: every written .cs is read back with
Dataset.load and the partition checked (each particle in exactly one output, uid kept,
passthrough fields intact)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.io.cryosparc_class2d import read_cryosparc_selection
from cryodiscovery.core.io.stack import read_mrc_images
from cryodiscovery.core.synthetic.cryosparc_jobs import write_cryosparc_class2d
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run
from cryodiscovery.cryosparc_job.cli import main
from cryodiscovery.cryosparc_job.offline import run_offline
from cryosparc.dataset import Dataset
from cryosparc_testdata import keep


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A generated 2D classification job folder, CS-demo/J12 (8 classes, box 64)."""
    run = simulate_run(
        SimulationConfig(n_classes=8, box_sizes=(64,), particle_range=(20, 120)), 3
    )
    job_dir = tmp_path_factory.mktemp("project") / "CS-demo" / "J12"
    write_cryosparc_class2d(run.classes, job_dir, seed=5)
    return job_dir


@pytest.fixture
def job_dir(generated, tmp_path) -> Path:
    """A private copy of the generated folder (tests may damage it)."""
    copy = tmp_path / "CS-demo" / "J12"
    shutil.copytree(generated, copy)
    return copy


def _source(job_dir: Path) -> tuple[Dataset, Dataset, Dataset]:
    particles = Dataset.load(job_dir / "J12_020_particles.cs")
    passthrough = Dataset.load(job_dir / "J12_passthrough_particles.cs")
    templates = Dataset.load(job_dir / "J12_020_class_averages.cs")
    return particles, passthrough, templates


def _by_uid(dset: Dataset) -> dict[int, int]:
    return {int(u): i for i, u in enumerate(dset["uid"])}


def test_outputs_partition_the_particles_and_keep_every_field(job_dir, tmp_path):
    out = tmp_path / "out"
    result = run_offline(job_dir, out, keep([1, 4, 5]))
    particles, passthrough, templates = _source(job_dir)
    read = {p.stem: Dataset.load(p) for p in out.glob("*.cs")}
    # named as Select 2D names them: JNN_ on the passthrough files only
    assert set(read) == {
        f"{pre}{name}"
        for name in ("particles_selected", "particles_excluded")
        for pre in ("", "J12_passthrough_")
    } | {"templates_selected", "templates_excluded"}
    sel, exc = read["particles_selected"], read["particles_excluded"]
    assert len(sel) + len(exc) == len(particles)
    assert set(sel["uid"]).isdisjoint(exc["uid"])
    assert set(sel["uid"]) | set(exc["uid"]) == set(particles["uid"])
    assert set(np.unique(sel["alignments2D/class"])) <= {0, 3, 4}
    assert not np.isin(exc["alignments2D/class"], [0, 3, 4]).any()
    # fields as Select 2D writes them; values unchanged, matched by uid
    assert sel.fields() == particles.fields()
    src, pt_src = _by_uid(particles), _by_uid(passthrough)
    for name in ("particles_selected", "particles_excluded"):
        main_rows, pt_rows = read[name], read[f"J12_passthrough_{name}"]
        assert np.array_equal(main_rows["uid"], pt_rows["uid"])
        assert pt_rows.fields() == passthrough.fields()
        idx = [src[int(u)] for u in main_rows["uid"]]
        pt_idx = [pt_src[int(u)] for u in pt_rows["uid"]]
        for field in (
            "blob/path",
            "blob/idx",
            "alignments2D/pose",
            "alignments2D/shift",
        ):
            assert np.array_equal(
                np.asarray(main_rows[field]), np.asarray(particles[field])[idx]
            )
        for field in passthrough.fields(exclude_uid=True):
            assert np.array_equal(
                np.asarray(pt_rows[field]), np.asarray(passthrough[field])[pt_idx]
            )
    assert sorted(read["templates_selected"]["blob/idx"]) == [0, 3, 4]
    assert read["templates_selected"].fields() == templates.fields()
    # and, like Select 2D, the class averages of each template output as an MRC stack
    source_stack = read_mrc_images(job_dir / "J12_020_class_averages.mrc")[0]
    for name in ("templates_selected", "templates_excluded"):
        images, voxel = read_mrc_images(out / f"{name}.mrc")
        rows = np.asarray(read[name]["blob/idx"], dtype=int)
        np.testing.assert_array_equal(images, source_stack[rows])
        assert voxel == pytest.approx(float(templates["blob/psize_A"][0]), rel=1e-4)
    assert result.saved["templates_excluded"] == 5
    # the formats reader sees the same selection as a Select 2D job's
    labels = read_cryosparc_selection(out, n_classes=8)
    assert np.flatnonzero(labels == 1).tolist() == [0, 3, 4]
    assert {"scores.csv", "gallery.png", "run_record.json"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "run_record.json").read_text())
    assert record["command"] == "cryodiscovery-cryosparc"


def test_empty_outputs_are_not_written_and_stale_ones_go(job_dir, tmp_path):
    out = tmp_path / "J43"  # a folder named like a job: its uid names the files
    run_offline(job_dir, out, keep([2]))
    assert (out / "J43_passthrough_particles_excluded.cs").is_file()
    (out / "passthrough_particles_excluded.cs").write_bytes(b"old naming")
    result = run_offline(job_dir, out, keep(range(1, 9)))
    assert set(result.saved) == {"particles_selected", "templates_selected"}
    assert not (out / "particles_excluded.cs").exists()
    assert not (out / "J43_passthrough_particles_excluded.cs").exists()
    assert not (out / "passthrough_particles_excluded.cs").exists()
    assert not (out / "templates_excluded.cs").exists()
    assert not (out / "templates_excluded.mrc").exists()
    assert len(Dataset.load(out / "particles_selected.cs")) == len(_source(job_dir)[0])


def test_nothing_kept_fails_with_one_line_and_writes_nothing(job_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--job-dir", str(job_dir), "--out", str(out)]
    assert main(argv, select=keep([])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cryodiscovery-cryosparc: error: no class kept: best score 0.100 (class 1), "
        "threshold 0.500 (user): nothing to pass on; lower the threshold (or the "
        "minimum particle count) or check the input"
    ]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("J12_020_particles.cs", "not a readable cryoSPARC .cs file"),
        ("J12_passthrough_particles.cs", "not a readable cryoSPARC .cs file"),
        ("J12_020_class_averages.cs", "not a readable cryoSPARC .cs file"),
    ],
)
def test_corrupt_cs_is_a_one_line_input_error_and_writes_nothing(
    job_dir, tmp_path, damage, message
):
    (job_dir / damage).write_bytes(b"\x93NUMPY garbage")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as info:
        run_offline(job_dir, out, keep([1]))
    assert "\n" not in str(info.value)
    assert not out.exists() or not any(out.iterdir())


def test_passthrough_rows_must_match(job_dir, tmp_path):
    passthrough = Dataset.load(job_dir / "J12_passthrough_particles.cs")
    passthrough.slice(0, len(passthrough) - 3).save(
        job_dir / "J12_passthrough_particles.cs"
    )
    with pytest.raises(InputError, match=r"particles of J12_020_particles\.cs"):
        run_offline(job_dir, tmp_path / "out", keep([1]))


def test_not_a_2d_job_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        run_offline(tmp_path / "nowhere", tmp_path / "out", keep([1]))
    (tmp_path / "J3").mkdir()
    with pytest.raises(InputError, match="not a 2D classification job"):
        run_offline(tmp_path / "J3", tmp_path / "out", keep([1]))


def test_cli_with_the_shipped_model(job_dir, tmp_path, capsys):
    """End to end: the real default model scores the generated job (threshold 0: a
    selection whatever the scores; classes without particles are still dropped)."""
    out = tmp_path / "sel"
    assert main(["--job-dir", str(job_dir), "--out", str(out), "--threshold", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Kept ") and "threshold 0.000 (user)" in printed
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 9
    kept = {int(r.split(",")[0]) for r in rows[1:] if r.split(",")[2] == "1"}
    assert kept
    assert {
        int(i) + 1 for i in Dataset.load(out / "templates_selected.cs")["blob/idx"]
    } == kept


def test_cli_corrupt_input_exits_2_with_one_line(job_dir, tmp_path, capsys):
    (job_dir / "J12_020_particles.cs").write_bytes(b"junk")
    code = main(
        ["--job-dir", str(job_dir), "--out", str(tmp_path / "o")], select=keep([1])
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert (
        err.startswith("cryodiscovery-cryosparc: error: ")
        and "J12_020_particles.cs" in err
    )


def test_each_output_has_a_group_file_for_import_result_group(job_dir, tmp_path):
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "J43"
    (job_dir / "J12_particles.csg").write_text("group: {}\nversion: v4.6.2\n")
    run_offline(job_dir, out, keep([2, 3]))
    groups = sorted(p.name for p in out.glob("*.csg"))
    assert groups == [
        f"{n}.csg"
        for n in sorted(
            (
                "particles_excluded",
                "particles_selected",
                "templates_excluded",
                "templates_selected",
            )
        )
    ]
    for csg in out.glob("*.csg"):
        doc = yaml.safe_load(csg.read_text())
        name, kind = doc["group"]["name"], doc["group"]["type"]
        assert name == csg.stem and kind == csg.stem.split("_")[0][:-1]
        assert doc["version"] == "v4.6.2"  # the source job's cryoSPARC version
        listed: set[str] = set()
        for slot, entry in doc["results"].items():
            assert entry["type"] == f"{kind}.{slot}"
            assert entry["metafile"].startswith(">")
            rows = Dataset.load(out / entry["metafile"][1:])
            assert entry["num_items"] == len(rows)
            assert slot in rows.prefixes()
            listed.add(entry["metafile"][1:])
        # every slot of every file of this output is listed, and only those files
        files = {p.name for p in out.glob(f"*{name}.cs")}
        assert listed == files
        slots = {s for f in files for s in Dataset.load(out / f).prefixes()}
        assert slots == set(doc["results"])
    assert (out / "J43_passthrough_particles_selected.cs").is_file()


@pytest.mark.parametrize("where", ["input", "input .cs", "select"])
def test_refuses_the_2d_job_folder_and_other_cryosparc_jobs(
    job_dir, tmp_path, capsys, where
):
    out = tmp_path / "CS-demo" / "J13" if where == "select" else job_dir
    source = job_dir / "J12_020_class_averages.cs" if where == "input .cs" else job_dir
    if where == "select":  # a Select 2D job of cryoSPARC: its .cs must stay
        out.mkdir(parents=True)
        (out / "job.json").write_text('{"project_uid": "P1", "type": "select_2D"}')
        (out / "particles_selected.cs").write_bytes(b"cryoSPARC's own")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code = main(["--job-dir", str(source), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert ("job.json" if where == "select" else "2D job's own folder") in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
