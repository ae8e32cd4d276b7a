"""sf.ring_density / sf.smooth_density: hand-computable profiles, an independent shapely
reference, partition invariance, and bad input."""

from __future__ import annotations

import itertools
import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import spatialflow as sf
from spatialflow.kernels.distance import build_segment_index, signed_distances
from spatialflow.kernels.polygons import flatten_polygons

R = 100.0


def _disk(r: float = R) -> shapely.Polygon:
    return shapely.Point(0, 0).buffer(r, quad_segs=256)


def _uniform(n: int, half: float, seed: int = 0, parts: int = 8) -> sf.Points:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.uniform(-half, half, n), "y": rng.uniform(-half, half, n)})
    df["gene"] = pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c"])
    return sf.Points(df, feature_key="gene", rows_per_partition=-(-n // parts))


def _ds(points: sf.Points, contours: list, **kw: object) -> sf.Dataset:
    gdf = gpd.GeoDataFrame(geometry=contours, index=pd.Index(kw.pop("index", range(len(contours)))))
    return sf.Dataset(points={"tx": points}, shapes={"tumor": sf.Shapes(gdf, **kw)})  # type: ignore[arg-type]


# --- hand-computable ---------------------------------------------------------------------
def test_uniform_points_disk_constant_density_and_annulus_areas() -> None:
    n, half = 400_000, 200.0
    ds = _ds(_uniform(n, half), [_disk()])
    out = sf.ring_density(ds, "tx", "tumor", ring_width=20, inward=60, outward=50).compute()
    assert list(out.columns) == ["contour", "ring_start", "ring_end", "count", "area", "density"]
    np.testing.assert_array_equal(out["ring_start"], [-60, -40, -20, 0, 20, 40])
    np.testing.assert_array_equal(out["ring_end"], [-40, -20, 0, 20, 40, 50])
    annulus = math.pi * ((R + out["ring_end"]) ** 2 - (R + out["ring_start"]) ** 2)
    np.testing.assert_allclose(out["area"], annulus, rtol=1e-3)
    expected = n / (2 * half) ** 2
    # ~7000-20000 points per ring: 5% is > 4 standard deviations
    np.testing.assert_allclose(out["density"], expected, rtol=0.05)


def test_single_points_land_in_the_right_ring_half_open() -> None:
    # a 10 x 10 square; points stored in half units (Scale 2 to global), as squidpy's fixture
    square = shapely.box(0, 0, 10, 10)
    where = {  # global position -> signed distance
        (5.0, 6.0): -4.0,  # [-4, -2)
        (5.0, 2.0): -2.0,  # [-2, 0): -2 is a start
        (5.0, 0.0): 0.0,  # boundary: first outward ring [0, 2)
        (12.0, 5.0): 2.0,  # [2, 4)
        (14.0, 5.0): 4.0,  # the last ring is closed
        (15.0, 5.0): 5.0,  # out of range
    }
    xy = np.array(list(where)) / 2
    pts = sf.Points(
        pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}),
        transforms={"global": sf.Scale([2, 2], ("x", "y"))},
    )
    ds = _ds(pts, [square])
    out = sf.ring_density(ds, "tx", "tumor", ring_width=2, inward=4, outward=4).compute()
    np.testing.assert_array_equal(out["ring_start"], [-4, -2, 0, 2])
    np.testing.assert_array_equal(out["count"], [1, 1, 1, 2])
    inner = square.area - square.buffer(-2).area
    assert out["area"].iloc[1] == pytest.approx(inner, rel=1e-12)
    assert out["density"].iloc[1] == pytest.approx(1 / inner, rel=1e-12)
    # narrower partial rings: inward=5, width 2 -> (-5,-3), (-3,-1), (-1,0), then (0,2), (2,3)
    out = sf.ring_density(ds, "tx", "tumor", ring_width=2, inward=5, outward=3).compute()
    np.testing.assert_array_equal(out["ring_start"], [-5, -3, -1, 0, 2])
    np.testing.assert_array_equal(out["ring_end"], [-3, -1, 0, 2, 3])


