"""Where the points index cuts its rows into units (row groups), from the global histograms.

Planning on the client, after the level passes (plan/points_index.py): the spatial-first
copy's units follow the quadtree of each level over the coarse histogram bins (compact,
square-ish areas, never mixing levels, about ``cap`` rows each; a bin is never split, so a
very dense bin makes a larger unit); the feature-first copy's units are cut at feature changes
once a unit holds ``cap // 8`` rows and between the levels of a feature that would pass
``cap``. ``coarse_bits`` chooses how fine each level's histogram bins are. Pure numpy: no
Dask, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

from spatialflow.kernels.morton import BITS, COARSE_SHIFT, MAX_LEVELS

__all__ = ["coarse_bits", "feature_cuts", "spatial_cuts"]


def coarse_bits(
    grid: list[tuple[int, int]], probs: np.ndarray, totals: list[int], limit: int, cap: int
) -> np.ndarray:
    """Bits per axis of each level's histogram bins (at most 10): fine enough that a bin holds
    a small part of a unit, coarse enough that the histograms stay small. A bin is at least 4
    times finer along each axis than the level's cells times the units a full cell (about
    ``limit`` points) makes, and the level's expected points make about 16 bins a unit."""
    top = (32 - COARSE_SHIFT) // 2
    out = []
    for (bx, by), p, total in zip(grid, probs, totals, strict=True):
        per_cell = math.ceil(math.log(max(limit / cap, 1.0), 4)) + 2
        expected = max(1.0, 16.0 * float(p) * total / cap)
        out.append(min(top, max(max(bx, by) + per_cell, math.ceil(math.log(expected, 4)))))
    return np.array(out, dtype=np.int64)


def _deinterleave(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ix, iy) of Z-codes (even bits x, odd bits y)."""
    codes = codes.astype(np.uint64)
    ix = np.zeros(codes.shape, np.uint64)
    iy = np.zeros(codes.shape, np.uint64)
    for b in range((32 - COARSE_SHIFT) // 2):  # coarse cells: 10 bits a side
        ix |= ((codes >> np.uint64(2 * b)) & np.uint64(1)) << np.uint64(b)
        iy |= ((codes >> np.uint64(2 * b + 1)) & np.uint64(1)) << np.uint64(b)
    return ix, iy


_QUADRANTS = np.arange(4, dtype=np.uint64)


def _quadtree_runs(bins: np.ndarray, cum: np.ndarray, a: int, b: int, depth: int, cap: int) -> list:
    """Runs [start, end) of bins (one level, sorted) cut along the quadtree: a node of at
    most ``cap`` points is one run; a larger one is split in its four children, and
    consecutive runs inside one node are merged back while they stay within ``cap``."""
    rows = int(cum[b] - cum[a])
    levels_left = (32 - COARSE_SHIFT) // 2 - depth
    if rows <= cap or levels_left <= 0 or b - a <= 1:
        return [(a, b, rows)]
    shift = np.uint64(2 * (levels_left - 1))
    child = (bins[a:b] >> shift) & np.uint64(3)
    edges = [*(a + np.searchsorted(child, _QUADRANTS)).tolist(), b]
    runs: list[tuple[int, int, int]] = []
    for c in range(4):
        if edges[c + 1] > edges[c]:
            runs.extend(_quadtree_runs(bins, cum, edges[c], edges[c + 1], depth + 1, cap))
    merged: list[tuple[int, int, int]] = []
    for run in runs:
        if merged and merged[-1][2] + run[2] <= cap:
            merged[-1] = (merged[-1][0], run[1], merged[-1][2] + run[2])
        else:
            merged.append(run)
    return merged


def spatial_cuts(
    bins: np.ndarray, counts: np.ndarray, cap: int, lo: tuple, hi: tuple, bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Output partitions of the spatial-first order: start bin, level, rows, box of each.
    Partitions follow the quadtree of each level (so each covers a compact square-ish area)
    and never mix levels."""
    level_of = (bins >> np.uint64(32 - COARSE_SHIFT)).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    runs: list[tuple[int, int, int]] = []
    level_edges = np.flatnonzero(np.diff(level_of)) + 1
    for a, b in zip(
        np.concatenate([[0], level_edges]), np.concatenate([level_edges, [len(bins)]]), strict=True
    ):
        runs.extend(_quadtree_runs(bins, cum, int(a), int(b), 0, cap))
    # conservative boxes: the union of the coarse cells of each partition
    mask = np.uint64((1 << (32 - COARSE_SHIFT)) - 1)
    cx, cy = _deinterleave(bins & mask)
    side = 2 ** (COARSE_SHIFT // 2)
    cell = 2 ** ((32 - COARSE_SHIFT) // 2 - np.asarray(bits, dtype=np.int64))  # bin side, level
    span = np.array([hi[0] - lo[0], hi[1] - lo[1]], dtype=np.float64) / 2**BITS
    # each run's extremes in one reduction per axis (a loop over ~10^3 runs took ~25 ms):
    # segments [a, b) of the coordinates, padded so that an end at len(bins) is an index
    a_b = np.array([(a, b) for a, b, _ in runs], dtype=np.int64).reshape(-1)
    w = cell[level_of[a_b[0::2]]]

    def edges(c: np.ndarray, origin: float, step: float) -> tuple[np.ndarray, np.ndarray]:
        pad = np.append(c, 0)
        low = np.minimum.reduceat(pad, a_b)[0::2] * side
        high = (np.maximum.reduceat(pad, a_b)[0::2] + w) * side
        return origin + low * step, origin + high * step

    (x0, x1), (y0, y1) = edges(cx, lo[0], span[0]), edges(cy, lo[1], span[1])
    boxes = np.stack([x0, y0, x1, y1], axis=1).reshape(len(runs), 4)
    starts = np.array([bins[a] for a, _, _ in runs], dtype=np.uint64)
    levels = np.array([level_of[a] for a, _, _ in runs], dtype=np.int64)
    return starts, levels, np.array([r for _, _, r in runs], np.int64), boxes


def feature_cuts(by_feature: np.ndarray, cap: int) -> tuple[np.ndarray, list[list[int]]]:
    """Output partitions of the feature-first order: start key (code * MAX_LEVELS + level) and
    [min code, max code, min level, max level, rows] of each."""
    n_levels, n_codes = by_feature.shape
    starts: list[int] = []
    info: list[list[int]] = []
    small = max(1, cap // 8)
    for c in range(n_codes):
        for lv in range(n_levels):
            n = int(by_feature[lv, c])
            if n == 0:
                continue
            new_feature = not info or info[-1][1] != c
            cur = info[-1][4] if info else 0
            if not info or (new_feature and cur >= small) or (cur and cur + n > cap):
                starts.append(c * MAX_LEVELS + lv)
                info.append([c, c, lv, lv, 0])
            last = info[-1]
            last[1] = c
            last[2], last[3] = min(last[2], lv), max(last[3], lv)
            last[4] += n
    return np.array(starts, dtype=np.int64), info
