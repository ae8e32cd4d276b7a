"""Bounding boxes of WKB geometries, read from the bytes without building any geometry.

A box query over stored shapes must decode (``shapely.from_wkb``) only the rows that can meet
the box; decoding is most of the cost of reading a row group (about 1 µs per polygon vertex
ring). This kernel walks the WKB of a whole Arrow binary column (its ``offsets`` and ``data``
buffers) once and gives each row's ``(minx, miny, maxx, maxy)``.

Decisions:

* Both byte orders, ISO dimension codes (1000 Z, 2000 M, 3000 ZM) and EWKB flags (Z, M,
  SRID) are read; only x and y enter the box.
* Point, LineString, Polygon and their Multi* forms are walked. Anything else (collections,
  curves, malformed bytes) gives the unbounded box (-inf, -inf, inf, inf): such a row is always
  a candidate and the exact test after decoding decides. Empty geometries give NaN: they meet
  nothing.
* The first numba call in a process costs about 0.25 s even from numba's cache (numba imports
  its array library and starts LLVM), as much as shapely takes to decode ~150k polygons.
  :func:`wkb_bounds_loaded` tells callers whether that cost is already paid, so a first small
  selection can be decoded whole instead. (A background warm-up was tried: it holds the GIL
  while the first queries run and slowed them more than it saved.)
* A run of coordinates in the host's byte order is viewed in place as float64 (WKB has no
  alignment; numpy and x86/ARM64 loads accept unaligned views); the other byte order is read
  byte by byte through an 8-byte scratch.

Pure numpy/numba: no I/O.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

__all__ = ["column_bounds", "wkb_bounds", "wkb_bounds_loaded"]

_UNKNOWN = -1  # returned as the end position when a row cannot be walked
_LITTLE_HOST = np.little_endian


@numba.njit(cache=True, inline="always")
def _u32(data: np.ndarray, pos: int, little: bool) -> int:
    if little:
        return (
            np.int64(data[pos])
            | (np.int64(data[pos + 1]) << 8)
            | (np.int64(data[pos + 2]) << 16)
            | (np.int64(data[pos + 3]) << 24)
        )
    return (
        np.int64(data[pos + 3])
        | (np.int64(data[pos + 2]) << 8)
        | (np.int64(data[pos + 1]) << 16)
        | (np.int64(data[pos]) << 24)
    )


@numba.njit(cache=True, inline="always")
def _f64(data: np.ndarray, pos: int, little: bool, scratch: np.ndarray) -> float:
    swap = little != _LITTLE_HOST
    for i in range(8):
        scratch[i] = data[pos + 7 - i] if swap else data[pos + i]
    return scratch.view(np.float64)[0]


@numba.njit(cache=True)
def _header(data: np.ndarray, pos: int, end: int) -> tuple[int, int, bool, int]:
    """(base type, coordinates per point, little endian, position after the header), or a
    base type of -1 when the header cannot be read."""
    if pos + 5 > end:
        return -1, 0, True, pos
    order = data[pos]
    if order > 1:
        return -1, 0, True, pos
    little = order == 1
    code = _u32(data, pos + 1, little)
    pos += 5
    ndim = 2
    if code & 0x80000000:  # EWKB Z
        ndim += 1
    if code & 0x40000000:  # EWKB M
        ndim += 1
    if code & 0x20000000:  # EWKB SRID follows the type
        pos += 4
    code &= 0x0FFFFFFF
    thousands = code // 1000
    if thousands == 1 or thousands == 2:
        ndim += 1
    elif thousands == 3:
        ndim += 2
    return code % 1000, ndim, little, pos


@numba.njit(cache=True)
def _points(
    data: np.ndarray,
    pos: int,
    end: int,
    n: int,
    ndim: int,
    little: bool,
    box: np.ndarray,
    scratch: np.ndarray,
) -> int:
    if n < 0 or pos + n * ndim * 8 > end:
        return _UNKNOWN
    if little and _LITTLE_HOST:  # the run of coordinates viewed in place as float64
        coords = data[pos : pos + n * ndim * 8].view(np.float64)
        for j in range(0, n * ndim, ndim):
            x, y = coords[j], coords[j + 1]
            if x == x and y == y:
                box[0] = min(box[0], x)
                box[1] = min(box[1], y)
                box[2] = max(box[2], x)
                box[3] = max(box[3], y)
        return pos + n * ndim * 8
    for _ in range(n):
        x = _f64(data, pos, little, scratch)
        y = _f64(data, pos + 8, little, scratch)
        if x == x and y == y:  # an empty point is stored as NaN coordinates
            box[0] = min(box[0], x)
            box[1] = min(box[1], y)
            box[2] = max(box[2], x)
            box[3] = max(box[3], y)
        pos += ndim * 8
    return pos


@numba.njit(cache=True)
def _simple(
    data: np.ndarray, pos: int, end: int, kind: int, ndim: int, little: bool, box, scratch
) -> int:
    """Walks one Point (1), LineString (2) or Polygon (3) body starting at ``pos``."""
    if kind == 1:
        return _points(data, pos, end, 1, ndim, little, box, scratch)
    if pos + 4 > end:
        return _UNKNOWN
    count = _u32(data, pos, little)
    pos += 4
    if kind == 2:
        return _points(data, pos, end, count, ndim, little, box, scratch)
    for _ in range(count):  # rings
        if pos + 4 > end:
            return _UNKNOWN
        n = _u32(data, pos, little)
        pos = _points(data, pos + 4, end, n, ndim, little, box, scratch)
        if pos == _UNKNOWN:
            return _UNKNOWN
    return pos


@numba.njit(cache=True, nogil=True)
def wkb_bounds(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """(n, 4) float64 bounds of the ``n = len(offsets) - 1`` WKB values
    ``data[offsets[i]:offsets[i + 1]]``; NaN rows are empty, infinite rows unknown."""
    n = len(offsets) - 1
    out = np.empty((n, 4), np.float64)
    scratch = np.empty(8, np.uint8)
    box = np.empty(4, np.float64)
    for i in range(n):
        start, end = np.int64(offsets[i]), np.int64(offsets[i + 1])
        box[0], box[1], box[2], box[3] = np.inf, np.inf, -np.inf, -np.inf
        kind, ndim, little, pos = _header(data, start, end)
        if 1 <= kind <= 3:
            pos = _simple(data, pos, end, kind, ndim, little, box, scratch)
        elif 4 <= kind <= 6 and pos + 4 <= end:
            parts = _u32(data, pos, little)
            pos += 4
            for _ in range(parts):
                sub, sub_ndim, sub_little, pos = _header(data, pos, end)
                if sub != kind - 3:
                    pos = _UNKNOWN
                    break
                pos = _simple(data, pos, end, sub, sub_ndim, sub_little, box, scratch)
                if pos == _UNKNOWN:
                    break
        else:
            pos = _UNKNOWN
        if pos == _UNKNOWN:
            out[i, 0], out[i, 1], out[i, 2], out[i, 3] = -np.inf, -np.inf, np.inf, np.inf
        elif box[0] > box[2]:  # no coordinates: empty
            out[i, :] = np.nan
        else:
            out[i, :] = box
    return out


_loaded = threading.Event()


def wkb_bounds_loaded() -> bool:
    """Whether :func:`wkb_bounds` has run in this process (the JIT has started)."""
    return _loaded.is_set()


def column_bounds(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """:func:`wkb_bounds`, remembering that the kernel is now loaded."""
    out = wkb_bounds(offsets, data)
    _loaded.set()
    return out
