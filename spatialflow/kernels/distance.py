"""Signed distances of points to polygon boundaries, and the partial kernels of density profiles.

Signed distance
---------------
For a point p and a (multi)polygon g, ``d(p, g)`` is the Euclidean distance from p to the
boundary of g (every ring of every part: exteriors and holes), negative when g contains p and
positive outside; a point on the boundary has distance 0 (the sign of 0 does not matter). This
is squidpy's definition (draft PR #1163: ``shapely.distance(point, boundary)`` signed by
``contains``); containment uses the even-odd test of :mod:`spatialflow.kernels.polygons`, which
differs from shapely's only for points exactly on the boundary, where the distance is 0 anyway.

Search: every boundary segment goes into a :class:`~spatialflow.kernels.pip.GridIndex` (the
same uniform grid as the point-in-polygon join, built over segment bounding boxes) with cells of
about the search ``reach`` (the largest |distance| of interest). A point looks only at the cells
meeting the square ``[p - reach, p + reach]``; a segment within ``reach`` of p has a point in
that square and so is listed in one of those cells, hence the nearest boundary of every contour
within ``reach`` is found, and everything else is out of range by construction. A point outside
the grid extent grown by ``reach`` is rejected after four comparisons; the even-odd containment
test runs only for contours whose boundary is within reach. The kernel emits
``(point, contour, signed distance)`` triples with ``lo <= d <= hi``.

Partial kernels (map side of the map-reduce)
--------------------------------------------
* :func:`ring_counts`: an int64 histogram (contour, category, ring) over half-open rings
  ``[edge_k, edge_k+1)``, the last ring closed.
* :func:`gaussian_sums`: Gaussian kernel sums on a distance grid, cut at ``4 * bandwidth`` and
  reflected at both ends ``L`` and ``U`` (each distance s adds K(g - s), K(g - (2L - s)) and
  K(g - (2U - s))). They are accumulated in FIXED POINT, ``round(exp(-u^2 / 2) * 2**40)`` per
  term, as two int64 limbs ``(hi, lo)`` with value ``hi + lo / 2**40``: integer addition is
  associative, so partial sums combined in any order or partitioning give bit-identical results
  (float sums would not). The quantum, ~1e-12 of a kernel peak, is far below any meaningful
  difference; the 1/(sqrt(2 pi) bw) factor is applied once at the end (:func:`fixed_to_float`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from spatialflow.kernels.pip import GridIndex, _grid_tuple, _grow, build_grid_index
from spatialflow.kernels.polygons import PolygonArrays, _geom_contains

__all__ = [
    "FIXED_BITS",
    "SegmentIndex",
    "build_segment_index",
    "combine_fixed",
    "fixed_to_float",
    "gaussian_sums",
    "ring_counts",
    "signed_distances",
]

TRUNCATION = 4.0  # kernel cut at 4 bandwidths
FIXED_BITS = 40
_FIXED_SCALE = float(2**FIXED_BITS)
_LO_MASK = np.int64(2**FIXED_BITS - 1)
_CHUNK = 1 << 20  # pairs per fixed-point pass: 3 * 2**20 * 2**40 < 2**63, no overflow


@dataclass(frozen=True, eq=False)
class SegmentIndex:
    """The boundary segments of G (multi)polygons and a grid index over them."""

    polys: PolygonArrays
    seg_start: np.ndarray  # (S,) int64: segment s joins coords[seg_start[s]] and the next vertex
    seg_geom: np.ndarray  # (S,) int64: the geometry owning segment s
    grid: GridIndex
    reach: float

    def __len__(self) -> int:
        return len(self.polys)


def _segments(polys: PolygonArrays) -> tuple[np.ndarray, np.ndarray]:
    ring_len = np.diff(polys.ring_offsets)
    part_of_ring = np.repeat(np.arange(polys.n_parts), np.diff(polys.part_ring_offsets))
    geom_of_part = np.repeat(np.arange(len(polys)), np.diff(polys.geom_part_offsets))
    geom_of_ring = geom_of_part[part_of_ring] if part_of_ring.size else part_of_ring
    n_seg = np.maximum(ring_len - 1, 0)  # rings are closed: n vertices, n - 1 segments
    starts = np.repeat(polys.ring_offsets[:-1], n_seg)
    within = np.arange(int(n_seg.sum())) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
    return (starts + within).astype(np.int64), np.repeat(geom_of_ring, n_seg).astype(np.int64)


def build_segment_index(polys: PolygonArrays, reach: float) -> SegmentIndex:
    """Index the boundary segments of ``polys`` for queries up to distance ``reach`` (> 0)."""
    if not (math.isfinite(reach) and reach > 0):
        raise ValueError(f"build_segment_index: reach must be finite and > 0, got {reach}")
    start, geom = _segments(polys)
    a, b = polys.coords[start], polys.coords[start + 1]
    bounds = np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)
    if start.size == 0:
        return SegmentIndex(polys, start, geom, build_grid_index(bounds), float(reach))
    extent = max(
        float(bounds[:, 2].max() - bounds[:, 0].min()),
        float(bounds[:, 3].max() - bounds[:, 1].min()),
    )
    seg_len = float(np.median(np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])))
    # cells of about the reach (a query then scans 2-3 cells per axis), never smaller than a
    # typical segment, and at most ~4 cells per segment + 4096 over the extent
    cs = max(reach, seg_len, extent / math.sqrt(4 * start.size + 4096), 1e-12)
    return SegmentIndex(polys, start, geom, build_grid_index(bounds, cell_size=cs), float(reach))


@numba.njit(cache=True, inline="always")
def _seg_dist2(px, py, ax, ay, bx, by) -> float:
    dx = bx - ax
    dy = by - ay
    den = dx * dx + dy * dy
    t = 0.0
    if den > 0.0:
        t = ((px - ax) * dx + (py - ay) * dy) / den
        t = min(max(t, 0.0), 1.0)
    qx = ax + t * dx - px
    qy = ay + t * dy - py
    return qx * qx + qy * qy


@numba.njit(cache=True, nogil=True)
def _signed(
    x,
    y,
    coords,
    ring_offsets,
    part_ring_offsets,
    geom_part_offsets,
    gbounds,
    seg_start,
    seg_geom,
    grid,
    reach,
    lo,
    hi,
):
    x0, y0, cs, nx, ny, cell_offsets, cell_items = grid
    n_geoms = geom_part_offsets.size - 1
    best = np.full(n_geoms, np.inf)
    touched = np.empty(n_geoms, dtype=np.int64)
    cap = max(16, x.size // 4)
    pi = np.empty(cap, dtype=np.int64)
    gi = np.empty(cap, dtype=np.int64)
    dd = np.empty(cap, dtype=np.float64)
    n = 0
    r2 = reach * reach
    xmax = x0 + nx * cs
    ymax = y0 + ny * cs
    for i in range(x.size):
        px = x[i]
        py = y[i]
        # cheap rejection (NaN fails every comparison and is rejected too)
        if not (
            px + reach >= x0 and px - reach <= xmax and py + reach >= y0 and py - reach <= ymax
        ):
            continue
        ix0 = max(math.floor((px - reach - x0) / cs), 0)
        ix1 = min(math.floor((px + reach - x0) / cs), nx - 1)
        iy0 = max(math.floor((py - reach - y0) / cs), 0)
        iy1 = min(math.floor((py + reach - y0) / cs), ny - 1)
        nt = 0
        for iy in range(iy0, iy1 + 1):
            for ix in range(ix0, ix1 + 1):
                c = iy * nx + ix
                for t in range(cell_offsets[c], cell_offsets[c + 1]):
                    s = cell_items[t]
                    g = seg_geom[s]
                    k = seg_start[s]
                    d2 = _seg_dist2(
                        px, py, coords[k, 0], coords[k, 1], coords[k + 1, 0], coords[k + 1, 1]
                    )
                    if d2 < best[g]:
                        if best[g] == np.inf:
                            touched[nt] = g
                            nt += 1
                        best[g] = d2
        for q in range(nt):
            g = touched[q]
            d2 = best[g]
            best[g] = np.inf
            if d2 > r2:
                continue
            d = math.sqrt(d2)
            inside_box = (
                gbounds[g, 0] <= px <= gbounds[g, 2] and gbounds[g, 1] <= py <= gbounds[g, 3]
            )
            if (
                d > 0.0
                and inside_box
                and _geom_contains(
                    coords, ring_offsets, part_ring_offsets, geom_part_offsets, g, px, py
                )
            ):
                d = -d
            if d < lo or d > hi:
                continue
            if n == pi.size:
                pi = _grow(pi, n)
                gi = _grow(gi, n)
                dd = _grow(dd, n)
            pi[n] = i
            gi[n] = g
            dd[n] = d
            n += 1
    return pi[:n].copy(), gi[:n].copy(), dd[:n].copy()


def signed_distances(
    x: np.ndarray, y: np.ndarray, index: SegmentIndex, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (point i, contour g, signed distance d) with ``lo <= d <= hi``, as three arrays.

    ``[lo, hi]`` must lie within ``[-index.reach, index.reach]``. Triples are ordered by point,
    then by contour in the order their boundaries were met (not sorted)."""
    if lo < -index.reach or hi > index.reach:
        raise ValueError(f"signed_distances: [{lo}, {hi}] exceeds the index reach {index.reach}")
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if x.size == 0 or index.seg_start.size == 0:
        e = np.zeros(0, np.int64)
        return e, e.copy(), np.zeros(0)
    p = index.polys
    return _signed(
        x,
        y,
        p.coords,
        p.ring_offsets,
        p.part_ring_offsets,
        p.geom_part_offsets,
        p.bounds,
        index.seg_start,
        index.seg_geom,
        _grid_tuple(index.grid),
        float(index.reach),
        float(lo),
        float(hi),
    )


