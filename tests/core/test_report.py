"""Selection outputs: the scores table, the gallery pages, the histogram, the run record,
and that a failed run leaves nothing half-written."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.report import scores_table
from cryodiscovery.core.report import selection_files as report
from cryodiscovery.core.report.gallery import (
    KEPT_COLOUR,
    REJECTED_COLOUR,
    Section,
    TileGrid,
    render_grid,
    stretch_to_tiles,
    to_rgb8,
)
from cryodiscovery.core.selection import Selection
from matplotlib import image as mpl_image


def _blobs(n: int, box: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box / 2
    centres = rng.uniform(-box / 6, box / 6, size=(n, 2))
    scale = rng.uniform(0.5, 50.0, size=(n, 1, 1))  # very different contrast per class
    imgs = np.exp(
        -(
            (xx[None] - centres[:, :1, None]) ** 2
            + (yy[None] - centres[:, 1:, None]) ** 2
        )
        / (box / 8) ** 2
    )
    return (scale * (imgs + 0.1 * rng.normal(size=(n, box, box)))).astype(np.float32)


def make_case(
    n: int = 12, box: int = 32, seed: int = 0, kinds: bool = True
) -> tuple[ClassAverages, Selection]:
    """Classes with shuffled class numbers, partly unknown metadata, and a selection."""
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(n) + 1
    counts = rng.integers(10, 3000, n).astype(float)
    counts[0] = np.nan
    resolution = rng.uniform(4, 30, n)
    resolution[1] = np.nan
    classes = ClassAverages.create(
        _blobs(n, box, seed),
        pixel_size=1.5,
        class_numbers=numbers,
        metadata={"particle_count": counts, "resolution_A": resolution},
        kinds=[("good" if i % 2 else "ice") for i in range(n)] if kinds else None,
        provenance=Provenance(
            "relion", ("Class2D/job007/run_it025_data.star",), "Class2D/job007"
        ),
    )
    scores = rng.uniform(0, 1, n)
    low = scores < 0.5
    few = np.nan_to_num(counts, nan=1e9) < 100
    reasons = tuple(
        ",".join(r for r, hit in (("score", a), ("min_particles", b)) if hit)
        for a, b in zip(low, few, strict=True)
    )
    selection = Selection(
        class_numbers=numbers.astype(np.int64),
        scores=scores,
        selected=~(low | few),
        threshold=0.5,
        threshold_source="model",
        mode="image+metadata",
        model_sha256="ab" * 32,
        model_name="test-model",
        reasons=reasons,
    )
    return classes, selection


def test_scores_csv_is_sorted_by_class_number_with_blank_unknowns(
    tmp_path: Path,
) -> None:
    classes, selection = make_case()
    path = scores_table.write_scores_csv(tmp_path / "scores.csv", classes, selection)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [*scores_table.SCORE_COLUMNS, "kind"]
    assert [int(r["class_number"]) for r in rows] == list(range(1, 13))
    by_number = {int(n): i for i, n in enumerate(classes.class_numbers)}
    for row in rows:
        i = by_number[int(row["class_number"])]
        assert float(row["score"]) == pytest.approx(selection.scores[i], abs=1e-6)
        assert row["selected"] == ("1" if selection.selected[i] else "0")
        assert row["reason"] == selection.reasons[i]
        assert row["kind"] == classes.kinds[i]
    first = rows[int(classes.class_numbers[0]) - 1]
    assert first["particle_count"] == ""
    second = rows[int(classes.class_numbers[1]) - 1]
    assert second["resolution_A"] == ""


def test_scores_csv_has_no_kind_column_when_kinds_unknown(tmp_path: Path) -> None:
    classes, selection = make_case(kinds=False)
    path = scores_table.write_scores_csv(tmp_path / "scores.csv", classes, selection)
    header = path.read_text().splitlines()[0]
    assert header == ",".join(scores_table.SCORE_COLUMNS)


def test_sections_put_kept_first_each_sorted_by_score() -> None:
    _, selection = make_case(n=30, seed=3)
    kept, rejected = report._sections(selection)
    assert set(kept.indices) == set(np.flatnonzero(selection.selected))
    assert set(rejected.indices) == set(np.flatnonzero(~selection.selected))
    for section in (kept, rejected):
        s = selection.scores[section.indices]
        assert np.all(np.diff(s) <= 0)
    assert kept.colour == KEPT_COLOUR and rejected.colour == REJECTED_COLOUR
    assert "≥" in kept.title
    # a person's selection is not a threshold: the heading says who chose
    person = dataclasses.replace(
        selection, reasons=tuple(f"person: {r}" for r in selection.reasons)
    )
    kept, _ = report._sections(person)
    assert "chosen by a person" in kept.title and "≥" not in kept.title


def test_tiles_mark_the_classes_a_person_flipped() -> None:
    classes, selection = make_case(n=6, seed=2)
    flip = int(np.flatnonzero(selection.selected)[0])
    selected = selection.selected.copy()
    selected[flip] = False
    reasons = [
        "person: rejected (model: kept)"
        if i == flip
        else f"person: {'kept' if k else 'rejected (model: score)'}"
        for i, k in enumerate(selection.selected)
    ]
    person = dataclasses.replace(selection, selected=selected, reasons=tuple(reasons))
    marks = [
        line[1] for tile in report._tile_labels(classes, person) for line in tile[1:]
    ]
    assert marks.count("a person's") == 1
    flipped_tile = report._tile_labels(classes, person)[flip]
    assert any(line[1] == "a person's" for line in flipped_tile[1:])


def test_tiles_are_stretched_per_class() -> None:
    classes, _ = make_case()
    tiles = stretch_to_tiles(classes.images, 40)
    assert tiles.shape == (12, 40, 40)
    # Classes differ 100-fold in contrast; every tile still spans the full grey range.
    assert np.all(tiles.reshape(12, -1).min(axis=1) == 0.0)
    assert np.all(tiles.reshape(12, -1).max(axis=1) == 1.0)


def test_tile_keeps_orientation_on_the_page(tmp_path: Path) -> None:
    img = np.zeros((1, 48, 48), np.float32)
    img[0, 4:14, 6:16] = 1.0  # bright square in the top-left corner
    tile = to_rgb8(stretch_to_tiles(img, 96))
    grid = TileGrid(tile, [[("", "")]], [Section("", KEPT_COLOUR, np.array([0]))], "")
    (page,) = render_grid(grid, tmp_path / "g.png")
    rgb = np.round(mpl_image.imread(page)[..., :3] * 255).astype(int)
    frame = np.all(rgb == KEPT_COLOUR, axis=-1)
    rows, cols = np.flatnonzero(frame.any(1)), np.flatnonzero(frame.any(0))
    inner = rgb[rows[0] + 3 : rows[-1] - 2, cols[0] + 3 : cols[-1] - 2, 0]
    assert inner.shape == (96, 96)
    assert inner[:48, :48].mean() > 3 * inner[48:, 48:].mean()


def test_gallery_paginates_and_keeps_every_class(tmp_path: Path) -> None:
    classes, selection = make_case(n=7)
    pages = report.render_gallery_pages(
        classes, selection, tmp_path / "gallery.png", max_tiles=3
    )
    assert [p.name for p in pages] == ["gallery.png", "gallery_2.png", "gallery_3.png"]
    for page in pages:
        assert mpl_image.imread(page).shape[-1] in (3, 4)
    first = report.render_gallery(classes, selection, tmp_path / "one.png")
    assert first == tmp_path / "one.png" and not (tmp_path / "one_2.png").exists()


def test_write_selection_outputs_writes_everything(tmp_path: Path) -> None:
    classes, selection = make_case()
    out = tmp_path / "out"
    paths = report.write_selection_outputs(
        out,
        classes,
        selection,
        argv=["cryodiscovery", "score", "x"],
        command="score",
        config={"min_particles": 100},
    )
    assert {"scores", "gallery", "score_histogram", "run_record"} <= set(paths)
    assert all(p.exists() and p.parent == out for p in paths.values())
    record = json.loads(paths["run_record"].read_text())
    assert record["argv"] == ["cryodiscovery", "score", "x"]
    assert record["model_sha256"] == "ab" * 32
    assert record["config"]["threshold"] == 0.5
    assert record["config"]["n_selected"] == int(selection.selected.sum())
    assert record["config"]["min_particles"] == 100
    assert not list(out.glob(".staging-*"))


def test_failed_run_leaves_earlier_outputs_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes, selection = make_case()
    out = tmp_path / "out"
    report.write_selection_outputs(out, classes, selection, argv=[], command="score")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(*_args: object) -> Path:
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "render_score_histogram", broken)
    changed = Selection(**{**selection.__dict__, "threshold": 0.9})
    with pytest.raises(RuntimeError):
        report.write_selection_outputs(out, classes, changed, argv=[], command="score")
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert not list(out.glob(".staging-*"))


def test_fewer_pages_remove_stale_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes, selection = make_case(n=7)
    out = tmp_path / "out"
    monkeypatch.setattr(report, "GALLERY_PAGE_TILES", 3)
    report.write_selection_outputs(out, classes, selection, argv=[], command="score")
    assert (out / "gallery_3.png").exists()
    monkeypatch.setattr(report, "GALLERY_PAGE_TILES", 5)
    paths = report.write_selection_outputs(
        out, classes, selection, argv=[], command="score"
    )
    assert (out / "gallery_2.png").exists() and not (out / "gallery_3.png").exists()
    assert "gallery_2" in paths


def test_mismatched_selection_is_rejected(tmp_path: Path) -> None:
    classes, selection = make_case()
    other, _ = make_case(seed=5)
    with pytest.raises(ValueError, match="class numbers"):
        report.write_selection_outputs(
            tmp_path, other, selection, argv=[], command="score"
        )
    with pytest.raises(ValueError, match="scorer"):
        report.write_selection_outputs(
            tmp_path, classes, selection, argv=[], command="score", explain=True
        )


def test_summary_names_counts_threshold_and_mode() -> None:
    classes, selection = make_case()
    text = report.format_summary(classes, selection, {"gallery": Path("o/gallery.png")})
    kept = int(selection.selected.sum())
    few = sum("min_particles" in r for r in selection.reasons)
    assert text.splitlines()[0].startswith(
        f"{kept} of 12 classes kept, {12 - kept} rejected"
    )
    assert f"{few} for too few particles" in text
    assert "0.500 (stored with the model)" in text
    assert "image+metadata" in text and "o/gallery.png" in text


def test_explain_writes_overlays_and_a_later_plain_run_removes_them(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    cfg = NetConfig(in_size=32, stem=8, widths=(8, 16, 16))
    scorer = ClassScorer([ClassNet(cfg)], cfg, PreprocessConfig(size=32), "single", 0.5)
    classes, selection = make_case(n=6)
    out = tmp_path / "out"
    paths = report.write_selection_outputs(
        out, classes, selection, argv=[], command="score", explain=True, scorer=scorer
    )
    names = sorted(p.name for p in (out / "explain").iterdir())
    numbers = sorted(int(n) for n in classes.class_numbers)
    assert names == [*(f"class_{n:03d}.png" for n in numbers), "overview.png"]
    assert paths["explain_overview"] == out / "explain" / "overview.png"
    record = json.loads(paths["run_record"].read_text())["config"]
    assert record["explain"] == "gradient-x-input" and record["explain_overlays"] == 6
    report.write_selection_outputs(out, classes, selection, argv=[], command="score")
    assert not (out / "explain").exists()
