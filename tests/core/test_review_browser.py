"""The review page in a real headless Chromium (selenium): a scored job's review.html opens
from file://, the threshold slider updates the counts, clicks and keys flip classes, and
the exported backup_selection.star and selection.csv hold exactly what the page shows;
``apply-selection`` takes that selection.csv, and the page it writes again opens with the
person's decisions. Pages with NaN scores or an unknown threshold, hostile names and
gapped class numbers open without a script error, show names literally, open with the
run's kept count and export one STAR row per class number.

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium (the ``dev`` extra);
skipped with the reason otherwise. A screenshot goes to ``tmp_path`` and, when
``CRYODISCOVERY_ARTEFACTS`` names a folder, there too.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import starfile
from cryodiscovery.core import cli
from cryodiscovery.core.classes import ClassAverages, Provenance
from cryodiscovery.core.io.star_tables import write_star
from cryodiscovery.core.report.review import write_review_page
from cryodiscovery.core.selection import Selection
from cryodiscovery.core.synthetic.export import write_relion_project
from cryodiscovery.core.synthetic.generator import SimulationConfig, simulate_run
from support import browser
from support.models import save_tiny_model

pytestmark = pytest.mark.slow

DATA_STAR = "Class2D/job001/run_it025_data.star"
SET_SLIDER = """
const slider = document.getElementById("threshold");
slider.value = arguments[0];
slider.dispatchEvent(new Event("input", {bubbles: true}));
slider.dispatchEvent(new Event("change", {bubbles: true}));
return Number(slider.value);
"""


@pytest.fixture(scope="module")
def scored_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cryodiscovery score`` on a generated 16-class RELION job: its output folder."""
    reason = browser.missing()
    if reason:
        pytest.skip(f"no browser for the review page test: {reason}")
    root = tmp_path_factory.mktemp("review-job")
    run = simulate_run(SimulationConfig(n_classes=16, box_sizes=(64,)), 4)
    write_relion_project(run, root / "project")
    model = save_tiny_model(root / "tiny.pt")
    out = root / "scored"
    argv = ["score", str(root / "project" / DATA_STAR), "--out", str(out)]
    assert cli.main([*argv, "--model", str(model), "--threshold", "0"]) == 0
    assert (out / "review.html").is_file()
    return out


def wait_for_file(path: Path, timeout: float = 20.0) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        partial = list(path.parent.glob(path.name + ".crdownload"))
        if path.is_file() and not partial and path.stat().st_size > 0:
            return path
        time.sleep(0.1)
    raise AssertionError(f"{path.name} was not downloaded")


