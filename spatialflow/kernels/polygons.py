"""Polygons as flat ragged arrays, the shared point-in-polygon test, and a polygon rasterizer.

Layout (GeoArrow-like, "MultiPolygon" nesting for every geometry)
-----------------------------------------------------------------
A :class:`PolygonArrays` holds G geometries (shapely ``Polygon`` or ``MultiPolygon``) as:

* ``coords`` (M, 2) float64: the x, y of every ring vertex, ring after ring. Rings are stored
  closed, exactly as shapely returns them (the first vertex is repeated at the end).
* ``ring_offsets`` (R + 1,) int64: ring r owns ``coords[ring_offsets[r]:ring_offsets[r + 1]]``.
* ``part_ring_offsets`` (P + 1,) int64: polygon part p owns rings
  ``part_ring_offsets[p]:part_ring_offsets[p + 1]``; the first is the exterior, the rest are holes.
* ``geom_part_offsets`` (G + 1,) int64: geometry g owns parts
  ``geom_part_offsets[g]:geom_part_offsets[g + 1]``. A ``Polygon`` has one part; ``None`` and empty
  geometries have none (they contain nothing and their ``bounds`` row is NaN).
* ``bounds`` (G, 4) float64: ``[minx, miny, maxx, maxy]`` per geometry.

The offsets are the ones ``shapely.from_ragged_array(GeometryType.MULTIPOLYGON, ...)`` takes, so
:func:`to_shapely` is a direct call. Z coordinates are dropped.

Containment (shared by :mod:`spatialflow.kernels.pip` and :func:`rasterize_polygons`)
----------------------------------------------------------------------------------------
A point is inside a polygon part if a ray from it towards +x crosses the part's rings (exterior
and holes alike) an odd number of times: the even-odd rule, so holes need no special handling and
the ring orientation does not matter. A geometry contains the point if ANY of its parts does, so
overlapping parts of an (invalid) MultiPolygon act as their union.

Boundary convention: an edge counts as crossed when exactly one endpoint lies strictly above the
point (``(ya > py) != (yb > py)``) and the crossing abscissa is strictly right of it
(``px < x_cross``). The crossing abscissa is computed from the endpoints ordered by y, so an edge
shared by two polygons gives bit-identical results for both. Consequence: a point on the boundary
is inside exactly when a point nudged infinitesimally towards +x (then +y) would be inside, i.e.
left and bottom edges are in, right and top edges are out, and the cells of a tessellation with
shared vertices partition the plane (every point belongs to exactly one cell). shapely's
``contains_xy`` instead excludes the whole boundary; the two agree everywhere else.

Rasterization uses the same crossing abscissae along each pixel row (a scanline fill), so a pixel
is painted exactly when its centre passes the point test above.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np
import shapely

__all__ = [
    "PolygonArrays",
    "affine_polygons",
    "flatten_polygons",
    "rasterize_polygons",
    "to_shapely",
]

_POLYGON = int(shapely.GeometryType.POLYGON)
_MULTIPOLYGON = int(shapely.GeometryType.MULTIPOLYGON)
_MISSING = -1


@dataclass(frozen=True, eq=False)
class PolygonArrays:
    """G (multi)polygons as flat ragged arrays; see the module docstring for the layout."""

    coords: np.ndarray
    ring_offsets: np.ndarray
    part_ring_offsets: np.ndarray
    geom_part_offsets: np.ndarray
    bounds: np.ndarray

    def __post_init__(self) -> None:
        # normalise dtypes/contiguity once, so every kernel can rely on them (no-op when right)
        def put(name: str, value: np.ndarray) -> None:
            object.__setattr__(self, name, value)

        put("coords", np.ascontiguousarray(self.coords, dtype=np.float64).reshape(-1, 2))
        for name in ("ring_offsets", "part_ring_offsets", "geom_part_offsets"):
            put(name, np.ascontiguousarray(getattr(self, name), dtype=np.int64).reshape(-1))
        put("bounds", np.ascontiguousarray(self.bounds, dtype=np.float64).reshape(-1, 4))
        if self.bounds.shape[0] != len(self):
            raise ValueError(
                f"PolygonArrays: {self.bounds.shape[0]} bounds rows for {len(self)} geometries"
            )

    def __len__(self) -> int:
        return int(self.geom_part_offsets.size - 1)

    @property
    def n_parts(self) -> int:
        return int(self.part_ring_offsets.size - 1)

    @property
    def n_rings(self) -> int:
        return int(self.ring_offsets.size - 1)

    @functools.cached_property
    def inner_boxes(self) -> np.ndarray:
        """(G, 4) an axis-aligned box inside each geometry's interior (NaN where none was
        found): a point in it is inside the geometry without testing its rings. Computed on
        first use, kept."""
        return _inner_boxes(
            self.coords,
            self.ring_offsets,
            self.part_ring_offsets,
            self.geom_part_offsets,
            self.bounds,
        )


# ---------------------------------------------------------------------------------------------
# shapely <-> ragged arrays


def _offsets(index: np.ndarray, n: int) -> np.ndarray:
    """CSR offsets (n + 1,) from the sorted owner index of each child."""
    out = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=out[1:])
    return out


def flatten_polygons(geoms: np.ndarray) -> PolygonArrays:
    """Flatten an array of shapely ``Polygon``/``MultiPolygon`` (``None``/empty allowed).

    Vectorized over geometries (shapely 2 ``get_parts``/``get_rings``/``get_coordinates``).
    Raises ``TypeError`` for any other geometry type."""
    geoms = np.asarray(geoms, dtype=object).reshape(-1)
    n = geoms.size
    types = shapely.get_type_id(geoms)
    bad = (types != _POLYGON) & (types != _MULTIPOLYGON) & (types != _MISSING)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise TypeError(
            f"flatten_polygons: geometry {first} is a {geoms[first].geom_type}; "
            "only Polygon and MultiPolygon are supported"
        )
    parts, part_geom = shapely.get_parts(geoms, return_index=True)
    keep = ~shapely.is_empty(parts)
    parts, part_geom = parts[keep], part_geom[keep]
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    return PolygonArrays(
        coords=np.ascontiguousarray(coords, dtype=np.float64).reshape(-1, 2),
        ring_offsets=_offsets(coord_ring, rings.size),
        part_ring_offsets=_offsets(ring_part, parts.size),
        geom_part_offsets=_offsets(part_geom, n),
        bounds=np.asarray(shapely.bounds(geoms), dtype=np.float64).reshape(n, 4),
    )


def to_shapely(polys: PolygonArrays) -> np.ndarray:
    """The inverse of :func:`flatten_polygons`: an object array of G shapely geometries.

    Single-part geometries come back as ``Polygon``, others as ``MultiPolygon`` (``None`` and
    empty inputs come back as an empty ``MultiPolygon``)."""
    multi = shapely.from_ragged_array(
        shapely.GeometryType.MULTIPOLYGON,
        polys.coords,
        (polys.ring_offsets, polys.part_ring_offsets, polys.geom_part_offsets),
    )
    single = np.diff(polys.geom_part_offsets) == 1
    out = np.asarray(multi, dtype=object).copy()
    out[single] = shapely.get_geometry(multi[single], 0)
    return out


# ---------------------------------------------------------------------------------------------
# affine transform


@numba.njit(cache=True, nogil=True)
def _geometry_bounds(coords, ring_offsets, part_ring_offsets, geom_part_offsets):
    n = geom_part_offsets.size - 1
    out = np.full((n, 4), np.nan)
    for g in range(n):
        start = ring_offsets[part_ring_offsets[geom_part_offsets[g]]]
        stop = ring_offsets[part_ring_offsets[geom_part_offsets[g + 1]]]
        if stop == start:
            continue
        minx, miny = np.inf, np.inf
        maxx, maxy = -np.inf, -np.inf
        for k in range(start, stop):
            minx = min(minx, coords[k, 0])
            maxx = max(maxx, coords[k, 0])
            miny = min(miny, coords[k, 1])
            maxy = max(maxy, coords[k, 1])
        out[g, 0], out[g, 1], out[g, 2], out[g, 3] = minx, miny, maxx, maxy
    return out


def affine_polygons(polys: PolygonArrays, matrix: np.ndarray) -> PolygonArrays:
    """Apply a 2-D affine ``[[a, b, tx], [c, d, ty]]`` (a (3, 3) homogeneous matrix is accepted
    too) to every vertex: ``x' = a x + b y + tx``, ``y' = c x + d y + ty``.

    Offsets are shared with the input (arrays are treated as immutable); bounds are recomputed
    from the transformed vertices. A reflection flips ring orientation, which the even-odd rule
    does not care about."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 3):
        m = m[:2]
    if m.shape != (2, 3):
        raise ValueError(f"affine_polygons: matrix must be (2, 3) or (3, 3), got {m.shape}")
    coords = polys.coords @ m[:, :2].T + m[:, 2]
    coords = np.ascontiguousarray(coords)
    bounds = _geometry_bounds(
        coords, polys.ring_offsets, polys.part_ring_offsets, polys.geom_part_offsets
    )
    return PolygonArrays(
        coords=coords,
        ring_offsets=polys.ring_offsets,
        part_ring_offsets=polys.part_ring_offsets,
        geom_part_offsets=polys.geom_part_offsets,
        bounds=bounds,
    )


