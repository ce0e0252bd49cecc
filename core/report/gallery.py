"""Tile-grid pictures of class averages: framed, labelled tiles in titled sections, split
into pages, drawn on one numpy canvas with FreeType text and written as PNG.

One canvas and no matplotlib figure keep a 300-tile page well under a second; the text is
rasterised with matplotlib's bundled FreeType binding and DejaVu fonts, so no system font
is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from matplotlib import font_manager
from matplotlib import image as mpl_image
from matplotlib.ft2font import FT2Font

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
#: Okabe-Ito blue and vermillion: told apart with the common colour-vision deficiencies.
KEPT_COLOUR: RGB = (0, 114, 178)
REJECTED_COLOUR: RGB = (213, 94, 0)
TEXT_COLOUR: RGB = (20, 20, 20)
MUTED_COLOUR: RGB = (90, 90, 90)


def rgb01(colour: RGB) -> tuple[float, float, float]:
    """An RGB 0-255 colour as matplotlib's 0-1 tuple."""
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


_MARGIN, _GAP, _FRAME = 16, 10, 3
_TITLE_PX, _HEADER_PX, _LABEL_PX = 18, 15, 11
_LINE_H = _LABEL_PX + 3
_EMPTY_H = _LINE_H + 12
_MAX_WIDTH_PX = 2000

#: One label line under a tile: text flush left and text flush right.
LabelLine = tuple[str, str]


@dataclass(frozen=True)
class Section:
    """A titled run of tiles (e.g. the kept classes).

    Parameters
    ----------
    title:
        Header text, e.g. ``"Kept: 57 classes"``.
    colour:
        Frame and header colour, RGB 0-255.
    indices:
        ``(k,)`` positions into the grid's tiles, in display order.
    """

    title: str
    colour: RGB
    indices: npt.NDArray[np.int64]


@dataclass(frozen=True)
class TileGrid:
    """Everything one gallery shows.

    Parameters
    ----------
    tiles:
        ``(n, t, t, 3)`` uint8 RGB tiles, already contrast-stretched.
    labels:
        Per tile, its label lines (the same number of lines for every tile).
    sections:
        The sections, in page order; each tile may appear in at most one.
    title:
        Title line of every page.
    """

    tiles: npt.NDArray[np.uint8]
    labels: Sequence[Sequence[LabelLine]]
    sections: Sequence[Section]
    title: str


