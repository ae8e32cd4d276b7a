"""A uniform grid index over bounding boxes, and point-in-polygon / point-in-circle joins.

Grid index
----------
:class:`GridIndex` covers the union of the (finite) geometry bounding boxes with ``nx * ny`` square
cells of side ``cell_size`` starting at ``(x0, y0)``. Cell ``(ix, iy)`` (flat id ``iy * nx + ix``)
lists, in CSR form (``cell_offsets``, ``cell_items``), the ids of every geometry whose bounding box
overlaps it, in ascending order. The cell of a coordinate is ``floor((v - v0) / cell_size)``; as
that expression is monotone in v, a point inside a box always falls in one of the box's cells, so
the candidates of a point's cell are a superset of the geometries that can contain it.

The default cell size is half the median bounding-box side (``max(w, h)``): for tessellation-like
shapes (cells of a segmentation) a point then sees ~4 candidates, and the index holds ~8 entries
per geometry (measured on Voronoi cells; cell sizes from 1/4 to 1x the median side perform within
10% of each other). The number of cells is capped at ``4 G + 4096`` by enlarging cells, so outliers
(huge or degenerate zero-size boxes, a sparse extent) cannot blow up memory. Geometries with a NaN
bounding box (empty) are left out. Build cost is O(G + entries).

Joins
-----
:func:`points_in_polygons` and :func:`points_in_circles` return every (point, geometry) pair where
the point is inside, ordered by point index and then geometry index. For each point: find its cell
(points outside the index extent, or with NaN coordinates, match nothing), check each candidate's
bounding box, then run the exact test. Polygons use the even-odd crossing test of
:mod:`spatialflow.kernels.polygons` (holes honoured; a MultiPolygon contains a point if any part
does; left/bottom boundaries are in, right/top out, so a tessellation assigns every point to exactly
one cell). A circle contains a point when ``dx**2 + dy**2 <= r**2`` (boundary in, as in
:func:`spatialflow.kernels.rasterize.rasterize_disks`).

The kernels are single-pass over the points, write into a buffer that doubles when full (no Python
loop per point), and release the GIL so a Dask threaded scheduler can run partitions concurrently.
Measured: 1,000,000 uniform random points against 10,000 Voronoi cells of ~20 vertices take ~0.4 s
on one core (~0.2 s when the points come in space-filling-curve order, as partitions do), against
~2.5 s for shapely's STRtree ``query(..., predicate="within")``.

Caching caveat: numba's on-disk cache (``cache=True``) keys each function on its own source file
only. The join kernels here inline the containment test from ``polygons.py``, so after editing that
file, delete ``spatialflow/kernels/__pycache__/pip.*.nb*`` (or touch this file) to recompile.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numba
import numpy as np

from spatialflow.kernels.polygons import PolygonArrays, _geom_contains

__all__ = [
    "GridIndex",
    "build_grid_index",
    "circle_bounds",
    "points_in_circles",
    "points_in_polygons",
    "warm_up_async",
]

_DEFAULT_CELL_FACTOR = 0.5
_MAX_CELLS_PER_ITEM = 4
_MIN_MAX_CELLS = 4096
_MAX_EXPLICIT_CELLS = 2**28


@dataclass(frozen=True, eq=False)
class GridIndex:
    """Uniform grid over geometry bounding boxes; see the module docstring."""

    x0: float
    y0: float
    cell_size: float
    nx: int
    ny: int
    cell_offsets: np.ndarray  # (nx * ny + 1,) int64
    cell_items: np.ndarray  # (entries,) int64 geometry ids, ascending within a cell
    n_items: int  # G, the number of boxes indexed (ids are < G)

    @property
    def n_cells(self) -> int:
        return self.nx * self.ny


@numba.njit(cache=True, inline="always")
def _cell_of(v: float, v0: float, cs: float, n: int) -> int:
    i = math.floor((v - v0) / cs)
    return min(max(i, 0), n - 1)


@numba.njit(cache=True, nogil=True)
def _build(bounds, valid, x0, y0, cs, nx, ny):
    offsets = np.zeros(nx * ny + 1, dtype=np.int64)
    for g in range(bounds.shape[0]):
        if not valid[g]:
            continue
        ix0 = _cell_of(bounds[g, 0], x0, cs, nx)
        ix1 = _cell_of(bounds[g, 2], x0, cs, nx)
        iy0 = _cell_of(bounds[g, 1], y0, cs, ny)
        iy1 = _cell_of(bounds[g, 3], y0, cs, ny)
        for iy in range(iy0, iy1 + 1):
            for ix in range(ix0, ix1 + 1):
                offsets[iy * nx + ix + 1] += 1
    for c in range(nx * ny):
        offsets[c + 1] += offsets[c]
    items = np.empty(offsets[-1], dtype=np.int64)
    cursor = offsets[:-1].copy()
    for g in range(bounds.shape[0]):
        if not valid[g]:
            continue
        ix0 = _cell_of(bounds[g, 0], x0, cs, nx)
        ix1 = _cell_of(bounds[g, 2], x0, cs, nx)
        iy0 = _cell_of(bounds[g, 1], y0, cs, ny)
        iy1 = _cell_of(bounds[g, 3], y0, cs, ny)
        for iy in range(iy0, iy1 + 1):
            for ix in range(ix0, ix1 + 1):
                c = iy * nx + ix
                items[cursor[c]] = g
                cursor[c] += 1
    return offsets, items


def _default_cell_size(bounds: np.ndarray, extent: float) -> float:
    side = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
    cs = float(np.median(side)) * _DEFAULT_CELL_FACTOR
    if not cs > 0:  # mostly degenerate boxes (points): spread them over ~G cells
        cs = extent / math.sqrt(bounds.shape[0])
    return cs if cs > 0 else 1.0


def _n_cells(span: float, cs: float) -> int:
    return math.floor(span / cs) + 1


def build_grid_index(bounds: np.ndarray, cell_size: float | None = None) -> GridIndex:
    """Index G bounding boxes ``[minx, miny, maxx, maxy]`` (rows with NaN are skipped).

    ``cell_size`` defaults to half the median box side, enlarged if needed to keep at most
    ``4 G + 4096`` cells (see the module docstring). An explicit ``cell_size`` is used as given,
    but must not make more than ``2**28`` cells."""
    bounds = np.ascontiguousarray(bounds, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(bounds).all(axis=1) & (bounds[:, 2] >= bounds[:, 0])
        valid &= bounds[:, 3] >= bounds[:, 1]
    if cell_size is not None and not (math.isfinite(cell_size) and cell_size > 0):
        raise ValueError(f"build_grid_index: cell_size must be finite and > 0, got {cell_size}")
    n_items = bounds.shape[0]
    if not valid.any():
        empty = np.zeros(0, np.int64)
        return GridIndex(
            0.0, 0.0, float(cell_size or 1.0), 0, 0, np.zeros(1, np.int64), empty, n_items
        )
    vb = bounds[valid]
    x0, y0 = float(vb[:, 0].min()), float(vb[:, 1].min())
    wx, wy = float(vb[:, 2].max()) - x0, float(vb[:, 3].max()) - y0
    if cell_size is None:
        max_cells = _MAX_CELLS_PER_ITEM * vb.shape[0] + _MIN_MAX_CELLS
        cs = max(_default_cell_size(vb, max(wx, wy)), math.sqrt(wx * wy / max_cells))
        while _n_cells(wx, cs) * _n_cells(wy, cs) > max_cells:  # rounding up: a step or two
            cs *= 1.05
    else:
        cs = float(cell_size)
        if _n_cells(wx, cs) * _n_cells(wy, cs) > _MAX_EXPLICIT_CELLS:
            raise ValueError(
                f"build_grid_index: cell_size {cs} makes more than {_MAX_EXPLICIT_CELLS} cells "
                f"over an extent of {wx} x {wy}; use a larger cell_size or the default"
            )
    nx, ny = _n_cells(wx, cs), _n_cells(wy, cs)
    offsets, items = _build(bounds, valid, x0, y0, cs, nx, ny)
    return GridIndex(x0, y0, cs, nx, ny, offsets, items, n_items)


def circle_bounds(cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(G, 4) bounding boxes of circles, to build the index for :func:`points_in_circles`."""
    cx, cy, r = (np.asarray(a, dtype=np.float64) for a in (cx, cy, r))
    return np.stack([cx - r, cy - r, cx + r, cy + r], axis=1)


