"""The real-data benchmarks run end to end on a tiny stand-in for ../shared/data/real_classes
(two labelled sets written from the project's generator), write their JSON, and skip
cleanly when the folder is absent."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.synthetic.config import SimulationConfig
from cryodiscovery.core.synthetic.generator import simulate_class_averages
from support.benchmarks import load_benchmark


def _write_set(folder: Path, seed: int, columns: dict[str, str]) -> None:
    """A labelled set as the shared folder holds it: classes.mrcs + labels.csv."""
    config = SimulationConfig(
        n_classes=10, box_sizes=(64,), junk_fraction=0.5, metadata_style="all"
    )
    classes = simulate_class_averages(config, seed)
    folder.mkdir(parents=True)
    write_stack(folder / "classes.mrcs", classes.images, classes.pixel_size)
    labels = classes.labels.astype(int)
    labels[0] = -1  # one unsure class
    with (folder / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "class_number", "label", "label_source", *columns])
        for i in range(len(classes)):
            values = [classes.field(f)[i] for f in columns.values()]
            writer.writerow([i + 1, 100 + i, labels[i], "generated", *values])


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    root = tmp_path / "real_classes"
    _write_set(root / "relion_like", 11, {"class_distribution": "class_distribution"})
    _write_set(
        root / "cryosparc_like",
        12,
        {"n_particles": "particle_count", "resolution_A": "resolution_A", "ess": "eca"},
    )
    return root


def test_real_sets_carry_labels_csv_metadata(
    real_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_benchmark("bench_real", monkeypatch)
    real_classes = sys.modules["real_classes"]
    sets = {s.name: s for s in real_classes.read_real_sets(real_dir)}
    cs = sets["cryosparc_like"]
    assert cs.classes.class_numbers[0] == 100 and cs.labels[0] == -1
    counts = cs.classes.field("particle_count")
    assert np.isfinite(counts).all() and np.isfinite(cs.classes.field("eca")).all()
    # As the cryoSPARC reader: the class distribution is count / total.
    np.testing.assert_allclose(
        cs.classes.field("class_distribution"), counts / counts.sum()
    )
    assert not cs.bare.has_metadata and np.array_equal(cs.bare.labels, cs.labels)
    relion = sets["relion_like"].classes
    assert np.isfinite(relion.field("class_distribution")).all()
    assert np.isnan(relion.field("particle_count")).all()


def test_bench_real_prints_and_writes_every_figure(
    real_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_benchmark("bench_real", monkeypatch)
    out = tmp_path / "real.json"
    argv = [
        "--real-dir",
        str(real_dir),
        "--boot",
        "50",
        "--threads",
        "1",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    for part in ("POOLED", "MEAN OF SET AUCs", "framing", "summary", "baseline"):
        assert part in text
    record = json.loads(out.read_text())
    (model,) = record["models"]
    view = model["views"]["as read"]
    assert [s["n_unsure"] for s in view["sets"]] == [1, 1]
    assert view["sets"][0]["mode"] == "image+metadata"
    assert model["views"]["bare stack"]["sets"][0]["mode"] == "image-only"
    pooled = view["pooled"]
    assert 0.0 <= pooled["pooled"]["auc"] <= 1.0
    lo, hi = pooled["pooled"]["ci"]
    assert lo <= hi
    assert pooled["default"]["fnr"] is not None
    assert model["framing"]["as read"]["sets"][0]["pad"]["box"] == 80
    assert model["framing"]["as read"]["sets"][0]["crop"]["box"] == 48
    assert set(record["baselines"]) == set(bench.BASELINES)


def test_reframe_pads_with_the_frame_mean_and_crops_the_centre(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_benchmark("bench_real", monkeypatch)
    images = np.zeros((1, 8, 8), np.float32)
    images[0, 1:-1, 1:-1] = 5.0
    images[0, 0, :] = 2.0  # frame mean: (8 * 2) / 28
    padded = bench.reframe(images, 1.25)
    assert padded.shape == (1, 10, 10)
    assert padded[0, 0, 0] == pytest.approx(16 / 28)
    np.testing.assert_array_equal(padded[0, 1:9, 1:9], images[0])
    cropped = bench.reframe(images, 0.75)
    assert cropped.shape == (1, 6, 6) and (cropped[0] == 5.0).all()


def test_bench_realism_measures_real_and_generated(
    real_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_benchmark("bench_realism", monkeypatch)
    out = tmp_path / "realism.json"
    argv = [
        "--real-dir",
        str(real_dir),
        "--runs",
        "2",
        "--classes",
        "8",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "realism gap" in text and "largest differences" in text
    record = json.loads(out.read_text())
    assert record["counts"]["real good"] + record["counts"]["real bad"] == 18
    assert record["counts"]["generated good"] + record["counts"]["generated bad"] == 16
    assert set(record["table"]) == set(sys.modules["image_statistics"].STATISTICS)
    assert (
        record["gaps"]["all"]["auc"] is None or 0 <= record["gaps"]["all"]["auc"] <= 1
    )


def test_classifier_separates_what_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("bench_realism", monkeypatch)
    rng = np.random.default_rng(0)
    n = len(sys.modules["image_statistics"].STATISTICS)
    x = rng.normal(size=(200, n))
    is_real = (np.arange(200) < 40).astype(int)
    assert bench.realism_gap(x, is_real)["auc"] < 0.75  # nothing to find
    x[:40, 1] += 3.0
    assert bench.realism_gap(x, is_real)["auc"] > 0.95


@pytest.mark.parametrize("name", ["bench_real", "bench_realism"])
def test_scripts_skip_cleanly_without_real_classes(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = load_benchmark(name, monkeypatch)
    assert bench.main(["--real-dir", str(tmp_path / "absent")]) == 0
    assert "no labelled real class averages" in capsys.readouterr().out


def test_bootstrap_auc_weights_classes_by_how_often_they_are_drawn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = load_benchmark("bench_real", monkeypatch)
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.2, 0.3, 0.1, 0.5, 0.5])
    counts = np.array([[1, 1, 1, 1, 1, 1], [2, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 1]])
    boot = bench.weighted_auc(labels, scores, counts)
    assert boot[0] == pytest.approx(bench.roc_auc(labels, scores))
    assert boot[1] == 1.0  # only the 0.9 class (twice) against 0.3 and 0.1
    assert np.isnan(boot[2])  # no good class drawn
    (draw,) = bench.draw_resamples([6], 100, seed=3).counts
    assert draw.shape == (100, 6) and (draw.sum(axis=1) == 6).all()
