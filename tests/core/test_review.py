"""The review page: one self-contained review.html per scoring run, with a tile per class,
no reference outside the file, images inline, the run's threshold, a small size for
hundreds of classes, and an export layout equal to RELION's backup_selection.star;
strict JSON (no NaN) with nothing in it that the HTML parser sees, escaped text from the
run, and the model's decisions of the run (not recomputed from rounded scores) for the
page's rule."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.io.star_tables import write_star
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.report import selection_files
from cryodiscovery.core.report.png import png_bytes
from cryodiscovery.core.report.review import (
    backup_selection_text,
    display_size,
    model_decisions,
    write_review_page,
)
from cryodiscovery.core.selection import Selection, SelectionOptions, select_classes
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


def refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def page_data(text: str) -> dict:
    """The page's data block, parsed as strict JSON (as the browser's JSON.parse)."""
    match = re.search(r'id="review-data">(.*?)</script>', text, re.S)
    assert match, "no data block"
    return json.loads(match.group(1), parse_constant=refuse_constant)


def page_rule(entry: dict, threshold: float) -> bool:
    """The model's decision as the page's script takes it away from the run's
    threshold (``ruleKeeps`` in review_template.html)."""
    score = entry["score"]
    return score is not None and score >= threshold and not entry["few"]


def exported_star(data: dict, keeps: dict[int, bool]) -> str:
    """The text the page's ``exportStar`` writes for decisions ``keeps``."""
    rows = "".join(
        f"{int(keeps.get(n, False))} \n" for n in range(1, data["maxClass"] + 1)
    )
    return data["starHead"] + rows + data["starTail"]


def tiny_scorer() -> ClassScorer:
    torch.manual_seed(0)
    cfg = NetConfig(in_size=32, stem=8, widths=(8, 16, 16))
    return ClassScorer([ClassNet(cfg)], cfg, PreprocessConfig(size=32), "single", 0.5)


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
    assert all(set(c["details"]) == {None} for c in data["classes"])
    assert len(data["detailLabels"]) == len(data["classes"][0]["details"])
    assert text.count("data-class=") == 5
    assert 'width="96" height="96"' in text  # 48 px shown twice as large, square pixels


@pytest.mark.parametrize("n, limit_mb", [(100, 1.1), (300, 3.2)])
def test_the_page_stays_small(
    tmp_path: Path, simulated: ClassAverages, n: int, limit_mb: float
) -> None:
    classes = repeated(simulated, n)
    path = write_review_page(tmp_path / "r.html", classes, make_selection(classes))
    assert path.stat().st_size < limit_mb * 1e6


@pytest.mark.parametrize("version", [None, 30001, 50001])
def test_exported_star_has_the_layout_of_write_star(
    tmp_path: Path, version: int | None
) -> None:
    flags = np.array([1, 0, 0, 1, 1])
    table = {"": pd.DataFrame({"rlnSelected": flags})}
    if version is None:  # the default: what write_star writes by default
        write_star(tmp_path / "b.star", table)
        assert backup_selection_text(flags) == (tmp_path / "b.star").read_text()
    else:
        write_star(tmp_path / "b.star", table, version=version)
        text = (tmp_path / "b.star").read_text()
        assert backup_selection_text(flags, version) == text
        classes = ClassAverages.create(np.zeros((5, 16, 16)))
        page = write_review_page(
            tmp_path / "r.html",
            classes,
            make_selection(classes),
            star_version=version,
        )
        data = page_data(page.read_text())
        assert exported_star(data, dict(enumerate(flags.astype(bool), 1))) == text
    with pytest.raises(ValueError, match="version"):
        backup_selection_text(flags, "5.0")  # type: ignore[arg-type]