# ---------------------------------------------------------------------------------------------
# joins


@numba.njit(cache=True, inline="always")
def _point_cell(px, py, x0, y0, cs, nx, ny) -> int:
    """Flat cell id of a point, or -1 outside the grid (NaN included)."""
    fx = (px - x0) / cs
    fy = (py - y0) / cs
    if fx >= 0.0 and fx < nx and fy >= 0.0 and fy < ny:
        return int(fy) * nx + int(fx)
    return -1


@numba.njit(cache=True)
def _grow(a, n):
    out = np.empty(2 * a.size, dtype=a.dtype)
    out[:n] = a[:n]
    return out


@numba.njit(cache=True, inline="always")
def _trim(a: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` values: a view when they fill at least half of ``a`` (most points of a
    join find a cell; copying 10^7 pairs into fresh memory cost ~0.2 s of a 1 s join), else a
    copy so a sparse result does not hold the whole buffer."""
    if 2 * n >= a.size:
        return a[:n]
    return a[:n].copy()


@numba.njit(cache=True, nogil=True)
def _pip(x, y, coords, ring_offsets, part_ring_offsets, geom_part_offsets, bounds, inner, grid):
    x0, y0, cs, nx, ny, cell_offsets, cell_items = grid
    cap = max(16, x.size)
    pi = np.empty(cap, dtype=np.int64)
    gi = np.empty(cap, dtype=np.int64)
    n = 0
    for i in range(x.size):
        px = x[i]
        py = y[i]
        c = _point_cell(px, py, x0, y0, cs, nx, ny)
        if c < 0:
            continue
        for t in range(cell_offsets[c], cell_offsets[c + 1]):
            g = cell_items[t]
            if px < bounds[g, 0] or px > bounds[g, 2] or py < bounds[g, 1] or py > bounds[g, 3]:
                continue
            if (
                px >= inner[g, 0] and px <= inner[g, 2] and py >= inner[g, 1] and py <= inner[g, 3]
            ) or _geom_contains(
                coords, ring_offsets, part_ring_offsets, geom_part_offsets, g, px, py
            ):
                if n == pi.size:
                    pi = _grow(pi, n)
                    gi = _grow(gi, n)
                pi[n] = i
                gi[n] = g
                n += 1
    return _trim(pi, n), _trim(gi, n)


@numba.njit(cache=True, nogil=True)
def _pic(x, y, cx, cy, r, grid):
    x0, y0, cs, nx, ny, cell_offsets, cell_items = grid
    cap = max(16, x.size)
    pi = np.empty(cap, dtype=np.int64)
    gi = np.empty(cap, dtype=np.int64)
    n = 0
    for i in range(x.size):
        px = x[i]
        py = y[i]
        c = _point_cell(px, py, x0, y0, cs, nx, ny)
        if c < 0:
            continue
        for t in range(cell_offsets[c], cell_offsets[c + 1]):
            g = cell_items[t]
            dx = px - cx[g]
            dy = py - cy[g]
            if dx * dx + dy * dy <= r[g] * r[g]:
                if n == pi.size:
                    pi = _grow(pi, n)
                    gi = _grow(gi, n)
                pi[n] = i
                gi[n] = g
                n += 1
    return _trim(pi, n), _trim(gi, n)


def _as_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    return x, y


def _grid_tuple(index: GridIndex) -> tuple:
    return (
        float(index.x0),
        float(index.y0),
        float(index.cell_size),
        int(index.nx),
        int(index.ny),
        index.cell_offsets,
        index.cell_items,
    )


def _check_index(index: GridIndex, n: int, what: str) -> None:
    # the kernels index geometry arrays with the ids the index holds: a mismatch would read
    # out of bounds, so refuse it here
    if index.n_items != n:
        raise ValueError(f"the index was built for {index.n_items} boxes, but there are {n} {what}")


def _empty_pairs() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def points_in_polygons(
    x: np.ndarray,
    y: np.ndarray,
    polys: PolygonArrays,
    index: GridIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (point i, geometry g) with point i inside geometry g, as two int64 arrays.

    ``index`` must have been built from ``polys.bounds`` (or boxes containing them); it is built
    here when omitted. Pairs are ordered by point, then geometry; a point inside k geometries
    yields k pairs."""
    x, y = _as_points(x, y)
    if index is None:
        index = build_grid_index(polys.bounds)
    _check_index(index, len(polys), "polygons")
    if x.size == 0 or index.n_cells == 0:
        return _empty_pairs()
    return _pip(
        x,
        y,
        polys.coords,
        polys.ring_offsets,
        polys.part_ring_offsets,
        polys.geom_part_offsets,
        polys.bounds,
        polys.inner_boxes,
        _grid_tuple(index),
    )


def points_in_circles(
    x: np.ndarray,
    y: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    r: np.ndarray,
    index: GridIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (point i, circle g) with ``(x_i - cx_g)**2 + (y_i - cy_g)**2 <= r_g**2``.

    ``index`` must have been built from ``circle_bounds(cx, cy, r)`` (built here when omitted).
    Pairs are ordered by point, then circle."""
    x, y = _as_points(x, y)
    cx, cy, r = (np.ascontiguousarray(a, dtype=np.float64).reshape(-1) for a in (cx, cy, r))
    if not cx.size == cy.size == r.size:
        raise ValueError("cx, cy and r must have the same length")
    if index is None:
        index = build_grid_index(circle_bounds(cx, cy, r))
    _check_index(index, cx.size, "circles")
    if x.size == 0 or index.n_cells == 0:
        return _empty_pairs()
    return _pic(x, y, cx, cy, r, _grid_tuple(index))


# ---------------------------------------------------------------------------------------------
# warming up

_warm: threading.Thread | None = None


def _warm_up() -> None:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    polys = PolygonArrays(
        coords=square,
        ring_offsets=np.array([0, 5]),
        part_ring_offsets=np.array([0, 1]),
        geom_part_offsets=np.array([0, 1]),
        bounds=np.array([[0.0, 0.0, 1.0, 1.0]]),
    )
    xy = np.array([0.5, 2.0])
    points_in_polygons(xy, xy, polys, build_grid_index(polys.bounds))
    r = np.ones(2)
    points_in_circles(xy, xy, xy, xy, r, build_grid_index(circle_bounds(xy, xy, r)))


def warm_up_async() -> None:
    """Load (or compile) the join kernels in a background thread, once per process, so the
    first join does not wait for numba while the plan's reads are already under way."""
    global _warm
    if _warm is None:
        _warm = threading.Thread(target=_warm_up, name="spatialflow-numba-warm-up", daemon=True)
        _warm.start()
