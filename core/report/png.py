"""PNG encoding of 8-bit images with numpy and zlib only (no imaging library): what the
review page embeds as ``data:`` URIs."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import numpy.typing as npt


def _filtered_rows(x: npt.NDArray[np.int16], channels: int) -> npt.NDArray[np.uint8]:
    """PNG rows with their filter byte: per row the filter (None, Sub, Up, Average,
    Paeth) with the smallest sum of absolute differences, libpng's heuristic."""
    a = np.zeros_like(x)  # left neighbour (same channel)
    a[:, channels:] = x[:, :-channels]
    b = np.zeros_like(x)  # above
    b[1:] = x[:-1]
    c = np.zeros_like(x)  # above left
    c[1:] = a[:-1]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    predictors = np.stack([np.zeros_like(x), a, b, (a + b) // 2, paeth])
    candidates = ((x[None] - predictors) % 256).astype(np.uint8)
    cost = np.minimum(candidates, 256 - candidates.astype(np.int16)).sum(axis=2)
    best = np.argmin(cost, axis=0)
    rows = candidates[best, np.arange(x.shape[0])]
    return np.concatenate([best[:, None].astype(np.uint8), rows], axis=1)


def png_bytes(pixels: npt.ArrayLike) -> bytes:
    """Encode ``(h, w)`` grey or ``(h, w, 3)`` RGB uint8 pixels as a PNG (8 bits per
    channel, per-row adaptive filters, deflate level 6).

    A class average at 128 px takes about 7 KB (Pillow's optimised PNG is no smaller);
    grey images are stored as grey, a third of RGB.
    """
    arr = np.ascontiguousarray(pixels, dtype=np.uint8)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"pixels must be (h, w) or (h, w, 3), got {arr.shape}")
    height, width = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else 3
    raw = _filtered_rows(arr.reshape(height, -1).astype(np.int16), channels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    colour = 0 if channels == 1 else 2  # grey or RGB
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    # Z_FILTERED suits filtered continuous-tone rows: 5% smaller than the default.
    # Level 6: 1.7% larger than level 9 on class averages, 4-5x faster.
    deflate = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)
    data = deflate.compress(raw.tobytes()) + deflate.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )


def png_data_uri(pixels: npt.ArrayLike) -> str:
    """Pixels (as :func:`png_bytes` takes them) as a ``data:image/png;base64`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode()