def test_gapped_class_numbers_export_one_row_per_number_up_to_the_largest(
    tmp_path: Path,
) -> None:
    numbers = np.array([5, 8, 11])  # cryoSPARC: numbers with gaps, not from 1
    classes = ClassAverages.create(np.zeros((3, 16, 16)), class_numbers=numbers)
    selection = dataclasses.replace(
        make_selection(classes),
        scores=np.array([0.9, 0.1, 0.8]),
        selected=np.array([True, False, True]),
        reasons=("", "score", ""),
    )
    data = page_data(
        write_review_page(tmp_path / "r.html", classes, selection).read_text()
    )
    assert data["maxClass"] == 11
    keeps = {c["n"]: c["model"] for c in data["classes"]}  # the page at load
    path = tmp_path / "backup_selection.star"
    path.write_text(exported_star(data, keeps))
    flags = starfile.read(path, always_dict=True)[""]["rlnSelected"].tolist()
    assert len(flags) == 11
    assert [n for n, f in enumerate(flags, 1) if f == 1] == [5, 11]


def test_png_round_trip() -> None:
    rng = np.random.default_rng(3)
    for shape in [(5, 7), (64, 64), (9, 4, 3)]:
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        assert np.array_equal(decode_png(png_bytes(pixels)), pixels)
    assert display_size(64) == 64 and display_size(300) == 128


def test_every_selection_run_writes_the_page_with_saliency_when_explained(
    tmp_path: Path, simulated: ClassAverages
) -> None:
    scorer = tiny_scorer()
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


def test_nan_scores_and_thresholds_give_strict_json(tmp_path: Path) -> None:
    classes = ClassAverages.create(np.zeros((3, 16, 16)))
    base = make_selection(classes, 0.5)
    nan_score = dataclasses.replace(base, scores=np.array([0.9, np.nan, 0.2]))
    text = write_review_page(tmp_path / "a.html", classes, nan_score).read_text()
    data = page_data(text)
    entry = next(c for c in data["classes"] if c["n"] == 2)
    assert entry["score"] is None and entry["scoreText"] == "nan"  # as scores.csv
    assert 'aria-label="class 2, score –"' in text
    assert "NaN" not in text.split('id="review-data">')[1].split("</script>")[0]
    for threshold in (np.nan, np.inf, None):
        missing = dataclasses.replace(base, threshold=threshold)
        page = write_review_page(tmp_path / "b.html", classes, missing).read_text()
        data = page_data(page)
        assert data["threshold"] is None and data["start"] == 0.5
        assert 'value="0.5"' in page and "run threshold – (adaptive)" in page
        assert [c["model"] for c in data["classes"]] == base.selected.tolist()


def test_text_from_the_run_is_escaped(tmp_path: Path) -> None:
    name = "job<script>alert(1)</script>&\"'"
    kind = "junk<!--<script"
    classes = ClassAverages.create(
        np.zeros((2, 16, 16)),
        kinds=[kind, "good_</script><b>x"],
        provenance=Provenance("relion", ("<img src=x onerror=alert(2)>.star",), name),
    )
    selection = dataclasses.replace(
        make_selection(classes), model_name="<i>m</i>", threshold_source="<u>user"
    )
    text = write_review_page(tmp_path / "r.html", classes, selection).read_text()
    assert "<script>alert" not in text and "<!--<script" not in text
    assert "<img src=x" not in text and "<i>m" not in text and "<u>user" not in text
    assert text.count("<script") == 2  # the data block and the page's own script
    assert text.count("</script>") == 2
    assert f"<h1>{html.escape('Review: ' + name)}</h1>" in text
    data = page_data(text)
    kinds = [c["details"][-1] for c in data["classes"]]
    assert kinds == [kind, "good </script><b>x"]  # unchanged once parsed
    # Without a job name the file name is shown, escaped as well.
    bare = dataclasses.replace(
        classes, provenance=Provenance("relion", ("<img src=x>.star",), "")
    )
    page = write_review_page(tmp_path / "s.html", bare, selection).read_text()
    assert "Review: &lt;img src=x&gt;.star" in page