# ---------------------------------------------------------------------------------------------
# rings


def ring_counts(
    geom: np.ndarray,
    d: np.ndarray,
    cat: np.ndarray | None,
    edges: np.ndarray,
    n_geoms: int,
    n_cats: int = 1,
) -> np.ndarray:
    """(n_geoms, n_cats, len(edges) - 1) int64 counts of distances in rings
    ``[edges[k], edges[k + 1])`` (the last ring closed); distances outside are ignored."""
    edges = np.asarray(edges, dtype=np.float64)
    n_rings = edges.size - 1
    out = np.zeros((n_geoms, n_cats, n_rings), dtype=np.int64)
    if d.size == 0:
        return out
    k = np.searchsorted(edges, d, side="right") - 1
    k[d == edges[-1]] = n_rings - 1
    ok = (k >= 0) & (k < n_rings)
    c = np.zeros(d.size, np.int64) if cat is None else np.asarray(cat, np.int64)
    ok &= (c >= 0) & (c < n_cats)
    flat = (np.asarray(geom, np.int64)[ok] * n_cats + c[ok]) * n_rings + k[ok]
    out.reshape(-1)[:] = np.bincount(flat, minlength=out.size)
    return out


# ---------------------------------------------------------------------------------------------
# Gaussian sums in fixed point