def save_screenshot(driver: Any, tmp_path: Path) -> None:
    shot = tmp_path / "review_page.png"
    assert driver.save_screenshot(str(shot))
    artefacts = os.environ.get("CRYODISCOVERY_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artefacts) / shot.name)


def click(driver: Any, css: str) -> None:
    """Click the element, scrolled to the middle (not under the sticky header)."""
    element = driver.find_element("css selector", css)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def counts(driver: Any) -> tuple[int, int]:
    element = driver.find_element("id", "counts")
    return int(element.get_attribute("data-classes")), int(
        element.get_attribute("data-particles")
    )


def run_kept(job: Path) -> int:
    """How many classes the run kept, from its scores.csv."""
    with open(job / "scores.csv", newline="") as fh:
        return sum(r["selected"] == "1" for r in csv.DictReader(fh))


def test_slider_flips_and_exports_in_chromium(scored_job: Path, tmp_path: Path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with browser.headless_chromium(downloads) as driver:
        driver.get((scored_job / "review.html").resolve().as_uri())
        driver.find_element("css selector", "body[data-ready='true']")
        assert browser.severe_messages(driver) == []
        data = driver.execute_script(
            "return JSON.parse(document.getElementById('review-data').textContent)"
        )
        entries = {c["n"]: c for c in data["classes"]}
        scores = np.array(sorted(c["score"] for c in entries.values()))
        assert scores[-1] > scores[0], "the tiny model gave every class one score"
        assert counts(driver)[0] == run_kept(scored_job)

        # Between the middle scores: about half the classes stay above the cut.
        middle = len(scores) // 2
        threshold = driver.execute_script(
            SET_SLIDER, str((scores[middle - 1] + scores[middle]) / 2)
        )
        model = {
            n: c["score"] >= threshold and not c["few"] for n, c in entries.items()
        }
        particles = sum(c["count"] or 0 for n, c in entries.items() if model[n])
        assert counts(driver) == (sum(model.values()), round(particles))
        assert 0 < sum(model.values()) < len(entries)

        # Flip a kept and a rejected class by clicking, a third twice with keys (undone).
        kept_one = max(n for n in entries if model[n])
        rejected_one = min(n for n in entries if not model[n])
        for n in (kept_one, rejected_one):
            click(driver, f'.tile[data-class="{n}"] img')
        third = next(n for n in entries if n not in (kept_one, rejected_one))
        tile = driver.find_element("css selector", f'.tile[data-class="{third}"]')
        tile.send_keys(" ")
        assert "person" in tile.get_attribute("class")
        tile.send_keys("\ue007")  # Enter: back to the model's decision
        assert "person" not in tile.get_attribute("class")
        flipped = {kept_one, rejected_one}
        expected = {n: model[n] != (n in flipped) for n in entries}
        assert counts(driver)[0] == sum(expected.values())
        marked = driver.find_elements("css selector", ".tile.person")
        assert {int(t.get_attribute("data-class")) for t in marked} == flipped

        # A person's decision stays when the slider moves away and back.
        driver.execute_script(SET_SLIDER, "1")
        assert counts(driver)[0] == 1  # only the class flipped to keep
        driver.execute_script(SET_SLIDER, str(threshold))
        assert counts(driver)[0] == sum(expected.values())

        driver.find_element("id", "export-star").click()
        driver.find_element("id", "export-csv").click()
        star = wait_for_file(downloads / "backup_selection.star")
        table = wait_for_file(downloads / "selection.csv")
        click(driver, f'.tile[data-class="{kept_one}"] .info')
        assert driver.find_element("id", "details").is_displayed()
        save_screenshot(driver, tmp_path)
        assert browser.severe_messages(driver) == []

    check_exports(
        star, table, expected, flipped, data["maxClass"], scored_job, tmp_path
    )
    few = {n: c["few"] for n, c in entries.items()}
    check_applied(table, expected, few, scored_job, tmp_path)


def check_exports(
    star: Path,
    table: Path,
    expected: dict[int, bool],
    flipped: set[int],
    max_class: int,
    scored_job: Path,
    tmp_path: Path,
) -> None:
    flags = [int(expected.get(n, False)) for n in range(1, max_class + 1)]
    read = starfile.read(star, always_dict=True)
    assert list(read) == [""]
    assert read[""]["rlnSelected"].tolist() == flags
    reference = tmp_path / "reference.star"  # RELION's layout, as the RELION job writes
    write_star(reference, {"": pd.DataFrame({"rlnSelected": flags})})
    assert star.read_bytes() == reference.read_bytes()

    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(scored_job / "scores.csv", newline="") as fh:
        run_scores = {r["class_number"]: r["score"] for r in csv.DictReader(fh)}
    assert list(rows[0]) == ["class_number", "selected", "score", "source"]
    assert {int(r["class_number"]): r["selected"] == "1" for r in rows} == expected
    assert {r["class_number"]: r["score"] for r in rows} == run_scores
    assert {int(r["class_number"]) for r in rows if r["source"] == "person"} == flipped
    assert {r["source"] for r in rows} == {"model", "person"}


def check_applied(
    table: Path,
    expected: dict[int, bool],
    few: dict[int, bool],
    scored_job: Path,
    tmp_path: Path,
) -> None:
    """``apply-selection`` takes the exported CSV; the page it writes again opens with
    the person's decisions, those off the rule at the run's threshold marked as theirs."""
    job = tmp_path / "applied"
    shutil.copytree(scored_job, job)
    assert cli.main(["apply-selection", str(job), "--selection", str(table)]) == 0
    with open(job / "scores.csv", newline="") as fh:
        rows = {
            int(r["class_number"]): r["selected"] == "1" for r in csv.DictReader(fh)
        }
    assert rows == expected
    with browser.headless_chromium() as driver:
        driver.get((job / "review.html").resolve().as_uri())
        driver.find_element("css selector", "body[data-ready='true']")
        assert browser.severe_messages(driver) == []
        assert counts(driver)[0] == sum(expected.values()) == run_kept(job)
        marked = driver.find_elements("css selector", ".tile.person")
        # The run's threshold is 0: the rule keeps every class that has particles.
        theirs = {n for n, keep in expected.items() if keep != (not few[n])}
        assert {int(t.get_attribute("data-class")) for t in marked} == theirs
        assert theirs


def test_a_persons_applied_selection_opens_as_theirs(tmp_path: Path):
    """A run that applied a person's selection: the classes off the threshold rule open
    as the person's decisions, and stay so when the slider moves."""
    if browser.missing():
        pytest.skip(f"no browser for the review page test: {browser.missing()}")
    rng = np.random.default_rng(2)
    classes = ClassAverages.create(rng.normal(size=(6, 32, 32)))
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.7, 0.3])
    selected = np.array([True, True, False, False, True, False])  # 2 and 3 flipped
    reasons = (
        "person: kept",
        "person: kept (model: score)",
        "person: rejected (model: kept)",
        "person: rejected (model: score)",
        "person: kept",
        "person: rejected (model: score)",
    )
    selection = Selection(
        class_numbers=classes.class_numbers,
        scores=scores,
        selected=selected,
        threshold=0.5,
        threshold_source="adaptive",
        mode="image-only",
        model_sha256="ab" * 32,
        model_name="test",
        reasons=reasons,
    )
    page = write_review_page(tmp_path / "review.html", classes, selection)
    with browser.headless_chromium() as driver:
        driver.get(page.as_uri())
        driver.find_element("css selector", "body[data-ready='true']")
        marked = driver.find_elements("css selector", ".tile.person")
        assert {int(t.get_attribute("data-class")) for t in marked} == {2, 3}
        assert counts(driver)[0] == 3
        driver.execute_script(SET_SLIDER, "0.75")  # the model keeps 1 and 3 only
        assert counts(driver)[0] == 2  # 1, and 2 kept by the person; 3 rejected