def test_the_pages_rule_reproduces_select_classes(tmp_path: Path) -> None:
    """At the run's threshold the page takes the run's decisions; elsewhere its rule
    (score, the run's particle-count rejections, empty classes) is select_classes' at
    that threshold."""
    rng = np.random.default_rng(5)
    counts = np.array([500, 0, 3, 800, 12, np.nan, 40, 2, 900, 100], dtype=float)
    classes = ClassAverages.create(
        rng.normal(size=(10, 32, 32)), metadata={"particle_count": counts}
    )
    scorer = tiny_scorer()
    options = SelectionOptions(threshold=0.5, min_particles=10)
    run = select_classes(classes, options, scorer=scorer)
    scores = np.asarray(run.scores)
    # The run's threshold between two scores, with the rule rejecting on both sides.
    cut = float(np.sort(scores)[5])
    run = select_classes(
        classes, dataclasses.replace(options, threshold=cut), scorer=scorer
    )
    assert "min_particles" in run.reasons[1] and "min_particles" in run.reasons[2]
    text = write_review_page(tmp_path / "r.html", classes, run).read_text()
    data = page_data(text)
    entries = {c["n"]: c for c in data["classes"]}
    numbers = classes.class_numbers.tolist()
    assert data["threshold"] == cut
    assert [entries[n]["model"] for n in numbers] == run.selected.tolist()
    assert [entries[n]["kept"] for n in numbers] == run.selected.tolist()
    assert "tile kept" in text and "tile rejected" in text
    for t in (0.0, *np.unique(scores).tolist(), 1.0):
        other = select_classes(
            classes, dataclasses.replace(options, threshold=t), scorer=scorer
        )
        rule = [page_rule(entries[n], t) for n in numbers]
        assert rule == other.selected.tolist(), t


def test_a_persons_selection_keeps_the_models_decisions_of_the_run(
    tmp_path: Path,
) -> None:
    """A person-corrected run re-written from scores.csv (6 decimals): a class rejected
    just below the threshold is the model's rejection, not the person's decision."""
    classes = ClassAverages.create(
        np.zeros((5, 16, 16)), metadata={"particle_count": [50, 50, 50, 5, 50]}
    )
    threshold = 0.4999998
    scores = np.round([0.49999955, 0.9, 0.2, 0.8, 0.7], 6)  # as read from scores.csv
    assert scores[0] >= threshold  # rounding put it above the cut
    reasons = (
        "person: rejected (model: score)",  # the model's rejection, kept by nobody
        "person: rejected (model: kept)",  # the person's
        "person: kept (model: score)",  # the person's
        "person: rejected (model: min_particles)",
        "person: kept",
    )
    selection = dataclasses.replace(
        make_selection(classes, threshold),
        scores=scores,
        selected=np.array([False, False, True, False, True]),
        reasons=reasons,
    )
    model, why = model_decisions(selection)
    assert model.tolist() == [False, True, False, False, True]
    assert why == ["score", "", "score", "min_particles", ""]
    data = page_data(
        write_review_page(tmp_path / "r.html", classes, selection).read_text()
    )
    entries = data["classes"]
    assert [c["model"] for c in entries] == model.tolist()
    assert [c["few"] for c in entries] == [False, False, False, True, False]
    person = [c["n"] for c in entries if c["kept"] != c["model"]]  # as the page opens
    assert person == [2, 3]
    assert not page_rule(entries[3], 0.0)  # too few particles at any threshold
    # The caller's own model decisions win over the reasons.
    given = [True, True, False, False, True]
    data = page_data(
        write_review_page(
            tmp_path / "g.html", classes, selection, model_selected=given
        ).read_text()
    )
    assert [c["model"] for c in data["classes"]] == given
    with pytest.raises(ValueError, match="model_selected"):
        write_review_page(
            tmp_path / "h.html", classes, selection, model_selected=[True]
        )