@numba.njit(cache=True, nogil=True)
def _gauss(out, geom, d, cat, grid, bw, lo_end, hi_end, scale):
    n_grid = grid.size
    cut = 4.0 * bw
    for i in range(d.size):
        s = d[i]
        if not (lo_end <= s <= hi_end):
            continue
        g = geom[i]
        c = cat[i]
        for r in range(3):
            if r == 0:
                m = s
            elif r == 1:
                m = 2.0 * lo_end - s
            else:
                m = 2.0 * hi_end - s
            k = np.searchsorted(grid, m - cut)
            while k < n_grid and grid[k] <= m + cut:
                u = (grid[k] - m) / bw
                out[g, c, k] += np.int64(math.floor(math.exp(-0.5 * u * u) * scale + 0.5))
                k += 1


def _split(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return acc >> FIXED_BITS, acc & _LO_MASK


def combine_fixed(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact sum of fixed-point values ``(hi, lo)`` (any number, any order: same result)."""
    hi = parts[0][0].copy()
    lo = parts[0][1].copy()
    for h, low in parts[1:]:
        hi += h
        lo += low
        hi += lo >> FIXED_BITS
        lo &= _LO_MASK
    return hi, lo


def gaussian_sums(
    geom: np.ndarray,
    d: np.ndarray,
    cat: np.ndarray | None,
    grid: np.ndarray,
    bandwidth: float,
    lo_end: float,
    hi_end: float,
    n_geoms: int,
    n_cats: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point sums ``(hi, lo)`` of shape (n_geoms, n_cats, len(grid)) of
    ``exp(-((g - m) / bw)**2 / 2)`` over the distances s in ``[lo_end, hi_end]`` and their
    reflections m in {s, 2 lo_end - s, 2 hi_end - s}, for grid points with ``|g - m| <= 4 bw``.
    Convert with :func:`fixed_to_float`. ``grid`` must be sorted."""
    grid = np.ascontiguousarray(grid, dtype=np.float64)
    shape = (n_geoms, n_cats, grid.size)
    total = (np.zeros(shape, np.int64), np.zeros(shape, np.int64))
    geom = np.ascontiguousarray(geom, dtype=np.int64)
    d = np.ascontiguousarray(d, dtype=np.float64)
    cat = np.zeros(d.size, np.int64) if cat is None else np.ascontiguousarray(cat, dtype=np.int64)
    keep = (cat >= 0) & (cat < n_cats)
    if not keep.all():
        geom, d, cat = geom[keep], d[keep], cat[keep]
    for s in range(0, d.size, _CHUNK):
        acc = np.zeros(shape, np.int64)
        sl = slice(s, s + _CHUNK)
        _gauss(
            acc,
            geom[sl],
            d[sl],
            cat[sl],
            grid,
            float(bandwidth),
            float(lo_end),
            float(hi_end),
            _FIXED_SCALE,
        )
        total = combine_fixed(total, _split(acc))
    return total


def fixed_to_float(hi: np.ndarray, lo: np.ndarray, bandwidth: float) -> np.ndarray:
    """The Gaussian density sums: fixed-point ``(hi, lo)`` times 1 / (sqrt(2 pi) bw)."""
    unit = hi.astype(np.float64) + lo.astype(np.float64) / _FIXED_SCALE
    return unit / (math.sqrt(2.0 * math.pi) * bandwidth)