def resample_tiles(images: npt.ArrayLike, size: int) -> npt.NDArray[np.float32]:
    """Resample ``(n, h, w)`` images to ``(n, size, size)`` float32 (bilinear, antialiased)."""
    stack = np.asarray(images, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"images must be (n, h, w), got shape {stack.shape}")
    if stack.shape[0] == 0:
        return np.zeros((0, size, size), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(stack))[:, None]
    # Antialiased: a 256 px box shrunk to 96 px must not alias its noise into the tile.
    small = F.interpolate(
        tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return np.ascontiguousarray(small[:, 0].numpy(), dtype=np.float32)


def stretch_to_tiles(images: npt.ArrayLike, size: int) -> npt.NDArray[np.float32]:
    """Resample class averages to ``size`` px and stretch each to 0-1.

    Parameters
    ----------
    images:
        ``(n, h, w)`` class averages (any real dtype).
    size:
        Tile edge in pixels.

    Returns
    -------
    ``(n, size, size)`` float32 in [0, 1]: each tile mapped from its own 0.5th-99.5th
    percentile, as a viewer stretches each class, so faint and strong classes both show.
    """
    small = resample_tiles(images, size)
    if small.shape[0] == 0:
        return small
    flat = small.reshape(small.shape[0], -1)
    lo, hi = np.percentile(flat, [0.5, 99.5], axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = (small - lo[:, None, None]) / span[:, None, None]
    stretched: npt.NDArray[np.float32] = np.clip(out, 0.0, 1.0).astype(np.float32)
    return stretched


def to_rgb8(tiles: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """``(n, t, t)`` greys or ``(n, t, t, 3)`` colours in [0, 1] -> ``(n, t, t, 3)`` uint8."""
    arr = np.asarray(tiles, dtype=np.float32)
    u8 = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(u8[..., None], 3, axis=-1) if u8.ndim == 3 else u8


def tile_size_for(n_tiles: int) -> int:
    """Tile edge in px: larger when there are few tiles, never below 96 (labels fit)."""
    if n_tiles <= 40:
        return 128
    if n_tiles <= 100:
        return 112
    return 96


class TextPainter:
    """Draws text onto an RGB uint8 canvas with DejaVu Sans (regular and bold)."""

    def __init__(self) -> None:
        self._fonts: dict[bool, FT2Font] = {}
        # Labels repeat ("good", widths measured before drawing): rasterise each once.
        self._cache: dict[
            tuple[str, int, bool], tuple[npt.NDArray[np.float32], int]
        ] = {}

    def _font(self, bold: bool) -> FT2Font:
        if bold not in self._fonts:
            prop = font_manager.FontProperties(
                family="DejaVu Sans", weight="bold" if bold else "normal"
            )
            self._fonts[bold] = FT2Font(font_manager.findfont(prop))
        return self._fonts[bold]

    def bitmap(
        self, text: str, size_px: int, bold: bool = False
    ) -> tuple[npt.NDArray[np.float32], int]:
        """``(h, w)`` coverage 0-1 of ``text`` and its descent below the baseline (px)."""
        key = (text, size_px, bold)
        if key not in self._cache:
            self._cache[key] = self._rasterise(text, size_px, bold)
        return self._cache[key]

    def _rasterise(
        self, text: str, size_px: int, bold: bool
    ) -> tuple[npt.NDArray[np.float32], int]:
        font = self._font(bold)
        font.set_size(size_px, 72)  # points at 72 dpi are pixels
        font.set_text(text, 0.0)
        font.draw_glyphs_to_bitmap(antialiased=True)
        image = np.asarray(font.get_image(), dtype=np.float32) / 255.0
        return image, round(font.get_descent() / 64.0)

    def width(self, text: str, size_px: int, bold: bool = False) -> int:
        """Width of ``text`` in px."""
        return int(self.bitmap(text, size_px, bold)[0].shape[1]) if text else 0

    def fit(self, text: str, size_px: int, max_width: int, bold: bool = False) -> str:
        """``text``, shortened with an ellipsis until it is at most ``max_width`` px."""
        if self.width(text, size_px, bold) <= max_width:
            return text
        while text and self.width(text + "…", size_px, bold) > max_width:
            text = text[:-1]
        return text + "…" if text else ""

    def draw(
        self,
        canvas: npt.NDArray[np.uint8],
        text: str,
        x: int,
        baseline: int,
        size_px: int,
        colour: RGB = TEXT_COLOUR,
        *,
        bold: bool = False,
        right_align: bool = False,
    ) -> None:
        """Blend ``text`` onto ``canvas`` (``(H, W, 3)``), left edge (or right edge) at ``x``."""
        if not text:
            return
        alpha, descent = self.bitmap(text, size_px, bold)
        h, w = alpha.shape
        left = x - w if right_align else x
        top = baseline + descent - h
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, canvas.shape[0]), min(left + w, canvas.shape[1])
        if y1 <= y0 or x1 <= x0:
            return
        a = alpha[y0 - top : y1 - top, x0 - left : x1 - left, None]
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        ink = np.asarray(colour, dtype=np.float32)
        canvas[y0:y1, x0:x1] = np.round(region * (1.0 - a) + ink * a).astype(np.uint8)


def page_path(path: Path, page: int) -> Path:
    """``gallery.png`` for page 1, ``gallery_2.png`` for page 2, and so on."""
    return path if page == 1 else path.with_name(f"{path.stem}_{page}{path.suffix}")


def _paginate(
    sections: Sequence[Section], max_tiles: int
) -> list[list[tuple[int, npt.NDArray[np.int64], bool]]]:
    """Pages as lists of (section index, tile positions, continued from a previous page)."""
    pages: list[list[tuple[int, npt.NDArray[np.int64], bool]]] = [[]]
    room = max_tiles
    for s, section in enumerate(sections):
        idx = np.asarray(section.indices, dtype=np.int64)
        if idx.size == 0:
            pages[-1].append((s, idx, False))
            continue
        start = 0
        while start < idx.size:
            if room == 0:
                pages.append([])
                room = max_tiles
            chunk = idx[start : start + room]
            pages[-1].append((s, chunk, start > 0))
            start += chunk.size
            room -= chunk.size
    return pages


def render_grid(grid: TileGrid, path: Path, *, max_tiles: int = 300) -> list[Path]:
    """Write the grid as PNG pages ``path``, ``<stem>_2.png``, ... of at most ``max_tiles``.

    Returns the paths written, first page first.
    """
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1, got {max_tiles}")
    if len(grid.labels) != grid.tiles.shape[0]:
        raise ValueError(
            f"{len(grid.labels)} labels for {grid.tiles.shape[0]} tiles in the grid"
        )
    pages = _paginate(grid.sections, max_tiles)
    painter = TextPainter()
    written = []
    for number, segments in enumerate(pages, start=1):
        title = (
            grid.title
            if len(pages) == 1
            else f"{grid.title}  (page {number} of {len(pages)})"
        )
        canvas = _draw_page(grid, segments, title, painter)
        target = page_path(Path(path), number)
        mpl_image.imsave(target, canvas, format="png", pil_kwargs={"compress_level": 1})
        written.append(target)
    log.debug("wrote %d gallery page(s) from %s", len(written), path)
    return written


def _draw_page(
    grid: TileGrid,
    segments: list[tuple[int, npt.NDArray[np.int64], bool]],
    title: str,
    painter: TextPainter,
) -> npt.NDArray[np.uint8]:
    t = grid.tiles.shape[1]
    n_lines = max((len(lines) for lines in grid.labels), default=0)
    cell_w, cell_h = t + _GAP, t + _GAP + n_lines * _LINE_H + 2
    n_on_page = sum(int(idx.size) for _, idx, _ in segments)
    fit_cols = max((_MAX_WIDTH_PX - 2 * _MARGIN) // cell_w, 1)
    cols = int(min(max(math.ceil(math.sqrt(n_on_page * 1.6)), 6), fit_cols))
    width = max(
        2 * _MARGIN + cols * cell_w - _GAP,
        painter.width(title, _TITLE_PX, True) + 2 * _MARGIN,
    )
    header_h = _HEADER_PX + 14
    height = _MARGIN + _TITLE_PX + 10
    for _, idx, _ in segments:
        height += header_h + (
            math.ceil(idx.size / cols) * cell_h if idx.size else _EMPTY_H
        )
    height += _MARGIN
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    painter.draw(canvas, title, _MARGIN, _MARGIN + _TITLE_PX - 4, _TITLE_PX, bold=True)
    y = _MARGIN + _TITLE_PX + 10
    for s, idx, continued in segments:
        section = grid.sections[s]
        header = section.title + ("  (continued)" if continued else "")
        painter.draw(
            canvas,
            header,
            _MARGIN,
            y + _HEADER_PX,
            _HEADER_PX,
            section.colour,
            bold=True,
        )
        y += header_h
        if idx.size == 0:
            painter.draw(
                canvas, "none", _MARGIN, y + _LABEL_PX, _LABEL_PX, MUTED_COLOUR
            )
            y += _EMPTY_H
            continue
        for k, i in enumerate(idx):
            x0 = _MARGIN + (k % cols) * cell_w
            y0 = y + (k // cols) * cell_h
            _draw_tile(canvas, grid, int(i), x0, y0, section.colour, painter)
        y += math.ceil(idx.size / cols) * cell_h
    return canvas


def _draw_tile(
    canvas: npt.NDArray[np.uint8],
    grid: TileGrid,
    i: int,
    x0: int,
    y0: int,
    colour: RGB,
    painter: TextPainter,
) -> None:
    t = grid.tiles.shape[1]
    f = _FRAME
    canvas[y0 - f : y0 + t + f, x0 - f : x0 + t + f] = colour
    canvas[y0 : y0 + t, x0 : x0 + t] = grid.tiles[i]
    baseline = y0 + t + f + _LABEL_PX - 1
    for left, right in grid.labels[i]:
        right_w = painter.width(right, _LABEL_PX)
        left_fit = painter.fit(left, _LABEL_PX, t - right_w - 4 if right else t)
        painter.draw(canvas, left_fit, x0, baseline, _LABEL_PX)
        painter.draw(
            canvas, right, x0 + t, baseline, _LABEL_PX, colour, right_align=True
        )
        baseline += _LINE_H