def test_details_word_the_runs_and_the_models_decisions_apart(tmp_path: Path) -> None:
    """A person's run: the run's decision says a person made it, the model's its own
    reason, with no nested 'person: ... (model: ...)' text."""
    classes = ClassAverages.create(
        np.zeros((4, 16, 16)), metadata={"particle_count": [50, 50, 5, 50]}
    )
    model_run = dataclasses.replace(
        make_selection(classes),
        scores=np.array([0.9, 0.2, 0.8, 0.1]),
        selected=np.array([True, False, False, False]),
        reasons=("", "score", "min_particles", "score,min_particles"),
    )
    entries = page_data(
        write_review_page(tmp_path / "m.html", classes, model_run).read_text()
    )["classes"]
    assert [c["run"] for c in entries] == [
        "kept",
        "rejected (score below the threshold)",
        "rejected (too few particles)",
        "rejected (score below the threshold, too few particles)",
    ]
    assert [c["modelRun"] for c in entries] == [c["run"] for c in entries]
    persons = dataclasses.replace(
        model_run,
        selected=np.array([False, True, False, False]),
        reasons=(
            "person: rejected (model: kept)",
            "person: kept (model: score)",
            "person: rejected (model: min_particles)",
            "person: rejected (model: score)",
        ),
        threshold_source="adaptive, overridden by a person",
    )
    text = write_review_page(tmp_path / "p.html", classes, persons).read_text()
    entries = page_data(text)["classes"]
    assert [c["run"] for c in entries] == [
        "rejected (a person)",
        "kept (a person)",
        "rejected (a person)",
        "rejected (a person)",
    ]
    assert [c["modelRun"] for c in entries] == [
        "kept",
        "rejected (score below the threshold)",
        "rejected (too few particles)",
        "rejected (score below the threshold)",
    ]
    assert ">" + html.escape("run: person's selection") + "</button>" in text
    assert "overridden by a person)</button>" not in text


def test_the_run_button_is_short(tmp_path: Path) -> None:
    classes = ClassAverages.create(np.zeros((2, 16, 16)))
    selection = make_selection(classes, 0.54)
    text = write_review_page(tmp_path / "r.html", classes, selection).read_text()
    assert ">run threshold 0.540 (adaptive)</button>" in text


@pytest.mark.parametrize(
    "source, shown",
    [
        (
            "/data/p/Class2D/job012/run_it025_classes.mrcs",
            "Class2D/job012/run_it025_classes.mrcs",
        ),
        ("P3/J42/J42_020_class_averages.cs", "P3/J42/J42_020_class_averages.cs"),
        ("/data/stacks/classes.mrcs", "stacks/classes.mrcs"),
        ("classes.mrcs", "classes.mrcs"),
    ],
)
def test_a_bare_stack_is_titled_by_its_folder_and_name(
    tmp_path: Path, source: str, shown: str
) -> None:
    classes = ClassAverages.create(
        np.zeros((2, 16, 16)), provenance=Provenance("mrcs", (source,), "")
    )
    text = write_review_page(
        tmp_path / "r.html", classes, make_selection(classes)
    ).read_text()
    assert f"<title>Review: {shown}</title>" in text
    # A job name, when known, is the title.
    named = dataclasses.replace(
        classes, provenance=Provenance("relion", (source,), "Class2D/job013")
    )
    text = write_review_page(
        tmp_path / "n.html", named, make_selection(named)
    ).read_text()
    assert "<title>Review: Class2D/job013</title>" in text


def test_the_storage_key_is_the_runs_own(tmp_path: Path) -> None:
    """Decisions kept in the browser belong to one run: another model, job, score or
    decision (apply-selection) gives another key; the same run the same key."""
    classes = ClassAverages.create(
        np.zeros((3, 16, 16)), provenance=Provenance("relion", ("a.star",), "job1")
    )
    base = make_selection(classes)

    def key(c: ClassAverages, s: Selection, name: str) -> str:
        return str(
            page_data(write_review_page(tmp_path / name, c, s).read_text())[
                "storageKey"
            ]
        )

    first = key(classes, base, "a.html")
    assert first.startswith("cryodiscovery-review:")
    assert key(classes, base, "b.html") == first
    others = [
        key(classes, dataclasses.replace(base, model_sha256="cd" * 32), "c.html"),
        key(classes, dataclasses.replace(base, scores=base.scores * 0.9), "d.html"),
        key(classes, dataclasses.replace(base, selected=~base.selected), "e.html"),
        key(
            dataclasses.replace(
                classes, provenance=Provenance("relion", ("a.star",), "job2")
            ),
            base,
            "f.html",
        ),
    ]
    assert len({first, *others}) == 5
    # the same run written into another output folder (score --out a / --out b)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    assert key(classes, base, "other/a.html") != first
    # a staging folder inside the output folder counts as the output folder
    staged = tmp_path / ".staging-x1"
    staged.mkdir()
    assert key(classes, base, ".staging-x1/review.html") == first
