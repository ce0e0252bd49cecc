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
        browser.save_screenshot(driver, tmp_path / "review_page.png")
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


def persons_run(n_more: int = 0) -> tuple[ClassAverages, Selection]:
    """Six classes (and ``n_more`` others the model rejects) of a run that applied a
    person's selection at threshold 0.5: the person kept 2 and rejected 3 against the
    model; a bare stack, without a job name."""
    n = 6 + n_more
    rng = np.random.default_rng(2)
    classes = ClassAverages.create(
        rng.normal(size=(n, 32, 32)),
        metadata={"particle_count": rng.integers(10, 5000, n)},
        provenance=Provenance(
            "mrcs", ("/data/p/Class2D/job012/run_it025_classes.mrcs",), ""
        ),
    )
    scores = np.concatenate(
        [[0.9, 0.2, 0.8, 0.1, 0.7, 0.3], rng.uniform(0, 0.45, n_more)]
    )
    selected = np.zeros(n, dtype=bool)
    selected[[0, 1, 4]] = True  # 2 kept, 3 rejected by the person
    reasons = (
        "person: kept",
        "person: kept (model: score)",
        "person: rejected (model: kept)",
        "person: rejected (model: score)",
        "person: kept",
        *["person: rejected (model: score)"] * (1 + n_more),
    )
    selection = Selection(
        class_numbers=classes.class_numbers,
        scores=scores,
        selected=selected,
        threshold=0.5,
        threshold_source="adaptive, overridden by a person",
        mode="image-only",
        model_sha256="ab" * 32,
        model_name="test",
        reasons=reasons,
    )
    return classes, selection


def open_page(driver: Any, page: Path) -> None:
    driver.get(page.as_uri())
    driver.find_element("css selector", "body[data-ready='true']")


def test_a_persons_applied_selection_opens_as_theirs(tmp_path: Path):
    """A run that applied a person's selection: the classes off the threshold rule open
    as the person's decisions, and stay so when the slider moves."""
    if browser.missing():
        pytest.skip(f"no browser for the review page test: {browser.missing()}")
    page = write_review_page(tmp_path / "review.html", *persons_run())
    with browser.headless_chromium() as driver:
        open_page(driver, page)
        assert driver.title == "Review: Class2D/job012/run_it025_classes.mrcs"
        marked = driver.find_elements("css selector", ".tile.person")
        assert {int(t.get_attribute("data-class")) for t in marked} == {2, 3}
        assert counts(driver)[0] == 3
        driver.execute_script(SET_SLIDER, "0.75")  # the model keeps 1 and 3 only
        assert counts(driver)[0] == 2  # 1, and 2 kept by the person; 3 rejected


def details_rows(driver: Any) -> dict[str, str]:
    """The open details panel's table: label -> value."""
    rows = driver.find_elements("css selector", "#details tr")
    cells = [r.find_elements("tag name", "td") for r in rows]
    return {c[0].text: c[1].text for c in cells}


def test_details_follow_every_change_and_open_with_i_or_I(tmp_path: Path):
    """The open details show the run's and the model's decision as separate rows and
    are redrawn on a flip, a slider move, Clear and the run button; i and I open them."""
    if browser.missing():
        pytest.skip(f"no browser for the review page test: {browser.missing()}")
    page = write_review_page(tmp_path / "review.html", *persons_run())
    with browser.headless_chromium() as driver:
        open_page(driver, page)
        tile = driver.find_element("css selector", '.tile[data-class="3"]')
        tile.send_keys("I")
        assert driver.find_element("id", "details").is_displayed()
        rows = details_rows(driver)
        assert rows["Run decision"] == "rejected (a person)"
        assert rows["Model's decision at the run's threshold"] == "kept"
        assert rows["Your decision"] == "reject"
        assert "(person:" not in driver.find_element("id", "details").text
        tile.send_keys("\ue00c")  # Escape
        assert not driver.find_element("id", "details").is_displayed()

        tile = driver.find_element("css selector", '.tile[data-class="2"]')
        tile.send_keys("i")
        rows = details_rows(driver)
        assert rows["Run decision"] == "kept (a person)"
        assert rows["Model's decision at the run's threshold"] == (
            "rejected (score below the threshold)"
        )
        assert (rows["Your decision"], rows["Shown as"]) == ("keep", "kept")
        tile.send_keys(" ")  # back to the model's decision
        assert details_rows(driver)["Your decision"] == "none"
        assert details_rows(driver)["Shown as"] == "rejected"
        tile.send_keys(" ")
        assert details_rows(driver)["Your decision"] == "keep"
        driver.execute_script(SET_SLIDER, "0.15")
        rows = details_rows(driver)
        assert rows["Model's decision at 0.150"] == "kept"
        driver.execute_script(SET_SLIDER, "0.25")
        rows = details_rows(driver)
        assert (
            rows["Model's decision at 0.250"] == "rejected (score below the threshold)"
        )
        assert "Model's decision at 0.150" not in rows
        driver.find_element("id", "clear-flips").click()
        assert details_rows(driver)["Your decision"] == "none"
        driver.find_element("id", "reset-threshold").click()
        rows = details_rows(driver)
        assert not any(k.startswith("Model's decision at 0.") for k in rows)
        assert rows["Shown as"] == "rejected"
        assert browser.severe_messages(driver) == []


PAGE_STATE = """
const note = document.getElementById("restored");
const event = new Event("beforeunload", {cancelable: true});
window.dispatchEvent(event);  // true when a listener asks before leaving
const person = [...document.querySelectorAll(".tile.person")];
return {
  unsaved: document.body.dataset.unsaved,
  asks: event.defaultPrevented,
  note: note.hidden ? null : note.textContent,
  person: person.map((t) => Number(t.dataset.class)).sort((a, b) => a - b),
};
"""