# ---------------------------------------------------------------------------------------------
# point-in-polygon primitives (imported by kernels.pip)


@numba.njit(cache=True, inline="always")
def _crossing_x(xa: float, ya: float, xb: float, yb: float, py: float) -> float:
    """Abscissa where the line y = py crosses edge a-b (caller ensures it does).

    Endpoints are ordered by y first so a shared edge gives the same float either way round."""
    if ya > yb or (ya == yb and xa > xb):
        xa, ya, xb, yb = xb, yb, xa, ya
    return xa + (py - ya) * (xb - xa) / (yb - ya)


@numba.njit(cache=True, inline="always")
def _part_contains(coords, ring_offsets, ring_start, ring_stop, px, py) -> bool:
    """Even-odd test of (px, py) against rings ``ring_start:ring_stop`` (closed rings)."""
    inside = False
    for r in range(ring_start, ring_stop):
        k0 = ring_offsets[r]
        k1 = ring_offsets[r + 1] - 1
        if k1 <= k0:
            continue
        # walk the ring carrying the previous vertex, so each vertex is loaded once
        xa = coords[k0, 0]
        ya = coords[k0, 1]
        above_a = ya > py
        for k in range(k0 + 1, k1 + 1):
            xb = coords[k, 0]
            yb = coords[k, 1]
            above_b = yb > py
            if above_a != above_b and px < _crossing_x(xa, ya, xb, yb, py):
                inside = not inside
            xa = xb
            ya = yb
            above_a = above_b
    return inside


