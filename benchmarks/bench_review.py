"""Benchmark: the review page's size and how fast it opens and reacts in a browser.

Writes ``review.html`` for 100 and 300 classes at a 256 px box (shown at 128 px): 60
generated classes, repeated under new class numbers (generating 300 large classes takes
minutes, and the size per class is what counts), prints the file size (and the part of
it that is the class averages' base64 PNGs) and the time to write it, then opens each
page in a headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
selenium, as the browser test does) and prints the time from navigation to the page's
ready mark and the time one slider move takes (counts, 300 tiles, histogram, layout).
Best of ``--repeats``. Without a browser it prints why and skips the browser figures.

    python benchmarks/bench_review.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cryodiscovery.core.classes import METADATA_FIELDS, ClassAverages
from cryodiscovery.core.report.review import write_review_page
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support/
from bench_report import fake_selection  # uniform scores, kept from 0.5
from support import browser

#: One slider move, timed in the page up to a forced layout.
MOVE_SLIDER = """
const slider = document.getElementById("threshold");
const start = performance.now();
slider.value = arguments[0];
slider.dispatchEvent(new Event("input", {bubbles: true}));
document.body.offsetHeight;
return performance.now() - start;
"""


def tiled(classes: ClassAverages, n: int) -> ClassAverages:
    """``n`` classes numbered 1..n, cycling through ``classes``."""
    idx = np.arange(n) % len(classes)
    return ClassAverages.create(
        classes.images[idx],
        pixel_size=classes.pixel_size,
        metadata={name: classes.field(name)[idx] for name in METADATA_FIELDS},
        provenance=classes.provenance,
    )


def open_times(page: Path, repeats: int) -> tuple[float, float]:
    """Best (navigation to ready, slider move) in ms over ``repeats`` fresh loads."""
    ready, move = [], []
    with browser.headless_chromium() as driver:
        for _ in range(repeats):
            driver.get(page.as_uri())
            driver.find_element("css selector", "body[data-ready='true']")
            ready.append(driver.execute_script("return window.reviewReadyMs"))
            move.append(driver.execute_script(MOVE_SLIDER, "0.3"))
    return min(ready), min(move)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    t0 = time.perf_counter()
    config = SimulationConfig(n_classes=60, box_sizes=(256,))
    generated = simulate_class_averages(config, 3)
    print(f"generated 60 classes at 256 px in {time.perf_counter() - t0:.1f} s")
    reason = browser.missing()
    if reason:
        print(f"no browser, open times skipped: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100, 300):
            classes = tiled(generated, n)
            page = Path(tmp) / f"review_{n}.html"
            t0 = time.perf_counter()
            write_review_page(page, classes, fake_selection(classes))
            took = time.perf_counter() - t0
            text = page.read_text(encoding="utf-8")
            images = sum(map(len, re.findall(r"data:image/png;base64,[^\"]+", text)))
            line = (
                f"review.html {n:3d} classes, box 256 px: "
                f"{page.stat().st_size / 1e6:.3f} MB ({images / 1e6:.3f} MB images), "
                f"written in {took:.2f} s"
            )
            if not reason:
                ready, move = open_times(page, args.repeats)
                line += f"; opens in {ready:.0f} ms, slider move {move:.1f} ms"
            print(line)


if __name__ == "__main__":
    main()
