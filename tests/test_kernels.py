"""Unit tests of the pure numpy/numba kernels against shapely, numpy and pandas as oracles."""

from __future__ import annotations

import functools
import itertools
import pickle

import numpy as np
import pandas as pd
import pytest
import shapely
import shapely.affinity
from shapely import MultiPolygon, Point, Polygon

from spatialflow.kernels import zonal as zonal_module
from spatialflow.kernels.pip import (
    GridIndex,
    build_grid_index,
    circle_bounds,
    points_in_circles,
    points_in_polygons,
)
from spatialflow.kernels.polygons import (
    PolygonArrays,
    affine_polygons,
    flatten_polygons,
    rasterize_polygons,
    to_shapely,
)
from spatialflow.kernels.zonal import (
    ZonalStats,
    combine_zonal,
    combine_zonal_many,
    zonal_stats,
)

# ---------------------------------------------------------------------------------------------
# random geometry


def star(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 12) -> np.ndarray:
    """A closed ring of a random star-shaped (often non-convex) simple polygon around (cx, cy)."""
    angles = (np.arange(n) + rng.uniform(0.0, 0.8, n)) * (2 * np.pi / n)
    radii = r * rng.uniform(0.5, 1.0, n)
    ring = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.vstack([ring, ring[:1]])


def star_with_holes(rng: np.random.Generator, cx: float, cy: float, r: float) -> Polygon:
    """A star with one or two holes well inside its kernel (always valid)."""
    shell = star(rng, cx, cy, r)
    if rng.random() < 0.5:
        holes = [star(rng, cx, cy, 0.25 * r, n=7)]
    else:
        holes = [
            star(rng, cx - 0.15 * r, cy, 0.1 * r, n=6),
            star(rng, cx + 0.15 * r, cy, 0.1 * r, n=6),
        ]
    return Polygon(shell, holes)


def random_geometries(rng: np.random.Generator, n: int, side: float = 100.0) -> np.ndarray:
    """Overlapping polygons, polygons with holes and multipolygons of random sizes."""
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0, side, 2)
        r = rng.uniform(1.0, 8.0)
        kind = rng.integers(0, 3)
        if kind == 0:
            g = Polygon(star(rng, cx, cy, r))
        elif kind == 1:
            g = star_with_holes(rng, cx, cy, r)
        else:
            d = rng.uniform(2.2, 4.0) * r
            g = MultiPolygon(
                [star_with_holes(rng, cx, cy, r), Polygon(star(rng, cx + d, cy + 0.3 * d, r))]
            )
        out.append(g)
    geoms = np.array(out, dtype=object)
    assert shapely.is_valid(geoms).all()
    return geoms


def voronoi_cells(rng: np.random.Generator, n: int, side: float) -> np.ndarray:
    seeds = shapely.multipoints(rng.uniform(0, side, (n, 2)))
    box = shapely.box(0, 0, side, side)
    cells = shapely.get_parts(shapely.voronoi_polygons(seeds, extend_to=box))
    return shapely.intersection(cells, box)