@numba.njit(cache=True, inline="always")
def _geom_contains(coords, ring_offsets, part_ring_offsets, geom_part_offsets, g, px, py) -> bool:
    """Whether geometry g contains (px, py): any of its parts does (no bounds check here)."""
    for p in range(geom_part_offsets[g], geom_part_offsets[g + 1]):
        if _part_contains(
            coords, ring_offsets, part_ring_offsets[p], part_ring_offsets[p + 1], px, py
        ):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# inner boxes: a shortcut for the containment test


@numba.njit(cache=True, inline="always")
def _segment_meets_box(ax, ay, bx, by, x0, y0, x1, y1) -> bool:
    """Whether segment a-b meets the closed box [x0, x1] x [y0, y1] (Liang-Barsky)."""
    t0 = 0.0
    t1 = 1.0
    dx = bx - ax
    dy = by - ay
    for p, q in ((-dx, ax - x0), (dx, x1 - ax), (-dy, ay - y0), (dy, y1 - ay)):
        if p == 0.0:
            if q < 0.0:
                return False
        else:
            r = q / p
            if p < 0.0:
                t0 = max(t0, r)
            else:
                t1 = min(t1, r)
            if t0 > t1:
                return False
    return True


@numba.njit(cache=True)
def _box_inside(coords, ring_offsets, part_ring_offsets, geom_part_offsets, g, x0, y0, x1, y1):
    """The closed box lies in geometry g's interior: no edge of g meets it (so it lies in one
    face of g's rings) and one corner is inside g."""
    for p in range(geom_part_offsets[g], geom_part_offsets[g + 1]):
        for r in range(part_ring_offsets[p], part_ring_offsets[p + 1]):
            for k in range(ring_offsets[r], ring_offsets[r + 1] - 1):
                if _segment_meets_box(
                    coords[k, 0], coords[k, 1], coords[k + 1, 0], coords[k + 1, 1], x0, y0, x1, y1
                ):
                    return False
    return _geom_contains(coords, ring_offsets, part_ring_offsets, geom_part_offsets, g, x0, y0)


