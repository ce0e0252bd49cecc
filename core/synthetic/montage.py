"""A labelled montage PNG of class averages (class number, kind, label per tile)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryodiscovery.core.classes import ClassAverages, Label
from cryodiscovery.core.outputs import atomic_path

_COLOURS = {
    int(Label.SELECTED): (0.10, 0.60, 0.31),
    int(Label.REJECTED): (0.84, 0.19, 0.15),
}
_GREY = (0.53, 0.53, 0.53)


def tile_canvas(
    images: npt.NDArray[np.float32], columns: int, border: int = 3, gap: int = 14
) -> tuple[npt.NDArray[np.float64], int, int]:
    """Tiles on one RGB canvas, each stretched to its 1st-99.5th percentile.

    Returns the ``(H, W, 3)`` canvas and the tile pitch (x, y) in pixels; tile ``i``
    starts at ``(border + (i % columns) * pitch_x, gap + (i // columns) * pitch_y)`` and
    its frame (``border`` wide) is left white for the caller to colour.
    """
    n, box = len(images), images.shape[-1]
    rows = math.ceil(n / columns)
    pitch_x, pitch_y = box + 2 * border + 4, box + 2 * border + gap
    canvas = np.ones((rows * pitch_y + gap, columns * pitch_x, 3))
    for i, img in enumerate(images):
        lo, hi = np.percentile(img, [1.0, 99.5])
        norm = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        x0 = (i % columns) * pitch_x + border
        y0 = (i // columns) * pitch_y + gap + border
        canvas[y0 : y0 + box, x0 : x0 + box, :] = norm[:, :, None]
    return canvas, pitch_x, pitch_y


def render_montage(
    classes: ClassAverages,
    path: Path,
    *,
    columns: int = 10,
    max_tiles: int = 200,
    title: str = "",
) -> Path:
    """Write a grid of the first ``max_tiles`` classes to ``path`` (PNG, atomically).

    Each tile is contrast-stretched on its own, framed green (selected), red (rejected)
    or grey (unknown) and captioned ``#number kind``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(len(classes), max_tiles)
    if n == 0:
        raise ValueError("no classes to draw")
    cols = min(columns, n)
    border, box = 3, classes.box_size
    canvas, px, py = tile_canvas(classes.images[:n], cols, border)
    scale = 110.0 / box  # about 110 screen pixels per tile at 100 dpi
    height, width = canvas.shape[0] * scale / 100, canvas.shape[1] * scale / 100
    fig = plt.figure(figsize=(width, height + (0.3 if title else 0.0)), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + (0.3 if title else 0.0))))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for i in range(n):
        colour = _COLOURS.get(int(classes.labels[i]), _GREY)
        x0, y0 = (i % cols) * px, (i // cols) * py + 14
        ax.add_patch(
            Rectangle(
                (x0 + border / 2 - 0.5, y0 + border / 2 - 0.5),
                box + border,
                box + border,
                fill=False,
                edgecolor=colour,
                linewidth=2.0,
            )
        )
        kind = classes.kinds[i] or (
            "good" if classes.labels[i] == Label.SELECTED else ""
        )
        ax.text(
            x0 + border,
            y0 - 2,
            f"#{classes.class_numbers[i]} {kind}",
            color=colour,
            fontsize=6.5,
            va="bottom",
            ha="left",
            clip_on=False,
        )
    if title:
        fig.suptitle(title, fontsize=9, y=0.995, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