HOSTILE_JOB = "job<script>alert(1)</script>&\"'"
HOSTILE_KIND = "junk<!--<script"


def hostile_run() -> tuple[ClassAverages, Selection]:
    """Six classes numbered with gaps (5..20), a NaN score, too few particles and an
    empty class, a job name and a kind with markup, decided as select_classes does
    (threshold 0.5, at least 10 particles; a NaN score is not below the threshold)."""
    rng = np.random.default_rng(3)
    classes = ClassAverages.create(
        rng.normal(size=(6, 32, 32)),
        class_numbers=[5, 8, 11, 13, 17, 20],
        metadata={"particle_count": [100, 100, 3, 0, 100, 100]},
        kinds=["good", "", HOSTILE_KIND, "", "", ""],
        provenance=Provenance("relion", ("run_it025_data.star",), HOSTILE_JOB),
    )
    selection = Selection(
        class_numbers=classes.class_numbers,
        scores=np.array([0.9, np.nan, 0.8, 0.7, 0.3, 0.6]),
        selected=np.array([True, True, False, False, False, True]),
        threshold=0.5,
        threshold_source="user",
        mode="image+metadata",
        model_sha256="ab" * 32,
        model_name="<b>model</b>",
        reasons=("", "", "min_particles", "min_particles", "score", ""),
    )
    return classes, selection


def test_nan_scores_hostile_names_and_gapped_numbers(tmp_path: Path):
    if browser.missing():
        pytest.skip(f"no browser for the review page test: {browser.missing()}")
    classes, selection = hostile_run()
    page = write_review_page(tmp_path / "review.html", classes, selection)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with browser.headless_chromium(downloads) as driver:
        driver.get(page.as_uri())
        driver.find_element("css selector", "body[data-ready='true']")
        assert browser.severe_messages(driver) == []
        assert driver.title == f"Review: {HOSTILE_JOB}"
        assert driver.find_element("css selector", "h1").text == driver.title
        assert not driver.execute_script("return document.querySelector('h1 script')")
        # The run's decisions at load: 5, 8 (no score, but the run kept it) and 20.
        assert counts(driver)[0] == selection.n_selected == 3
        tile = driver.find_element("css selector", '.tile[data-class="8"]')
        assert "–" in tile.text and "person" not in tile.get_attribute("class")
        assert driver.execute_script(SET_SLIDER, "0") == 0
        assert counts(driver)[0] == 3  # 5, 17, 20: not 8 (no score), 11, 13 (few)
        driver.execute_script(SET_SLIDER, "0.55")
        assert counts(driver)[0] == 2  # 5, 20
        click(driver, "#reset-threshold")
        assert counts(driver)[0] == 3
        click(driver, '.tile[data-class="11"] .info')
        details = driver.find_element("id", "details").text
        assert HOSTILE_KIND in details and "too few particles" in details
        driver.find_element("id", "export-star").click()
        star = wait_for_file(downloads / "backup_selection.star")
        assert browser.severe_messages(driver) == []

        for threshold in (math.nan, None):
            missing = dataclasses.replace(selection, threshold=threshold)
            page = write_review_page(unknown / "review.html", classes, missing)
            driver.get(page.as_uri())
            driver.find_element("css selector", "body[data-ready='true']")
            assert browser.severe_messages(driver) == []
            assert counts(driver)[0] == 3
            assert driver.find_element("id", "threshold-value").text == "–"
            driver.execute_script(SET_SLIDER, "0.55")
            assert counts(driver)[0] == 2
            assert driver.find_element("id", "threshold-value").text == "0.550"
            click(driver, "#reset-threshold")
            assert counts(driver)[0] == 3
            assert browser.severe_messages(driver) == []

    # One row per class number 1..20 (0 for numbers the job lacks), 1 where kept.
    flags = starfile.read(star, always_dict=True)[""]["rlnSelected"].tolist()
    assert len(flags) == 20
    assert [n for n, f in enumerate(flags, 1) if f == 1] == [5, 8, 20]