@numba.njit(cache=True, nogil=True)
def _inner_boxes(coords, ring_offsets, part_ring_offsets, geom_part_offsets, bounds):
    n = bounds.shape[0]
    out = np.full((n, 4), np.nan)
    for g in range(n):
        w = bounds[g, 2] - bounds[g, 0]
        h = bounds[g, 3] - bounds[g, 1]
        if not (w > 0.0 and h > 0.0) or geom_part_offsets[g + 1] == geom_part_offsets[g]:
            continue
        r0 = part_ring_offsets[geom_part_offsets[g]]  # the first part's exterior ring
        k0 = ring_offsets[r0]
        k1 = ring_offsets[r0 + 1] - 1  # the closing vertex repeats the first
        if k1 <= k0:
            continue
        cx = 0.0
        cy = 0.0
        for k in range(k0, k1):
            cx += coords[k, 0]
            cy += coords[k, 1]
        cx /= k1 - k0
        cy /= k1 - k0
        hw = 0.3 * w
        hh = 0.3 * h
        for _ in range(4):
            # test a box a little larger than the one kept, so rounding cannot let a kept box
            # touch the boundary
            ex = 1e-9 * (w + h)
            if _box_inside(
                coords,
                ring_offsets,
                part_ring_offsets,
                geom_part_offsets,
                g,
                cx - hw - ex,
                cy - hh - ex,
                cx + hw + ex,
                cy + hh + ex,
            ):
                out[g, 0] = cx - hw
                out[g, 1] = cy - hh
                out[g, 2] = cx + hw
                out[g, 3] = cy + hh
                break
            hw *= 0.6
            hh *= 0.6
    return out


# ---------------------------------------------------------------------------------------------
# rasterization


@numba.njit(cache=True)
def _first_centre_at_or_right(xc: float, x0: float, ps: float, w: int) -> int:
    """Smallest column j in [0, w] whose centre x0 + (j + 0.5) ps is >= xc (w if none)."""
    f = (xc - x0) / ps - 0.5
    if not f < w:  # also catches +inf
        return w
    j = int(np.ceil(f)) if f > 0.0 else 0  # -inf lands on 0
    # fix up floating-point rounding so the test matches the point test exactly
    while j > 0 and x0 + (j - 1 + 0.5) * ps >= xc:
        j -= 1
    while j < w and x0 + (j + 0.5) * ps < xc:
        j += 1
    return j


@numba.njit(cache=True)
def _row_range(lo: float, hi: float, y0: float, ps: float, h: int):
    """Rows i in [imin, imax) whose centre may lie in [lo, hi] (a superset is fine)."""
    imin = int(max(0.0, np.floor((lo - y0) / ps - 0.5)))
    imax = int(min(float(h), np.ceil((hi - y0) / ps - 0.5) + 1.0))
    return imin, imax