def page_state(driver: Any) -> dict[str, Any]:
    """Whether the page holds unexported decisions and asks before leaving, its
    restored note (``None`` when hidden) and the classes marked as a person's."""
    return driver.execute_script(PAGE_STATE)


def test_decisions_survive_a_reload_and_leaving_asks_first(tmp_path: Path):
    """Unexported decisions: leaving asks first (beforeunload) and a reload restores
    them, with a note; an export or Clear ends the asking; a page whose storage throws
    still works."""
    if browser.missing():
        pytest.skip(f"no browser for the review page test: {browser.missing()}")
    classes, selection = hostile_run()
    page = write_review_page(tmp_path / "review.html", classes, selection)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with browser.headless_chromium(downloads) as driver:
        open_page(driver, page)
        assert page_state(driver) == {
            "unsaved": "false",
            "asks": False,
            "note": None,
            "person": [],
        }
        click(driver, '.tile[data-class="17"] img')
        assert page_state(driver) == {
            "unsaved": "true",
            "asks": True,
            "note": None,
            "person": [17],
        }
        driver.refresh()
        driver.find_element("css selector", "body[data-ready='true']")
        state = page_state(driver)
        assert state["person"] == [17] and state["asks"]
        assert state["note"] == (
            "restored 1 decision from this browser; Clear to discard"
        )
        assert counts(driver)[0] == 4

        click(driver, "#export-csv")
        wait_for_file(downloads / "selection.csv")
        assert page_state(driver)["asks"] is False
        driver.execute_script(SET_SLIDER, "0.55")  # unexported again
        assert page_state(driver)["asks"] is True
        driver.refresh()
        driver.find_element("css selector", "body[data-ready='true']")
        state = page_state(driver)
        assert state["person"] == [17] and state["asks"]
        assert state["note"].startswith("restored 1 decision and threshold 0.550")
        assert driver.find_element("id", "threshold-value").text == "0.550"
        click(driver, "#clear-flips")
        click(driver, "#reset-threshold")
        assert page_state(driver) == {
            "unsaved": "false",
            "asks": False,
            "note": None,
            "person": [],
        }
        driver.refresh()
        driver.find_element("css selector", "body[data-ready='true']")
        assert page_state(driver)["note"] is None
        assert counts(driver)[0] == selection.n_selected

        # Another run's page (other scores) does not take this one's decisions.
        click(driver, '.tile[data-class="17"] img')
        other = dataclasses.replace(selection, scores=selection.scores * 0.99)
        page2 = write_review_page(tmp_path / "other" / "review.html", classes, other)
        open_page(driver, page2)
        assert page_state(driver)["person"] == []
        assert browser.severe_messages(driver) == []

    with browser.headless_chromium() as driver:
        browser.run_before_pages(driver, browser.STORAGE_REFUSED)
        open_page(driver, page)
        assert driver.execute_script(
            "try { localStorage; return false } catch (e) { return true }"
        )
        click(driver, '.tile[data-class="17"] img')
        assert page_state(driver)["person"] == [17]
        assert page_state(driver)["asks"] is True
        assert counts(driver)[0] == 4
        assert browser.severe_messages(driver) == []


def header_box(driver: Any) -> dict[str, float]:
    return driver.execute_script(
        "const box = (s) => document.querySelector(s).getBoundingClientRect();"
        "const h = box('header'), g = box('#histogram'), c = box('.controls');"
        "return {header: h.height, view: innerHeight, histTop: g.top - h.top,"
        " histLeft: g.left, histHeight: g.height, controlsRight: c.right}"
    )


def test_the_header_is_compact(tmp_path: Path):
    """At 800x600 the sticky header takes at most 35% of the window (the histogram
    behind a toggle), at 1400x900 the histogram sits beside the controls even for a
    person's run; screenshots of both."""
    if browser.missing():
        pytest.skip(f"no browser for the review page test: {browser.missing()}")
    page = write_review_page(tmp_path / "review.html", *persons_run(34))
    with browser.headless_chromium(size=(800, 600)) as driver:
        open_page(driver, page)
        assert driver.find_element("id", "reset-threshold").text == (
            "run: person's selection"
        )
        box = header_box(driver)
        assert box["header"] <= 0.35 * box["view"], box
        assert box["histHeight"] == 0
        browser.save_screenshot(driver, tmp_path / "review_header_800x600.png")
        # The restored note still fits.
        click(driver, '.tile[data-class="1"] img')
        driver.refresh()
        driver.find_element("css selector", "body[data-ready='true']")
        assert page_state(driver)["note"]
        box = header_box(driver)
        assert box["header"] <= 0.35 * box["view"], box
        toggle = driver.find_element("id", "histogram-toggle")
        toggle.click()
        assert toggle.get_attribute("aria-expanded") == "true"
        assert header_box(driver)["histHeight"] > 0
        assert browser.severe_messages(driver) == []
    with browser.headless_chromium(size=(1400, 900)) as driver:
        open_page(driver, page)
        assert not driver.find_element("id", "histogram-toggle").is_displayed()
        box = header_box(driver)
        assert box["histHeight"] > 0 and box["histTop"] < 20, box
        assert box["histLeft"] >= box["controlsRight"], box
        assert box["header"] <= 0.35 * box["view"], box
        browser.save_screenshot(driver, tmp_path / "review_header_1400x900.png")
        assert browser.severe_messages(driver) == []


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