def test_smooth_profile_of_uniform_points_is_flat_away_from_the_ends() -> None:
    n, half = 400_000, 200.0
    ds = _ds(_uniform(n, half, seed=1), [_disk()])
    bw = 5.0
    out = sf.smooth_density(ds, "tx", "tumor", bandwidth=bw, inward=60, outward=50).compute()
    assert list(out.columns) == [
        "contour",
        "distance",
        "count_density",
        "geometry_measure",
        "density",
    ]
    step = bw / 4
    np.testing.assert_allclose(np.diff(out["distance"]), step)
    assert out["distance"].iloc[0] == -60 and out["distance"].iloc[-1] == 50
    # the measure is the mean perimeter 2 pi (R + t) of the shell around g (half shells at
    # the two ends of the range)
    g = out["distance"].to_numpy()
    mid = (np.maximum(-60, g - step / 2) + np.minimum(50, g + step / 2)) / 2
    np.testing.assert_allclose(out["geometry_measure"], 2 * math.pi * (R + mid), rtol=1e-3)
    middle = out[(out["distance"] > -60 + 4 * bw) & (out["distance"] < 50 - 4 * bw)]
    expected = n / (2 * half) ** 2
    np.testing.assert_allclose(middle["density"], expected, rtol=0.05)
    # and the total mass is the number of points in range (the reflections keep it all)
    inside = np.trapezoid(out["count_density"], out["distance"])
    counted = sf.ring_density(ds, "tx", "tumor", ring_width=110, inward=60, outward=50).compute()
    assert inside == pytest.approx(counted["count"].sum(), rel=0.002)


def test_smooth_reflection_at_the_inner_end_exact() -> None:
    # one point at signed distance -3.9 with inward=4, bw=1: K(-0.1) + its reflection K(0.1)
    big = shapely.box(-100, -100, 100, 100)
    pts = sf.Points(pd.DataFrame({"x": [96.1], "y": [0.0]}))
    ds = _ds(pts, [big])
    out = sf.smooth_density(ds, "tx", "tumor", bandwidth=1, inward=4, outward=4).compute()
    at = out.set_index("distance")["count_density"]
    assert at[-4.0] == pytest.approx(2 * math.exp(-0.005) / math.sqrt(2 * math.pi), rel=1e-11)
    assert at[4.0] == 0.0  # 7.9 bandwidths away (cut at 4)


def test_smooth_zero_measure_gives_nan() -> None:
    square = shapely.box(0, 0, 10, 10)
    ds = _ds(sf.Points(pd.DataFrame({"x": [5.0], "y": [4.0]})), [square])
    out = sf.smooth_density(ds, "tx", "tumor", bandwidth=1, inward=6, outward=1).compute()
    first = out.iloc[0]
    assert first["distance"] == -6 and first["geometry_measure"] == 0
    assert math.isnan(first["density"])