@numba.njit(cache=True)
def _fill_part(out, x0, y0, ps, coords, ring_offsets, ring_start, ring_stop, value, xs):
    """Scanline fill of one polygon part (even-odd over its rings) with ``value``."""
    h, w = out.shape
    k0 = ring_offsets[ring_start]
    k1 = ring_offsets[ring_stop]
    lo, hi = np.inf, -np.inf
    for k in range(k0, k1):
        lo = min(lo, coords[k, 1])
        hi = max(hi, coords[k, 1])
    imin, imax = _row_range(lo, hi, y0, ps, h)
    for i in range(imin, imax):
        py = y0 + (i + 0.5) * ps
        n = 0
        for r in range(ring_start, ring_stop):
            for k in range(ring_offsets[r], ring_offsets[r + 1] - 1):
                ya = coords[k, 1]
                yb = coords[k + 1, 1]
                if (ya > py) != (yb > py):
                    xs[n] = _crossing_x(coords[k, 0], ya, coords[k + 1, 0], yb, py)
                    n += 1
        if n < 2:
            continue
        row = xs[:n]
        row.sort()
        # a centre px is inside iff an odd number of crossings lie strictly right of it,
        # i.e. px in [row[2m], row[2m + 1]) for some m
        for m in range(0, n - 1, 2):
            ja = _first_centre_at_or_right(row[m], x0, ps, w)
            jb = _first_centre_at_or_right(row[m + 1], x0, ps, w)
            for j in range(ja, jb):
                out[i, j] = value


@numba.njit(cache=True, nogil=True)
def _rasterize(out, x0, y0, ps, coords, ring_offsets, part_ring_offsets, geom_part_offsets, values):
    n_parts = part_ring_offsets.size - 1
    # crossings of one row with one part: at most its edge count
    cap = 0
    for p in range(n_parts):
        cap = max(cap, ring_offsets[part_ring_offsets[p + 1]] - ring_offsets[part_ring_offsets[p]])
    xs = np.empty(max(cap, 1), dtype=np.float64)
    for g in range(geom_part_offsets.size - 1):
        for p in range(geom_part_offsets[g], geom_part_offsets[g + 1]):
            _fill_part(
                out,
                x0,
                y0,
                ps,
                coords,
                ring_offsets,
                part_ring_offsets[p],
                part_ring_offsets[p + 1],
                values[g],
                xs,
            )


def rasterize_polygons(
    shape: tuple[int, int],
    x0: float,
    y0: float,
    pixel_size: float,
    polys: PolygonArrays,
    values: np.ndarray,
    dtype: np.dtype | type = np.uint32,
) -> np.ndarray:
    """An array of ``shape`` (rows = y) whose pixels inside geometry g hold ``values[g]``, else 0.

    Pixel (i, j) is inside when its centre ``(x0 + (j + 0.5) ps, y0 + (i + 0.5) ps)`` passes the
    module's point test (even-odd, holes honoured, any part of a MultiPolygon). Later geometries
    overwrite earlier ones. Cost: one scanline pass per pixel row of each part's bounding box."""
    h, w = (int(s) for s in shape)
    if pixel_size <= 0:
        raise ValueError(f"rasterize_polygons: pixel_size must be > 0, got {pixel_size}")
    values = np.asarray(values)
    if values.shape != (len(polys),):
        raise ValueError(
            f"rasterize_polygons: values must have shape ({len(polys)},), got {values.shape}"
        )
    out = np.zeros((h, w), dtype=dtype)
    if len(polys) and h and w:
        _rasterize(
            out,
            float(x0),
            float(y0),
            float(pixel_size),
            polys.coords,
            polys.ring_offsets,
            polys.part_ring_offsets,
            polys.geom_part_offsets,
            values.astype(dtype),
        )
    return out