def shapely_pairs(geoms: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point, geometry) pairs with shapely.contains_xy, ordered by point then geometry."""
    pts, gs = [], []
    for g, geom in enumerate(geoms):
        if geom is None:
            continue
        hit = np.flatnonzero(shapely.contains_xy(geom, x, y))
        pts.append(hit)
        gs.append(np.full(hit.size, g))
    p = np.concatenate(pts) if pts else np.zeros(0, np.int64)
    q = np.concatenate(gs) if gs else np.zeros(0, np.int64)
    order = np.lexsort((q, p))
    return p[order], q[order]


def assert_pairs_equal(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]):
    assert got[0].dtype == np.int64 and got[1].dtype == np.int64
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------------------
# polygons: flattening


def test_flatten_layout_of_a_small_example():
    tri = Polygon([(0, 0), (4, 0), (0, 4)])
    holed = Polygon([(10, 10), (20, 10), (20, 20), (10, 20)], [[(12, 12), (14, 12), (14, 14)]])
    multi = MultiPolygon([tri, holed])
    geoms = np.array([tri, None, multi, Polygon(), holed], dtype=object)
    pa = flatten_polygons(geoms)

    assert len(pa) == 5 and pa.n_parts == 4 and pa.n_rings == 6
    np.testing.assert_array_equal(pa.geom_part_offsets, [0, 1, 1, 3, 3, 4])
    np.testing.assert_array_equal(pa.part_ring_offsets, [0, 1, 2, 4, 6])
    np.testing.assert_array_equal(pa.ring_offsets, [0, 4, 8, 13, 17, 22, 26])
    np.testing.assert_array_equal(pa.coords[:4], [[0, 0], [4, 0], [0, 4], [0, 0]])
    np.testing.assert_array_equal(pa.coords[13:17], [[12, 12], [14, 12], [14, 14], [12, 12]])
    want_bounds = [[0, 0, 4, 4], [np.nan] * 4, [0, 0, 20, 20], [np.nan] * 4, [10, 10, 20, 20]]
    np.testing.assert_array_equal(pa.bounds, want_bounds)
    for name in ("ring_offsets", "part_ring_offsets", "geom_part_offsets"):
        assert getattr(pa, name).dtype == np.int64
    assert pa.coords.dtype == np.float64 and pa.coords.flags.c_contiguous


def test_flatten_matches_shapely_ragged_arrays():
    geoms = random_geometries(np.random.default_rng(1), 60)
    pa = flatten_polygons(geoms)
    kind, coords, (rings, parts, geoms_off) = shapely.to_ragged_array(geoms)
    assert kind == shapely.GeometryType.MULTIPOLYGON
    np.testing.assert_array_equal(pa.coords, coords)
    np.testing.assert_array_equal(pa.ring_offsets, rings)
    np.testing.assert_array_equal(pa.part_ring_offsets, parts)
    np.testing.assert_array_equal(pa.geom_part_offsets, geoms_off)
    np.testing.assert_array_equal(pa.bounds, shapely.bounds(geoms))


def test_to_shapely_round_trip():
    geoms = random_geometries(np.random.default_rng(2), 40)
    back = to_shapely(flatten_polygons(geoms))
    assert shapely.equals_exact(back, geoms).all()
    assert list(shapely.get_type_id(back)) == list(shapely.get_type_id(geoms))
    empties = to_shapely(flatten_polygons(np.array([None, Polygon()], dtype=object)))
    assert shapely.is_empty(empties).all()


def test_flatten_empty_and_errors():
    pa = flatten_polygons(np.array([], dtype=object))
    assert len(pa) == 0 and pa.coords.shape == (0, 2) and pa.bounds.shape == (0, 4)
    np.testing.assert_array_equal(pa.geom_part_offsets, [0])
    with pytest.raises(TypeError, match="geometry 1 is a Point"):
        flatten_polygons(np.array([Polygon([(0, 0), (1, 0), (0, 1)]), Point(0, 0)]))
    with pytest.raises(ValueError, match="bounds rows"):
        PolygonArrays(pa.coords, pa.ring_offsets, pa.part_ring_offsets, [0, 0], pa.bounds)


def test_affine_polygons_matches_shapely():
    geoms = random_geometries(np.random.default_rng(3), 30)
    m = np.array([[0.8, -0.6, 5.0], [0.7, 1.3, -2.0]])
    got = affine_polygons(flatten_polygons(geoms), m)
    params = [*m[0, :2], *m[1, :2], m[0, 2], m[1, 2]]
    want = np.array([shapely.affinity.affine_transform(g, params) for g in geoms], dtype=object)
    np.testing.assert_allclose(got.coords, flatten_polygons(want).coords, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.bounds, shapely.bounds(want), rtol=0, atol=1e-12)
    same = affine_polygons(flatten_polygons(geoms), np.vstack([m, [0, 0, 1]]))
    np.testing.assert_array_equal(same.coords, got.coords)
    with pytest.raises(ValueError, match="matrix"):
        affine_polygons(got, np.eye(2))


def test_affine_polygons_keeps_empty_bounds_nan():
    pa = flatten_polygons(np.array([None, Polygon([(0, 0), (1, 0), (0, 1)])], dtype=object))
    out = affine_polygons(pa, [[2, 0, 1], [0, 2, 1]])
    assert np.isnan(out.bounds[0]).all()
    np.testing.assert_array_equal(out.bounds[1], [1, 1, 3, 3])


# ---------------------------------------------------------------------------------------------
# grid index


def brute_force_candidates(bounds: np.ndarray, x: float, y: float) -> set[int]:
    inside = (bounds[:, 0] <= x) & (x <= bounds[:, 2]) & (bounds[:, 1] <= y) & (y <= bounds[:, 3])
    return set(np.flatnonzero(inside).tolist())


def cell_items(index: GridIndex, x: float, y: float) -> list[int]:
    ix = int(np.floor((x - index.x0) / index.cell_size))
    iy = int(np.floor((y - index.y0) / index.cell_size))
    c = iy * index.nx + ix
    return index.cell_items[index.cell_offsets[c] : index.cell_offsets[c + 1]].tolist()


@pytest.mark.parametrize("cell_size", [None, 0.7, 25.0, 1000.0])
def test_grid_index_candidates_cover_every_containing_box(cell_size):
    rng = np.random.default_rng(4)
    lo = rng.uniform(0, 100, (300, 2))
    size = rng.exponential(3.0, (300, 2))
    size[:20] = 0.0  # degenerate boxes (points)
    bounds = np.hstack([lo, lo + size])
    bounds[5] = np.nan  # an empty geometry
    index = build_grid_index(bounds, cell_size)
    assert index.cell_offsets.shape == (index.nx * index.ny + 1,)
    assert index.cell_offsets[-1] == index.cell_items.size
    for c in range(index.n_cells):
        items = index.cell_items[index.cell_offsets[c] : index.cell_offsets[c + 1]]
        assert np.all(np.diff(items) > 0)  # ascending, no duplicates
    assert 5 not in set(index.cell_items.tolist())
    # random points, plus the corners of every box (the extreme cases)
    px = np.concatenate([rng.uniform(0, 110, 2000), bounds[:, 0], bounds[:, 2]])
    py = np.concatenate([rng.uniform(0, 110, 2000), bounds[:, 1], bounds[:, 3]])
    for x, y in zip(px, py, strict=True):
        want = brute_force_candidates(np.nan_to_num(bounds, nan=-1.0), x, y) - {5}
        if want:
            assert want <= set(cell_items(index, x, y))


def test_grid_index_edge_cases():
    empty = build_grid_index(np.zeros((0, 4)))
    assert empty.n_cells == 0 and empty.cell_items.size == 0
    all_nan = build_grid_index(np.full((3, 4), np.nan))
    assert all_nan.n_cells == 0
    single_point = build_grid_index(np.array([[2.0, 3.0, 2.0, 3.0]]))
    assert single_point.n_cells == 1 and single_point.cell_items.tolist() == [0]
    points = np.repeat(np.random.default_rng(0).uniform(0, 10, (50, 2)), 2, axis=1)[:, [0, 2, 1, 3]]
    index = build_grid_index(points)  # all boxes degenerate: cell size from the extent
    assert 0 < index.n_cells <= 4 * 50 + 4096 and index.cell_items.size == 50
    with pytest.raises(ValueError, match="cell_size"):
        build_grid_index(points, cell_size=0.0)
    with pytest.raises(ValueError, match="cell_size"):
        build_grid_index(points, cell_size=float("nan"))


def test_grid_index_caps_the_number_of_cells():
    rng = np.random.default_rng(5)
    lo = rng.uniform(0, 1e6, (100, 2))
    bounds = np.hstack([lo, lo + 1e-3])  # tiny boxes spread over a huge extent
    index = build_grid_index(bounds)
    assert index.n_cells <= 4 * 100 + 4096
    x, y = bounds[:, 0] + 5e-4, bounds[:, 1] + 5e-4
    for g in range(100):
        assert g in cell_items(index, x[g], y[g])


# ---------------------------------------------------------------------------------------------
# points in polygons


def test_points_in_polygons_matches_shapely_on_random_shapes():
    rng = np.random.default_rng(6)
    geoms = random_geometries(rng, 250)
    polys = flatten_polygons(geoms)
    # points over a larger box than the shapes: many outside the index extent
    x = rng.uniform(-40, 160, 40_000)
    y = rng.uniform(-40, 160, 40_000)
    want = shapely_pairs(geoms, x, y)
    assert want[0].size > 5_000 and np.unique(want[0]).size < want[0].size  # overlaps present
    for index in (build_grid_index(polys.bounds), build_grid_index(polys.bounds, 3.0), None):
        assert_pairs_equal(points_in_polygons(x, y, polys, index), want)


def test_points_in_polygons_with_holes_and_multipolygons():
    square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    hole = [(2, 2), (8, 2), (8, 8), (2, 8)]
    island = [(4, 4), (6, 4), (6, 6), (4, 6)]
    geoms = np.array(
        [
            Polygon(square, [hole]),
            MultiPolygon([Polygon(square, [hole]), Polygon(island)]),  # island inside the hole
            Polygon([(20, 0), (30, 0), (30, 10)]),
        ],
        dtype=object,
    )
    polys = flatten_polygons(geoms)
    x = np.array([1.0, 5.0, 3.0, 25.0, 29.0, 100.0, np.nan, 1.0])
    y = np.array([1.0, 5.0, 5.0, 1.0, 8.0, 100.0, 1.0, np.nan])
    pi, gi = points_in_polygons(x, y, polys, build_grid_index(polys.bounds))
    assert list(zip(pi.tolist(), gi.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 1),
        (3, 2),
        (4, 2),
    ]
    assert_pairs_equal((pi, gi), shapely_pairs(geoms, x, y))


def test_overlapping_parts_of_a_multipolygon_count_once():
    a = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)])
    b = Polygon([(2, 2), (6, 2), (6, 6), (2, 6)])
    polys = flatten_polygons(np.array([MultiPolygon([a, b])], dtype=object))  # invalid on purpose
    x = np.array([1.0, 3.0, 5.0, 7.0])
    y = np.array([1.0, 3.0, 5.0, 7.0])
    pi, gi = points_in_polygons(x, y, polys)
    assert pi.tolist() == [0, 1, 2] and gi.tolist() == [0, 0, 0]


def test_points_in_polygons_tessellation_partitions_the_plane():
    """Voronoi cells: every point inside the extent lies in exactly one cell."""
    rng = np.random.default_rng(7)
    cells = voronoi_cells(rng, 400, 100.0)
    polys = flatten_polygons(cells)
    x = rng.uniform(0, 100, 50_000)
    y = rng.uniform(0, 100, 50_000)
    # add the cell vertices themselves: on shared boundaries, the hardest case
    vx, vy = polys.coords[:, 0], polys.coords[:, 1]
    inner = (vx > 0) & (vx < 100) & (vy > 0) & (vy < 100)
    x, y = np.concatenate([x, vx[inner]]), np.concatenate([y, vy[inner]])
    pi, gi = points_in_polygons(x, y, polys)
    np.testing.assert_array_equal(np.bincount(pi, minlength=x.size), 1)
    random_part = pi < 50_000
    want = shapely_pairs(cells, x[:50_000], y[:50_000])
    assert_pairs_equal((pi[random_part], gi[random_part]), want)


def test_boundary_convention_on_a_grid_of_squares_and_triangles():
    """Left/bottom edges are in, right/top edges out: lattice points on shared edges and corners
    belong to exactly one square (the one whose lower-left corner they are nearest)."""
    n = 6
    squares, triangles = [], []
    for i in range(n):
        for j in range(n):
            squares.append(shapely.box(i, j, i + 1, j + 1))
            triangles.append(Polygon([(i, j), (i + 1, j), (i + 1, j + 1)]))
            triangles.append(Polygon([(i, j), (i + 1, j + 1), (i, j + 1)]))
    grid = np.mgrid[0 : n * 2, 0 : n * 2] / 2.0  # lattice and half-lattice points
    x, y = grid[0].ravel(), grid[1].ravel()
    pi, gi = points_in_polygons(x, y, flatten_polygons(np.array(squares, dtype=object)))
    np.testing.assert_array_equal(pi, np.arange(x.size))
    np.testing.assert_array_equal(gi, np.floor(x) * n + np.floor(y))
    pi, gi = points_in_polygons(x, y, flatten_polygons(np.array(triangles, dtype=object)))
    np.testing.assert_array_equal(pi, np.arange(x.size))  # diagonals too: exactly one each
    # the diagonal belongs to the triangle on its right (+x side)
    on_diag = (x - np.floor(x)) == (y - np.floor(y))
    assert np.all(gi[on_diag] % 2 == 0)
    # the outer right/top boundary is out
    outside = points_in_polygons([6.0, 3.0, 6.0], [3.0, 6.0, 6.0], flatten_polygons(squares))
    assert outside[0].size == 0


def test_points_in_polygons_grows_its_output_buffer():
    square = Polygon([(0, 0), (1, 0), (1, 1), (0, 1)])
    polys = flatten_polygons(np.array([square] * 300, dtype=object))
    rng = np.random.default_rng(8)
    x, y = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    pi, gi = points_in_polygons(x, y, polys)
    np.testing.assert_array_equal(pi, np.repeat(np.arange(50), 300))
    np.testing.assert_array_equal(gi, np.tile(np.arange(300), 50))


def test_points_in_polygons_input_handling():
    polys = flatten_polygons(np.array([shapely.box(0, 0, 2, 2), None], dtype=object))
    x32 = np.array([[1.0, 3.0], [0.5, 1.5]], dtype=np.float32)
    pi, gi = points_in_polygons(x32.T.ravel()[::-1], np.ones(4, np.float32), polys)
    assert pi.tolist() == [0, 2, 3] and gi.tolist() == [0, 0, 0]
    assert points_in_polygons([], [], polys)[0].size == 0
    empty = flatten_polygons(np.array([None], dtype=object))
    assert points_in_polygons([1.0], [1.0], empty)[0].size == 0
    with pytest.raises(ValueError, match="same length"):
        points_in_polygons([1.0, 2.0], [1.0], polys)


def test_index_must_match_the_geometries():
    polys = flatten_polygons(random_geometries(np.random.default_rng(16), 10))
    other = build_grid_index(polys.bounds[:5])
    with pytest.raises(ValueError, match="built for 5 boxes, but there are 10 polygons"):
        points_in_polygons([1.0], [1.0], polys, other)
    with pytest.raises(ValueError, match="circles"):
        points_in_circles([1.0], [1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0], other)
    with pytest.raises(ValueError, match="cells"):
        build_grid_index(polys.bounds, cell_size=1e-6)


def test_read_only_inputs_and_pickling():
    """Dask hands kernels read-only arrays and ships their inputs between processes."""
    rng = np.random.default_rng(17)
    geoms = random_geometries(rng, 30)
    polys = flatten_polygons(geoms)
    for a in (polys.coords, polys.bounds, polys.ring_offsets, polys.geom_part_offsets):
        a.flags.writeable = False
    index = build_grid_index(polys.bounds)
    x, y = rng.uniform(0, 100, 3000), rng.uniform(0, 100, 3000)
    x.flags.writeable = y.flags.writeable = False
    want = shapely_pairs(geoms, x, y)
    assert_pairs_equal(points_in_polygons(x, y, polys, index), want)
    polys2, index2 = pickle.loads(pickle.dumps((polys, index)))
    assert_pairs_equal(points_in_polygons(x, y, polys2, index2), want)
    raster = rasterize_polygons((20, 20), 0, 0, 5.0, polys, np.arange(1, 31))
    np.testing.assert_array_equal(
        raster, rasterize_polygons((20, 20), 0, 0, 5.0, polys2, np.arange(1, 31))
    )
    labels = blob_labels(rng, (40, 40), 30)
    values = rng.normal(size=(2, 40, 40))
    labels.flags.writeable = values.flags.writeable = False
    stats = zonal_stats(labels, values)
    assert_zonal_equal(pickle.loads(pickle.dumps(stats)), pandas_zonal(labels, values), False)


# ---------------------------------------------------------------------------------------------
# points in circles


def test_points_in_circles_matches_brute_force():
    rng = np.random.default_rng(9)
    cx, cy = rng.uniform(0, 100, 500), rng.uniform(0, 100, 500)
    r = rng.exponential(2.0, 500)
    r[:10] = 0.0
    cx[10:20], cy[10:20], r[10:20] = np.round(cx[10:20]), np.round(cy[10:20]), 2.0
    x = np.concatenate([rng.uniform(-20, 120, 20_000), cx[:10], cx[10:20] + r[10:20]])
    y = np.concatenate([rng.uniform(-20, 120, 20_000), cy[:10], cy[10:20]])
    dx = x[:, None] - cx[None, :]
    dy = y[:, None] - cy[None, :]
    want = np.nonzero(dx * dx + dy * dy <= r * r)  # row-major: ordered by point, then circle
    got = points_in_circles(x, y, cx, cy, r, build_grid_index(circle_bounds(cx, cy, r)))
    assert_pairs_equal(got, want)
    assert want[0].size > 1_000
    # centres of zero-radius circles and points exactly on a circle are inside
    assert set(range(20_000, 20_020)) <= set(got[0].tolist())
    assert_pairs_equal(points_in_circles(x, y, cx, cy, r), want)


def test_points_in_circles_agrees_with_shapely_buffers():
    rng = np.random.default_rng(10)
    cx, cy, r = rng.uniform(0, 50, 100), rng.uniform(0, 50, 100), rng.uniform(0.5, 4, 100)
    x, y = rng.uniform(0, 50, 5_000), rng.uniform(0, 50, 5_000)
    got = points_in_circles(x, y, cx, cy, r)
    discs = shapely.buffer(shapely.points(cx, cy), r, quad_segs=256)
    pairs = set(zip(*shapely_pairs(discs, x, y), strict=True))
    # a 1024-gon is inside its circle: every shapely pair is ours, and ours miss only slivers
    assert pairs <= set(zip(got[0].tolist(), got[1].tolist(), strict=True))
    assert got[0].size - len(pairs) <= 3


# ---------------------------------------------------------------------------------------------
# rasterizing polygons


def pixel_centres(shape, x0, y0, ps):
    ii, jj = np.indices(shape)
    return x0 + (jj + 0.5) * ps, y0 + (ii + 0.5) * ps


def test_rasterize_polygons_matches_shapely():
    rng = np.random.default_rng(11)
    geoms = random_geometries(rng, 40, side=60.0)
    shape, x0, y0, ps = (130, 170), -5.0, -8.0, 0.55
    values = rng.permutation(np.arange(1, 41))
    got = rasterize_polygons(shape, x0, y0, ps, flatten_polygons(geoms), values, np.uint16)
    assert got.dtype == np.uint16 and got.shape == shape
    want = np.zeros(shape, np.uint16)
    px, py = pixel_centres(shape, x0, y0, ps)
    for g, geom in enumerate(geoms):
        want[shapely.contains_xy(geom, px, py)] = values[g]  # later overwrite earlier
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) > 20


def test_rasterize_agrees_with_points_in_polygons_on_boundary_heavy_input():
    """Integer polygons with pixel centres on integers: many centres lie exactly on edges and
    vertices, and the raster must still match the point test exactly."""
    rng = np.random.default_rng(12)
    geoms = [
        Polygon(np.round(star(rng, *rng.integers(-3, 33, 2), rng.integers(2, 9), n=9)))
        for _ in range(60)
    ]  # some are self-intersecting after rounding: fine, both sides use the same even-odd rule
    geoms.append(MultiPolygon([shapely.box(0, 0, 5, 5, ccw=False), shapely.box(3, 3, 9, 9)]))
    polys = flatten_polygons(np.array(geoms, dtype=object))
    shape, x0, y0 = (30, 32), -0.5, -0.5
    values = np.arange(1, len(geoms) + 1)
    got = rasterize_polygons(shape, x0, y0, 1.0, polys, values, np.int32)
    px, py = pixel_centres(shape, x0, y0, 1.0)
    pi, gi = points_in_polygons(px.ravel(), py.ravel(), polys)
    want = np.zeros(px.size, np.int32)
    want[pi] = values[gi]  # pairs ascend by geometry within a point: the last one wins
    np.testing.assert_array_equal(got, want.reshape(shape))
    assert (got > 0).mean() > 0.3


def test_rasterize_polygons_edge_cases():
    polys = flatten_polygons(
        np.array([shapely.box(-100, -100, 100, 100), None, shapely.box(1, 1, 2, 2)], dtype=object)
    )
    got = rasterize_polygons((4, 5), 0.0, 0.0, 1.0, polys, np.array([7, 8, 9]), np.uint8)
    want = np.full((4, 5), 7, np.uint8)
    want[1, 1] = 9
    np.testing.assert_array_equal(got, want)
    nothing = rasterize_polygons((4, 5), 500.0, 0.0, 1.0, polys, np.array([7, 8, 9]))
    assert nothing.dtype == np.uint32 and not nothing.any()
    assert rasterize_polygons((0, 3), 0, 0, 1.0, polys, np.array([1, 2, 3])).shape == (0, 3)
    with pytest.raises(ValueError, match="values"):
        rasterize_polygons((4, 5), 0, 0, 1.0, polys, np.array([1, 2]))
    with pytest.raises(ValueError, match="pixel_size"):
        rasterize_polygons((4, 5), 0, 0, 0.0, polys, np.array([1, 2, 3]))


# ---------------------------------------------------------------------------------------------
# zonal statistics


def blob_labels(rng: np.random.Generator, shape: tuple[int, ...], n: int, base: int = 0):
    """Blocky labels (cells of 4 px) with ~n ids, about a quarter background."""
    coarse = tuple(-(-s // 4) for s in shape)
    ids = rng.integers(0, n, coarse) + base
    ids[rng.random(coarse) < 0.25] = 0
    labels = ids
    for axis in range(len(shape)):
        labels = np.repeat(labels, 4, axis=axis)
    return labels[tuple(slice(0, s) for s in shape)]


def pandas_zonal(labels: np.ndarray, values: np.ndarray) -> ZonalStats:
    lab = labels.reshape(-1)
    frame = pd.DataFrame(values.reshape(values.shape[0], -1).T.astype(np.float64))
    frame["label"] = lab
    groups = frame[lab != 0].groupby("label", sort=True)
    agg = groups.agg(["sum", "min", "max"])
    channels = range(values.shape[0])
    return ZonalStats(
        ids=agg.index.to_numpy(np.int64),
        count=groups.size().to_numpy(np.int64),
        sum=np.array([agg[(c, "sum")].to_numpy() for c in channels]).reshape(len(channels), -1),
        min=np.array([agg[(c, "min")].to_numpy() for c in channels]).reshape(len(channels), -1),
        max=np.array([agg[(c, "max")].to_numpy() for c in channels]).reshape(len(channels), -1),
    )


def assert_zonal_equal(got: ZonalStats, want: ZonalStats, exact_sum: bool = True):
    assert got.ids.dtype == np.int64 and got.count.dtype == np.int64
    for name in ("sum", "min", "max"):
        assert getattr(got, name).dtype == np.float64
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.count, want.count)
    if exact_sum:
        np.testing.assert_array_equal(got.sum, want.sum)
    else:
        np.testing.assert_allclose(got.sum, want.sum, rtol=1e-12)
    np.testing.assert_array_equal(got.min, want.min)
    np.testing.assert_array_equal(got.max, want.max)


@pytest.mark.parametrize(
    ("shape", "label_dtype", "value_dtype"),
    [
        ((97, 131), np.uint32, np.uint16),
        ((97, 131), np.int64, np.float32),
        ((5, 40, 33), np.uint16, np.int16),
        ((64, 64), np.int32, np.float64),
    ],
)
def test_zonal_stats_matches_pandas(shape, label_dtype, value_dtype):
    rng = np.random.default_rng(13)
    labels = blob_labels(rng, shape, 300, base=1000).astype(label_dtype)
    if np.issubdtype(value_dtype, np.integer):
        info = np.iinfo(value_dtype)
        values = rng.integers(info.min, info.max, (3, *shape), endpoint=True).astype(value_dtype)
    else:
        values = rng.normal(0, 100, (3, *shape)).astype(value_dtype)
    got = zonal_stats(labels, values)
    assert got.n_channels == 3 and len(got) > 100
    assert_zonal_equal(got, pandas_zonal(labels, values), exact_sum=False)
    np.testing.assert_allclose(got.mean, got.sum / got.count)


def test_zonal_stats_scattered_and_negative_ids(monkeypatch):
    """Ids far apart take the renumbering path; ids near each other take the table path; both
    must agree with pandas (and with each other when forced)."""
    rng = np.random.default_rng(14)
    base = blob_labels(rng, (50, 60), 40)
    palette = np.array([0, *rng.choice(np.arange(-(10**15), 10**15, 10**9), 39, replace=False)])
    labels = palette[base]
    values = rng.integers(0, 1000, (2, 50, 60)).astype(np.float64)
    want = pandas_zonal(labels, values)
    assert (want.ids < 0).any()
    assert_zonal_equal(zonal_stats(labels, values), want)
    # small span with negative ids: table path
    small = base - 20
    assert_zonal_equal(zonal_stats(small, values), pandas_zonal(small, values))
    # force the renumbering path for a small span, and the table path via the hint
    monkeypatch.setattr(zonal_module, "_MIN_TABLE", 0)
    spread = np.where(base != 0, base * 1000, 0)  # span 39001 > 2 * 3000 pixels
    want = pandas_zonal(spread, values)
    assert_zonal_equal(zonal_stats(spread, values), want)
    assert_zonal_equal(zonal_stats(spread, values, n_labels_hint=40_000), want)
    no_zero = base + 1  # renumbering path without background present
    big = no_zero * 10**6
    assert_zonal_equal(zonal_stats(big, values), pandas_zonal(big, values))


def test_zonal_stats_counts_only_empty_and_nan():
    labels = np.array([[0, 3, 3], [0, 0, 9]])
    counts = zonal_stats(labels)
    assert counts.ids.tolist() == [3, 9] and counts.count.tolist() == [2, 1]
    assert counts.sum.shape == (0, 2) and counts.n_channels == 0
    none = zonal_stats(np.zeros((4, 4), np.uint8), np.ones((2, 4, 4)))
    assert len(none) == 0 and none.sum.shape == (2, 0)
    values = np.array([[[1.0, np.nan, 2.0], [4.0, 5.0, 6.0]]])
    nan = zonal_stats(labels, values)
    assert np.isnan(nan.sum[0, 0]) and np.isnan(nan.min[0, 0]) and np.isnan(nan.max[0, 0])
    assert nan.sum[0, 1] == 6.0 and nan.min[0, 1] == 6.0
    first_nan = zonal_stats(np.array([[1, 1]]), np.array([[[np.nan, 2.0]]]))
    assert np.isnan(first_nan.min[0, 0]) and np.isnan(first_nan.max[0, 0])
    flags = zonal_stats(labels, np.array([[[True, True, False], [False, False, True]]]))
    assert flags.sum.tolist() == [[1.0, 1.0]] and flags.min.tolist() == [[0.0, 1.0]]


def test_zonal_stats_validation():
    labels = np.zeros((4, 5), np.int32)
    with pytest.raises(ValueError, match="values must be"):
        zonal_stats(labels, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="values must be"):
        zonal_stats(labels, np.zeros((2, 5, 4)))
    with pytest.raises(TypeError, match="integer"):
        zonal_stats(labels.astype(float), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="labels must be"):
        zonal_stats(np.zeros(5, np.int32), np.zeros((1, 5)))
    with pytest.raises(TypeError, match="real"):
        zonal_stats(labels, np.zeros((1, 4, 5), np.complex128))


def split_blocks(rng, labels, values, n_cuts=3):
    """Cut a 2-D image into a random grid of blocks; return the partial results."""
    h, w = labels.shape
    rows = np.unique([0, *rng.integers(1, h, n_cuts), h])
    cols = np.unique([0, *rng.integers(1, w, n_cuts), w])
    return [
        zonal_stats(labels[a:b, c:d], values[:, a:b, c:d])
        for a, b in itertools.pairwise(rows)
        for c, d in itertools.pairwise(cols)
    ]


def test_combine_zonal_is_associative_and_matches_the_whole_image():
    rng = np.random.default_rng(15)
    labels = blob_labels(rng, (120, 90), 200)
    values = rng.integers(-500, 500, (2, 120, 90)).astype(np.float64)  # integer-valued: exact
    whole = zonal_stats(labels, values)
    parts = split_blocks(rng, labels, values)
    assert len(parts) >= 9
    left = functools.reduce(combine_zonal, parts)
    right = functools.reduce(lambda a, b: combine_zonal(b, a), parts[::-1])
    shuffled = [parts[i] for i in rng.permutation(len(parts))]
    tree = list(shuffled)
    while len(tree) > 1:
        tree = [
            combine_zonal(*tree[i : i + 2]) if i + 1 < len(tree) else tree[i]
            for i in range(0, len(tree), 2)
        ]
    for merged in (left, right, tree[0], combine_zonal_many(parts), combine_zonal_many(shuffled)):
        assert_zonal_equal(merged, whole)
    empty = ZonalStats.empty(2)
    assert_zonal_equal(combine_zonal(empty, whole), whole)
    assert_zonal_equal(combine_zonal(whole, empty), whole)
    assert_zonal_equal(combine_zonal_many([empty, whole, empty]), whole)
    assert len(combine_zonal_many([empty, empty])) == 0


def test_combine_zonal_errors_and_min_max():
    a = ZonalStats(
        np.array([1, 4]),
        np.array([2, 3]),
        np.array([[1.0, 2.0]]),
        np.array([[0.0, -1.0]]),
        np.array([[5.0, 1.0]]),
    )
    b = ZonalStats(
        np.array([4, 7]),
        np.array([1, 1]),
        np.array([[3.0, 4.0]]),
        np.array([[-3.0, 4.0]]),
        np.array([[-3.0, 4.0]]),
    )
    c = combine_zonal(a, b)
    assert c.ids.tolist() == [1, 4, 7] and c.count.tolist() == [2, 4, 1]
    assert c.sum.tolist() == [[1.0, 5.0, 4.0]]
    assert c.min.tolist() == [[0.0, -3.0, 4.0]] and c.max.tolist() == [[5.0, 1.0, 4.0]]
    with pytest.raises(ValueError, match="channel"):
        combine_zonal(a, ZonalStats.empty(3))
    with pytest.raises(ValueError, match="at least one"):
        combine_zonal_many([])


# --- WKB bounds -----------------------------------------------------------------------------
def _wkb_column(geoms, **to_wkb):
    import pyarrow as pa

    arr = pa.array(list(shapely.to_wkb(geoms, **to_wkb)), pa.binary())
    _, offsets, data = arr.buffers()
    return np.frombuffer(offsets, np.int32)[: len(arr) + 1], np.frombuffer(data, np.uint8)


@pytest.mark.parametrize(
    "flavor",
    [
        {},
        {"byte_order": 0},  # big endian
        {"flavor": "iso", "output_dimension": 3},  # ISO Z codes (1000 + type)
        {"include_srid": True},  # EWKB with an SRID after the type
    ],
)
def test_wkb_bounds_match_shapely(flavor):
    from spatialflow.kernels.wkb import wkb_bounds

    rng = np.random.default_rng(3)
    geoms = [
        shapely.box(0, 0, 1, 2),
        Point(3, -4),
        Point(1, 2, 3),
        shapely.LineString([(0, 0), (5, -1), (2, 7)]),
        Polygon([(0, 0), (10, 0), (10, 10)], [[(1, 1), (2, 1), (2, 2)]]),
        MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 6, 7)]),
        shapely.MultiPoint([(1, 1), (-3, 2)]),
        shapely.MultiLineString([[(0, 0), (1, 1)], [(9, 9), (8, -8)]]),
        *shapely.buffer(shapely.points(rng.uniform(-1e3, 1e3, (50, 2))), 2.5),
        Polygon(),  # empty: NaN
    ]
    geoms = np.array(geoms, dtype=object)
    if flavor.get("include_srid"):
        geoms = shapely.set_srid(geoms, 4326)
    got = wkb_bounds(*_wkb_column(geoms, **flavor))
    np.testing.assert_array_equal(got, shapely.bounds(geoms))


def test_wkb_bounds_of_unknown_and_broken_values_are_unbounded():
    from spatialflow.kernels.wkb import wkb_bounds

    geoms = np.array(
        [shapely.GeometryCollection([Point(1, 1)]), shapely.box(0, 0, 1, 1)], dtype=object
    )
    offsets, data = _wkb_column(geoms)
    everywhere = [-np.inf, -np.inf, np.inf, np.inf]
    got = wkb_bounds(offsets, data)
    assert got[0].tolist() == everywhere and got[1].tolist() == [0, 0, 1, 1]
    cut = offsets.copy()
    cut[2] -= 8  # the box's last coordinate pair is cut short
    assert wkb_bounds(cut, data)[1].tolist() == everywhere
    empty_value = np.array([0, 0], np.int32)  # a zero-length value (e.g. a null)
    assert wkb_bounds(empty_value, data)[0].tolist() == everywhere
