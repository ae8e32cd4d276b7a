"""Rasterize disks onto a pixel grid (pixel (i, j) is covered if its centre is inside)."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["rasterize_disks"]


@numba.njit(cache=True)
def _disks(out, x0, y0, pixel_size, cx, cy, r, values):
    h, w = out.shape
    for k in range(cx.size):
        # pixel centre (j + 0.5) * ps + x0 within r of (cx, cy)
        jmin = max(0, int(np.floor((cx[k] - r[k] - x0) / pixel_size - 0.5)))
        jmax = min(w - 1, int(np.ceil((cx[k] + r[k] - x0) / pixel_size - 0.5)))
        imin = max(0, int(np.floor((cy[k] - r[k] - y0) / pixel_size - 0.5)))
        imax = min(h - 1, int(np.ceil((cy[k] + r[k] - y0) / pixel_size - 0.5)))
        r2 = r[k] * r[k]
        for i in range(imin, imax + 1):
            py = y0 + (i + 0.5) * pixel_size - cy[k]
            for j in range(jmin, jmax + 1):
                px = x0 + (j + 0.5) * pixel_size - cx[k]
                if px * px + py * py <= r2:
                    out[i, j] = values[k]


def rasterize_disks(
    shape: tuple[int, int],
    x0: float,
    y0: float,
    pixel_size: float,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    values: np.ndarray,
    dtype: np.dtype | type = np.uint32,
) -> np.ndarray:
    """An array of ``shape`` (rows = y) whose pixels inside disk k hold ``values[k]``, else 0.

    ``(x0, y0)`` is the world position of the array's corner; later disks overwrite earlier."""
    out = np.zeros(shape, dtype=dtype)
    if len(cx):
        _disks(
            out,
            float(x0),
            float(y0),
            float(pixel_size),
            np.ascontiguousarray(cx, dtype=np.float64),
            np.ascontiguousarray(cy, dtype=np.float64),
            np.ascontiguousarray(r, dtype=np.float64),
            np.ascontiguousarray(values).astype(dtype),
        )
    return out