# --- partition invariance, and the real cluster ---------------------------------------------
def test_one_and_eight_partitions_identical() -> None:
    n = 60_000
    contours = [_disk(60), shapely.box(80, -40, 150, 40)]
    one = _ds(_uniform(n, 150, seed=3, parts=1), contours)
    eight = _ds(_uniform(n, 150, seed=3, parts=8), contours)
    assert one.points["tx"].npartitions == 1 and eight.points["tx"].npartitions == 8
    for fn, kw in (
        (sf.ring_density, {"ring_width": 7.5}),
        (sf.smooth_density, {"bandwidth": 3.0, "grid_step": 1.3}),
    ):
        a = fn(one, "tx", "tumor", inward=30, outward=25, value_key="gene", **kw).compute()
        b = fn(eight, "tx", "tumor", inward=30, outward=25, value_key="gene", **kw).compute()
        pd.testing.assert_frame_equal(a, b, check_exact=True)
        assert set(a["category"].cat.categories) == {"a", "b", "c"}
        assert len(a) == 2 * 3 * (len(a) // 6) and a["density"].notna().any()


def test_runs_on_a_cluster(cluster_client: object) -> None:
    ds = _ds(_uniform(20_000, 150, seed=4, parts=4), [_disk(60)])
    lazy = sf.smooth_density(ds, "tx", "tumor", bandwidth=3.0, inward=20, outward=20)
    on_cluster = lazy.compute()
    local = lazy.compute(scheduler="sync")
    pd.testing.assert_frame_equal(on_cluster, local, check_exact=True)
    assert on_cluster["count_density"].sum() > 0


# --- an independent reference ---------------------------------------------------------------
def _random_contours(rng: np.random.Generator) -> list:
    out = []
    for k in range(6):
        c = rng.uniform(0, 400, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
        radii = rng.uniform(25, 60, 24)
        poly = shapely.Polygon(np.c_[c[0] + radii * np.cos(angles), c[1] + radii * np.sin(angles)])
        if k == 2:
            poly = poly.difference(shapely.Point(*c).buffer(10))
        out.append(shapely.make_valid(poly))
    out.append(shapely.MultiPolygon([shapely.box(420, 0, 460, 50), shapely.box(470, 20, 500, 90)]))
    return [g if g.geom_type in ("Polygon", "MultiPolygon") else g.geoms[0] for g in out]


def _reference_distances(x: np.ndarray, y: np.ndarray, geoms: list) -> np.ndarray:
    """(n, G) signed distances with shapely: distance to the boundary, negative if contained."""
    pts = shapely.points(x, y)
    out = np.empty((len(x), len(geoms)))
    for g, geom in enumerate(geoms):
        d = shapely.distance(pts, geom.boundary)
        out[:, g] = np.where(d == 0, 0.0, np.where(shapely.contains(geom, pts), -d, d))
    return out


def test_kernel_distances_match_shapely() -> None:
    rng = np.random.default_rng(7)
    geoms = _random_contours(rng)
    x, y = rng.uniform(-80, 580, 30_000), rng.uniform(-80, 480, 30_000)
    index = build_segment_index(flatten_polygons(np.array(geoms, dtype=object)), 40.0)
    pi, gi, d = signed_distances(x, y, index, -25.0, 40.0)
    ref = _reference_distances(x, y, geoms)
    want = np.argwhere((ref >= -25) & (ref <= 40))
    got = np.c_[pi, gi]
    order = np.lexsort((gi, pi))
    np.testing.assert_array_equal(got[order], want)  # argwhere is row-major: by point, contour
    np.testing.assert_allclose(d[order], ref[want[:, 0], want[:, 1]], rtol=0, atol=1e-9)


def test_matches_an_independent_shapely_reference() -> None:
    rng = np.random.default_rng(11)
    geoms = _random_contours(rng)
    n = 40_000
    raw = pd.DataFrame({"x": rng.uniform(-50, 300, n), "y": rng.uniform(-50, 250, n)})
    raw["gene"] = pd.Categorical(rng.choice(["u", "v"], n), categories=["u", "v"])
    to_global = sf.Affine(
        np.array([[1.6, 0.2, 10.0], [-0.1, 1.8, 5.0], [0, 0, 1.0]]), ("x", "y"), ("x", "y")
    )
    pts = sf.Points(
        raw, feature_key="gene", transforms={"global": to_global}, rows_per_partition=7000
    )
    # contours stored shifted by (-5, +3) and scaled by 2, mapped back by their transform
    stored = [
        shapely.affinity.scale(shapely.affinity.translate(g, -5, 3), 2, 2, origin=(0, 0))
        for g in geoms
    ]
    back = sf.Sequence([sf.Scale([0.5, 0.5], ("x", "y")), sf.Translation([5, -3], ("x", "y"))])
    ids = [f"c{k}" for k in range(len(geoms))]
    ds = _ds(pts, stored, index=ids, transforms={"global": back})

    m = to_global.to_affine_matrix(("x", "y"), ("x", "y"))
    gx = m[0, 0] * raw["x"] + m[0, 1] * raw["y"] + m[0, 2]
    gy = m[1, 0] * raw["x"] + m[1, 1] * raw["y"] + m[1, 2]
    ref = _reference_distances(gx.to_numpy(), gy.to_numpy(), geoms)
    codes = raw["gene"].cat.codes.to_numpy()

    # rings
    edges = np.array([-30, -18, -6, 0, 12, 24, 30.0])
    out = sf.ring_density(
        ds, "tx", "tumor", ring_width=12, inward=30, outward=30, value_key="gene"
    ).compute()
    np.testing.assert_array_equal(np.unique(out["ring_start"]), edges[:-1])
    for g, geom in enumerate(geoms):
        for c, cat in enumerate(["u", "v"]):
            s = ref[codes == c, g]
            k = np.searchsorted(edges, s, side="right") - 1
            k[s == edges[-1]] = len(edges) - 2
            counts = np.bincount(k[(k >= 0) & (k < len(edges) - 1)], minlength=len(edges) - 1)
            areas = [
                shapely.buffer(geom, b, quad_segs=16).area
                - shapely.buffer(geom, a, quad_segs=16).area
                if a != 0
                else shapely.buffer(geom, b, quad_segs=16).area - geom.area
                for a, b in itertools.pairwise(edges)
            ]
            areas = np.maximum(areas, 0)
            rows = out[(out["contour"] == ids[g]) & (out["category"] == cat)]
            np.testing.assert_array_equal(rows["count"], counts)
            np.testing.assert_allclose(rows["area"], areas, rtol=1e-9)
            np.testing.assert_allclose(rows["density"], counts / areas, rtol=1e-9)

    # smoothed profile
    bw, lo, hi = 4.0, -20.0, 15.0
    out = sf.smooth_density(ds, "tx", "tumor", bandwidth=bw, inward=20, outward=15).compute()
    grid = out["distance"].unique()
    for g in range(len(geoms)):
        s = ref[:, g]
        s = s[(s >= lo) & (s <= hi)]
        total = np.zeros(grid.size)
        for m_ in (s, 2 * lo - s, 2 * hi - s):
            u = (grid[:, None] - m_[None, :]) / bw
            k = np.exp(-0.5 * u**2) / (math.sqrt(2 * math.pi) * bw)
            total += np.where(np.abs(u) <= 4, k, 0).sum(axis=1)
        rows = out[out["contour"] == ids[g]]
        np.testing.assert_allclose(rows["count_density"], total, rtol=1e-9, atol=1e-9 * total.max())


def test_shapes_values_count_by_centroid() -> None:
    square = shapely.box(0, 0, 10, 10)
    cells = gpd.GeoDataFrame(
        geometry=[shapely.box(4, 4, 6, 6), shapely.box(11, 4, 13, 6), shapely.box(30, 30, 31, 31)]
    )  # centroids at -5 (inside), +2, far
    spots = gpd.GeoDataFrame({"radius": [3.0]}, geometry=shapely.points([[5.0, 1.0]]))  # -1
    ds = sf.Dataset(
        shapes={
            "tumor": sf.Shapes(gpd.GeoDataFrame(geometry=[square])),
            "cells": sf.Shapes(cells),
            "spots": sf.Shapes(spots),
        }
    )
    out = sf.ring_density(ds, "cells", "tumor", ring_width=2, inward=6, outward=4).compute()
    np.testing.assert_array_equal(out["count"], [1, 0, 0, 0, 1])
    out = sf.ring_density(ds, "spots", "tumor", ring_width=2, inward=6, outward=4).compute()
    np.testing.assert_array_equal(out["count"], [0, 0, 1, 0, 0])


def test_far_partitions_are_not_read_and_explain() -> None:
    rng = np.random.default_rng(5)
    near = pd.DataFrame({"x": rng.uniform(0, 10, 1000), "y": rng.uniform(0, 10, 1000)})
    far = pd.DataFrame({"x": rng.uniform(1e4, 1.1e4, 1000), "y": rng.uniform(1e4, 1.1e4, 1000)})
    pts = sf.Points(pd.concat([near, far], ignore_index=True), rows_per_partition=500)
    ds = _ds(pts, [shapely.box(2, 2, 8, 8)])
    lazy = sf.ring_density(ds, "tx", "tumor", ring_width=1, inward=3, outward=3)
    text = lazy.explain(print_=False)
    assert "values partitions read: 2 of 4" in text and "RingDensity 6 rings" in text
    assert lazy.compute()["count"].sum() == 1000


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors() -> None:
    pts = sf.Points(pd.DataFrame({"x": [1.0], "y": [1.0], "g": ["a"]}))
    circles = gpd.GeoDataFrame({"radius": [1.0]}, geometry=shapely.points([[0.0, 0.0]]))
    ds = sf.Dataset(
        points={"tx": pts},
        shapes={
            "tumor": sf.Shapes(gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 2, 2)])),
            "spots": sf.Shapes(circles),
        },
    )
    with pytest.raises(sf.PlanError, match="'spots' must be polygon shapes, got circles"):
        sf.ring_density(ds, "tx", "spots")
    with pytest.raises(sf.PlanError, match="contours 'tx' must be polygon shapes, got Points"):
        sf.ring_density(ds, "tumor", "tx")
    for w in (0, -1.0, float("nan")):
        with pytest.raises(sf.PlanError, match="ring_width must be a finite number > 0"):
            sf.ring_density(ds, "tx", "tumor", ring_width=w)
    for bw in (0, -2):
        with pytest.raises(sf.PlanError, match="bandwidth must be a finite number > 0"):
            sf.smooth_density(ds, "tx", "tumor", bandwidth=bw)
    with pytest.raises(sf.PlanError, match="grid_step"):
        sf.smooth_density(ds, "tx", "tumor", bandwidth=1, grid_step=0)
    with pytest.raises(sf.PlanError, match="inward and outward are both 0"):
        sf.ring_density(ds, "tx", "tumor", inward=0, outward=0)
    with pytest.raises(sf.PlanError, match="inward must be a finite number >= 0"):
        sf.ring_density(ds, "tx", "tumor", inward=-1)
    with pytest.raises(sf.PlanError, match="value_key 'g' of 'tx' has dtype"):
        sf.ring_density(ds, "tx", "tumor", value_key="g")
    with pytest.raises(sf.PlanError, match="no element named 'nope'"):
        sf.ring_density(ds, "nope", "tumor")
    with pytest.raises(sf.TransformError, match="'tx' has no path to coordinate system 'um'"):
        sf.ring_density(ds, "tx", "tumor", coordinate_system="um")
    assert issubclass(sf.TransformError, sf.SpatialFlowError)
