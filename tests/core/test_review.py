"""The review page: one self-contained review.html per scoring run, with a tile per class,
no reference outside the file, images inline, the run's threshold, a small size for
hundreds of classes, and an export layout equal to RELION's backup_selection.star."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.io.star_tables import write_star
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.report import selection_files
from cryodiscovery.core.report.review import (
    backup_selection_text,
    display_size,
    png_bytes,
    write_review_page,
)
from cryodiscovery.core.selection import Selection
from cryodiscovery.core.synthetic.config import SimulationConfig
from cryodiscovery.core.synthetic.generator import simulate_class_averages
from matplotlib import image as mpl_image


def make_selection(
    classes: ClassAverages, threshold: float = 0.5, seed: int = 0
) -> Selection:
    scores = np.random.default_rng(seed).uniform(0, 1, len(classes))
    counts = classes.field("particle_count")
    few = np.isfinite(counts) & (np.nan_to_num(counts) < 1)
    low = scores < threshold
    reasons = tuple(
        ",".join(r for r, hit in (("score", s), ("min_particles", f)) if hit)
        for s, f in zip(low.tolist(), few.tolist(), strict=True)
    )
    return Selection(
        class_numbers=classes.class_numbers,
        scores=scores,
        selected=~(low | few),
        threshold=threshold,
        threshold_source="adaptive",
        mode="image+metadata",
        model_sha256="ab" * 32,
        model_name="test-model",
        reasons=reasons,
    )


def decode_png(data: bytes) -> np.ndarray:
    image = mpl_image.imread(io.BytesIO(data), format="png")
    return np.round(np.asarray(image) * 255).astype(np.uint8)


def page_data(text: str) -> dict:
    match = re.search(r'id="review-data">(.*?)</script>', text, re.S)
    assert match, "no data block"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def simulated() -> ClassAverages:
    """20 generated classes at 256 px (realistic images for the size bound)."""
    config = SimulationConfig(n_classes=20, box_sizes=(256,))
    return simulate_class_averages(config, 7)


def repeated(classes: ClassAverages, n: int) -> ClassAverages:
    idx = np.arange(n) % len(classes)
    return ClassAverages.create(
        classes.images[idx],
        pixel_size=classes.pixel_size,
        metadata={"particle_count": classes.field("particle_count")[idx]},
        provenance=Provenance("synthetic", (), "Class2D/job001"),
    )


def test_one_focusable_tile_per_class_and_nothing_outside_the_file(
    tmp_path: Path, simulated: ClassAverages
) -> None:
    classes = simulated.subset(np.arange(12))
    classes = ClassAverages.create(  # cryoSPARC-like numbers: not from 1, with gaps
        classes.images,
        pixel_size=classes.pixel_size,
        class_numbers=np.arange(12) * 3 + 5,
        metadata={"particle_count": classes.field("particle_count")},
    )
    selection = make_selection(classes, 0.42)
    text = write_review_page(tmp_path / "review.html", classes, selection).read_text()
    numbers = [
        int(n) for n in re.findall(r'<div class="tile[^"]*" data-class="(\d+)"', text)
    ]
    assert sorted(numbers) == sorted(int(n) for n in classes.class_numbers)
    assert text.count('tabindex="0"') == 12
    assert not re.search(r"https?://|//cdn|(src|href)=\"//", text, re.I)
    assert "<link" not in text and not re.search(r"<script[^>]+src=", text)
    assert text.count('src="data:image/png;base64,') == 12
    assert "0.420" in text and "adaptive" in text  # the run's threshold, stated
    data = page_data(text)
    assert data["threshold"] == 0.42 and data["maxClass"] == 38
    kept = {c["n"]: c["kept"] for c in data["classes"]}
    assert kept == dict(
        zip(classes.class_numbers.tolist(), selection.selected.tolist(), strict=True)
    )


def test_tiles_are_sorted_by_score_and_images_decode(
    tmp_path: Path, simulated: ClassAverages
) -> None:
    classes = simulated.subset(np.arange(6))
    selection = make_selection(classes)
    text = write_review_page(tmp_path / "r.html", classes, selection).read_text()
    shown = [int(n) for n in re.findall(r'data-class="(\d+)"', text)]
    by_score = classes.class_numbers[np.argsort(-selection.scores)].tolist()
    assert shown == by_score
    first = re.search(r'src="data:image/png;base64,([^"]+)"', text)
    assert first
    image = decode_png(base64.b64decode(first.group(1)))
    assert image.shape == (128, 128)  # grey; 256 px shown at 128


def test_classes_without_metadata(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    classes = ClassAverages.create(rng.normal(size=(5, 48, 48)))
    selection = make_selection(classes)
    text = write_review_page(tmp_path / "r.html", classes, selection).read_text()
    data = page_data(text)
    assert all(c["count"] is None and c["res"] is None for c in data["classes"])
    assert all(c["details"] == [] for c in data["classes"])
    assert text.count("data-class=") == 5
    assert 'width="96" height="96"' in text  # 48 px shown twice as large, square pixels


@pytest.mark.parametrize("n, limit_mb", [(100, 1.3), (300, 3.6)])
def test_the_page_stays_small(
    tmp_path: Path, simulated: ClassAverages, n: int, limit_mb: float
) -> None:
    classes = repeated(simulated, n)
    path = write_review_page(tmp_path / "r.html", classes, make_selection(classes))
    assert path.stat().st_size < limit_mb * 1e6


def test_exported_star_has_the_layout_of_write_star(tmp_path: Path) -> None:
    flags = np.array([1, 0, 0, 1, 1])
    write_star(tmp_path / "b.star", {"": pd.DataFrame({"rlnSelected": flags})})
    assert backup_selection_text(flags) == (tmp_path / "b.star").read_text()


def test_png_round_trip() -> None:
    rng = np.random.default_rng(3)
    for shape in [(5, 7), (64, 64), (9, 4, 3)]:
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        assert np.array_equal(decode_png(png_bytes(pixels)), pixels)
    assert display_size(64) == 64 and display_size(300) == 128


def test_every_selection_run_writes_the_page_with_saliency_when_explained(
    tmp_path: Path, simulated: ClassAverages
) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(in_size=32, stem=8, widths=(8, 16, 16))
    scorer = ClassScorer([ClassNet(cfg)], cfg, PreprocessConfig(size=32), "single", 0.5)
    classes = simulated.subset(np.arange(4))
    selection = make_selection(classes)
    plain = selection_files.write_selection_outputs(
        tmp_path / "plain", classes, selection, argv=[], command="score"
    )
    assert plain["review"] == tmp_path / "plain" / "review.html"
    assert all(
        c["saliency"] is None for c in page_data(plain["review"].read_text())["classes"]
    )
    assert "review.html" in selection_files.format_summary(classes, selection, plain)
    explained = selection_files.write_selection_outputs(
        tmp_path / "explained",
        classes,
        selection,
        argv=[],
        command="score",
        explain=True,
        scorer=scorer,
    )
    entries = page_data(explained["review"].read_text())["classes"]
    assert all(c["saliency"].startswith("data:image/png;base64,") for c in entries)
    record = json.loads(explained["run_record"].read_text())
    assert "review.html" in record["config"]["outputs"]


def test_mismatched_saliency_is_refused(tmp_path: Path) -> None:
    classes = ClassAverages.create(np.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match="saliency"):
        write_review_page(
            tmp_path / "r.html",
            classes,
            make_selection(classes),
            saliency=np.zeros((3, 16, 16)),
        )
