"""Space-filling-curve ordering and per-block bounding boxes."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["block_bounds", "morton_codes", "spatial_order"]


@numba.njit(cache=True)
def _spread_bits(v: np.ndarray) -> np.ndarray:
    out = np.empty(v.size, dtype=np.uint64)
    for i in range(v.size):
        x = np.uint64(v[i]) & np.uint64(0xFFFFFFFF)
        x = (x | (x << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
        x = (x | (x << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
        x = (x | (x << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        x = (x | (x << np.uint64(2))) & np.uint64(0x3333333333333333)
        x = (x | (x << np.uint64(1))) & np.uint64(0x5555555555555555)
        out[i] = x
    return out


def morton_codes(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Z-order codes of non-negative integer cell coordinates (< 2**32)."""
    ix = np.ascontiguousarray(ix, dtype=np.uint64)
    iy = np.ascontiguousarray(iy, dtype=np.uint64)
    return _spread_bits(ix) | (_spread_bits(iy) << np.uint64(1))


def spatial_order(x: np.ndarray, y: np.ndarray, bits: int = 16) -> np.ndarray:
    """A stable permutation that orders (x, y) along a Z-curve over their bounding box."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return np.arange(0, dtype=np.int64)
    n = float(2**bits - 1)
    x0, x1 = float(np.min(x)), float(np.max(x))
    y0, y1 = float(np.min(y)), float(np.max(y))
    ix = ((x - x0) / max(x1 - x0, 1e-300) * n).astype(np.uint64)
    iy = ((y - y0) / max(y1 - y0, 1e-300) * n).astype(np.uint64)
    return np.argsort(morton_codes(ix, iy), kind="stable")


def block_bounds(mins: np.ndarray, maxs: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Bounding box [min..., max...] of each block of rows starting at ``starts``.

    ``mins``/``maxs`` are (N, D) per-row lower/upper corners (equal for points)."""
    d = mins.shape[1]
    out = np.empty((len(starts), 2 * d))
    ends = np.append(starts[1:], mins.shape[0])
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        if e > s:
            out[k, :d] = mins[s:e].min(axis=0)
            out[k, d:] = maxs[s:e].max(axis=0)
        else:
            out[k] = np.nan
    return out
