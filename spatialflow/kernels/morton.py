"""Kernels of the multiscale points index: grids, Morton keys, stable draws, level assignment.

The index follows neuroglancer's spatial index of precomputed annotations: level 0 is one
cell over the extent; each next level halves the cells along every axis whose cell is not
already at most half as long as another axis' cell (so cells stay close to square); at level
``l`` every point still in the pool is kept with the same probability ``p_l = min(1, limit /
max_count_l)`` (``max_count_l``: the most pool points in one cell of level ``l``), kept points
leave the pool, and the finest level keeps the rest.

Decisions:

* Coordinates are quantized once to ``BITS`` = 16 bits per axis over the extent (``ix``,
  ``iy``); a level's cell is ``(ix >> (BITS - bx), iy >> (BITS - by))``, with ``bx``/``by`` its
  splits per axis, so every level is computed from the same two small integers.
* The draw of a point at level ``l`` is ``splitmix64(hash(point key) ^ seed ^ level)`` scaled
  to [0, 1): a pure function of the point's content and the seed, independent of how the
  points are partitioned or ordered, and independent across levels (a point that failed at
  level ``l`` is re-drawn at ``l + 1`` with a fresh number, as the algorithm requires).
* The sort key of a point is ``level << 32 | morton(ix, iy)``: rows ordered by it are ordered
  by level, then along a Z-curve at full resolution (which, for square cells, also orders by
  the cell of every coarser level).

Pure numpy/numba: no Dask, no I/O.
"""

from __future__ import annotations

import numba
import numpy as np

from spatialflow.kernels.spatial import morton_codes

__all__ = [
    "BITS",
    "assign_levels",
    "cell_counts",
    "grid_levels",
    "level_keys",
    "quantize",
    "seeded_hash",
    "sort_keys",
]

BITS = 16
MAX_LEVELS = 2 * BITS + 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def grid_levels(width: float, height: float, max_bits: int = BITS) -> list[tuple[int, int]]:
    """Splits per axis ``(bx, by)`` of every possible level, coarse to fine (level 0 = (0, 0)),
    by the isotropy rule: an axis is halved unless its cell is at most half another's."""
    w = float(width) if width > 0 else 0.0
    h = float(height) if height > 0 else 0.0
    if w == 0 and h == 0:
        w = h = 1.0
    w = w or h
    h = h or w
    out = [(0, 0)]
    bx = by = 0
    while bx < max_bits or by < max_bits:
        cw, ch = w / 2**bx, h / 2**by
        sx = bx < max_bits and not cw <= ch / 2
        sy = by < max_bits and not ch <= cw / 2
        if not (sx or sy):  # one axis is done, the other still halves
            sx, sy = bx < max_bits, by < max_bits
        bx, by = bx + int(sx), by + int(sy)
        out.append((bx, by))
    return out


def quantize(
    x: np.ndarray, y: np.ndarray, lo: tuple[float, float], hi: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Integer cell coordinates in [0, 2**BITS) over the extent ``lo``..``hi``."""
    n = float(2**BITS)

    def one(v: np.ndarray, a: float, b: float) -> np.ndarray:
        span = b - a
        if span <= 0:
            return np.zeros(len(v), dtype=np.uint32)
        q = np.floor((np.asarray(v, dtype=np.float64) - a) / span * n)
        return np.clip(q, 0, n - 1).astype(np.uint32)

    return one(x, lo[0], hi[0]), one(y, lo[1], hi[1])


@numba.njit(cache=True)
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True)
def _seeded(h: np.ndarray, seed: np.uint64) -> np.ndarray:
    out = np.empty(h.size, dtype=np.uint64)
    for i in range(h.size):
        out[i] = _mix(h[i] ^ _mix(seed + np.uint64(0x9E3779B97F4A7C15)))
    return out


def seeded_hash(point_hash: np.ndarray, seed: int) -> np.ndarray:
    """Mix each point's content hash (uint64) with the seed."""
    return _seeded(np.ascontiguousarray(point_hash, dtype=np.uint64), np.uint64(seed & (2**64 - 1)))


@numba.njit(cache=True)
def _draw(h: np.uint64, level: int) -> float:
    z = _mix(h + np.uint64(level + 1) * np.uint64(0x9E3779B97F4A7C15))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def _assign(h: np.ndarray, probs: np.ndarray) -> np.ndarray:
    out = np.full(h.size, -1, dtype=np.int16)
    n_levels = probs.size
    for i in range(h.size):
        for lv in range(n_levels):
            if probs[lv] >= 1.0 or _draw(h[i], lv) < probs[lv]:
                out[i] = lv
                break
    return out


def assign_levels(h: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The level of each point given the per-level probabilities so far; -1: still in the pool."""
    return _assign(
        np.ascontiguousarray(h, dtype=np.uint64), np.ascontiguousarray(probs, dtype=np.float64)
    )


def level_keys(ix: np.ndarray, iy: np.ndarray, splits: tuple[int, int]) -> np.ndarray:
    """Morton code of each point's cell at a level with ``splits`` = (bx, by)."""
    bx, by = splits
    return morton_codes(ix >> np.uint32(BITS - bx), iy >> np.uint32(BITS - by))


def cell_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Occupied cells and their point counts (sparse)."""
    cells, counts = np.unique(keys, return_counts=True)
    return cells, counts.astype(np.int64)


def sort_keys(levels: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """``level << 32 | morton(ix, iy)``: the spatial-first order of the index."""
    return (np.asarray(levels, dtype=np.uint64) << np.uint64(32)) | morton_codes(ix, iy)
