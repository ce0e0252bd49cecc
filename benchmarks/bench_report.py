"""Benchmark: how long the selection outputs take to draw and write.

Times the gallery (one numpy canvas, FreeType text, PNG) for 50, 200 and 300 classes at
128 and 256 px boxes, the score histogram, and the whole ``write_selection_outputs``
without and with saliency overlays (shipped model, or ``--model``). Best of ``--repeats``.

    python benchmarks/bench_report.py [--repeats 3] [--model PATH]

Target (report helper brief): a 200-class gallery in about 1 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.report.selection_files import (
    render_gallery_pages,
    render_score_histogram,
    write_selection_outputs,
)
from cryodiscovery.core.selection import Selection, SelectionOptions, select_classes


def make_classes(n: int, box: int, seed: int = 0) -> ClassAverages:
    """Blobs in noise with counts and resolutions: realistic for drawing, not scoring."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:box, :box] - box / 2
    centres = rng.normal(0, box / 12, size=(n, 2))
    images = np.exp(
        -(
            (xx[None] - centres[:, :1, None]) ** 2
            + (yy[None] - centres[:, 1:, None]) ** 2
        )
        / (box / 6) ** 2
    ) + 0.3 * rng.normal(size=(n, box, box))
    return ClassAverages.create(
        images * (np.hypot(xx, yy) < box * 0.45),
        pixel_size=1.5,
        metadata={
            "particle_count": rng.integers(20, 5000, n),
            "resolution_A": rng.uniform(4, 30, n),
        },
    )


def fake_selection(classes: ClassAverages, seed: int = 0) -> Selection:
    scores = np.random.default_rng(seed).uniform(0, 1, len(classes))
    return Selection(
        class_numbers=classes.class_numbers,
        scores=scores,
        selected=scores >= 0.5,
        threshold=0.5,
        threshold_source="model",
        mode="image+metadata",
        model_sha256="0" * 64,
        model_name="bench",
        reasons=tuple("" if s >= 0.5 else "score" for s in scores),
    )


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for box in (128, 256):
            for n in (50, 200, 300):
                classes = make_classes(n, box)
                sel = fake_selection(classes)
                path = out / f"g{n}_{box}.png"
                t = best_of(
                    args.repeats, partial(render_gallery_pages, classes, sel, path)
                )
                size = path.stat().st_size / 1e6
                print(
                    f"gallery   {n:4d} classes, box {box} px: {t:6.2f} s ({size:.1f} MB)"
                )
        classes = make_classes(200, 128)
        sel = fake_selection(classes)
        t = best_of(args.repeats, lambda: render_score_histogram(sel, out / "h.png"))
        print(f"histogram  200 classes: {t:6.2f} s")
        scorer = load_scorer(args.model)
        sel = select_classes(classes, SelectionOptions(), scorer)
        for explain in (False, True):
            run = partial(
                write_selection_outputs,
                out / "run",
                classes,
                sel,
                argv=[],
                command="bench",
                explain=explain,
                scorer=scorer,
            )
            t = best_of(args.repeats, run)
            what = "with saliency" if explain else "no saliency  "
            print(f"all outputs, 200 classes at 128 px, {what}: {t:6.2f} s")


if __name__ == "__main__":
    main()
