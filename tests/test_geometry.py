"""sf.rasterize / sf.to_circles / sf.get_extent against spatialdata 0.8 on randomized data, pixel
centres, the documented differences, and bad input."""

from __future__ import annotations

import warnings

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import spatialflow as sf

AFF = np.array([[0.8, -0.6, 30.0], [0.6, 0.8, -10.0], [0.0, 0.0, 1.0]])  # a rotation + shift


def _sd() -> object:
    import spatialdata

    warnings.filterwarnings("ignore")
    return spatialdata


def _sd_affine(m: np.ndarray) -> object:
    from spatialdata.transformations import Affine

    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


def _points(seed: int, n: int = 20_000) -> tuple[pd.DataFrame, sf.Points, object]:
    from spatialdata.models import PointsModel

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.uniform(0, 80, n), "y": rng.uniform(0, 60, n), "w": rng.random(n)})
    df["gene"] = pd.Categorical(rng.choice(["g1", "g0", "g2"], n), categories=["g1", "g0", "g2"])
    ours = sf.Points(
        df,
        feature_key="gene",
        transforms={"global": sf.Affine(AFF, ("x", "y"), ("x", "y"))},
        rows_per_partition=3000,
    )
    theirs = PointsModel.parse(
        dd.from_pandas(df, npartitions=3),
        feature_key="gene",
        transformations={"global": _sd_affine(AFF)},
    )
    return df, ours, theirs


def _polygons(
    seed: int, n: int = 40, circles: bool = False, disjoint: bool = False
) -> tuple[sf.Shapes, object]:
    from spatialdata.models import ShapesModel

    rng = np.random.default_rng(seed)
    centres = rng.uniform(5, 75, (n, 2))
    if disjoint:  # one shape per 20 x 20 cell, radius < 9.5
        cells = rng.permutation(np.argwhere(np.ones((8, 5))))[:n]
        centres = 10 + 20 * cells + rng.uniform(-0.5, 0.5, (n, 2))
    index = pd.Index(rng.permutation(np.arange(100, 100 + 3 * n, 3)))
    if circles:
        gdf = gpd.GeoDataFrame(
            {"radius": rng.uniform(1, 6, n), "score": rng.random(n)},
            geometry=shapely.points(centres),
            index=index,
        )
    else:
        geoms = []
        for c in centres:
            a = np.sort(rng.uniform(0, 2 * np.pi, 7))
            r = rng.uniform(2, 9, 7)
            geoms.append(shapely.Polygon(np.c_[c[0] + r * np.cos(a), c[1] + r * np.sin(a)]))
        geoms = [g if g.is_valid else g.convex_hull for g in geoms]
        gdf = gpd.GeoDataFrame({"score": rng.random(n)}, geometry=geoms, index=index)
    scale = sf.Scale([1.5, 1.5], ("x", "y"))
    ours = sf.Shapes(gdf, transforms={"global": scale}, rows_per_partition=12)
    from spatialdata.transformations import Scale

    theirs = ShapesModel.parse(gdf, transformations={"global": Scale([1.5, 1.5], axes=("x", "y"))})
    return ours, theirs


def _compare(ours: object, theirs: object) -> None:
    """Values, shape, dtype and placement: every pixel centre lands at the same point."""
    from spatialdata.transformations import get_transformation

    got = ours.scale(0)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(got.values, theirs.values)  # type: ignore[attr-defined]
    t_ours = ours.transforms["global"].to_affine_matrix(("x", "y"), ("x", "y"))  # type: ignore[attr-defined]
    t_theirs = get_transformation(theirs, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(t_ours, t_theirs, rtol=1e-12, atol=1e-12)


def _grid_kw(unit: float = 0.73) -> dict:
    return {
        "axes": ("y", "x"),
        "min_coordinate": [-12.3, 5.1],
        "max_coordinate": [97.9, 121.7],
        "target_coordinate_system": "global",
        "target_unit_to_pixels": unit,
    }


# --- rasterize ---------------------------------------------------------------------------------
def test_rasterize_points_equals_spatialdata() -> None:
    sd = _sd()
    df, ours, theirs = _points(0)
    kw = _grid_kw()
    for agg, sd_kw in (
        ("count", {}),
        ("sum", {"value_key": "w", "agg_func": "sum"}),
        ("count_cat", {"value_key": "gene", "return_single_channel": False}),
    ):
        mine = sf.rasterize(ours, agg=agg, value_key=sd_kw.get("value_key"), chunk=16, **kw)
        ref = sd.rasterize(theirs, **kw, **sd_kw)
        assert mine.scale(0).data.chunksize[1:] == (16, 16)  # really tiled
        if agg == "sum":  # float sums in another order: equal to rounding
            np.testing.assert_allclose(mine.scale(0).values, ref.values, rtol=1e-12, atol=1e-12)
        else:
            _compare(mine, ref)
        if agg == "count_cat":
            # documented difference: channels are named by category (spatialdata: 0, 1, 2)
            assert mine.channel_names == ["g1", "g0", "g2"]
            assert list(ref.coords["c"].values) == [0, 1, 2]
    assert mine.scale(0).values.sum() > 0.3 * len(df)  # the box holds a good share of points


def test_rasterize_shapes_equals_spatialdata() -> None:
    sd = _sd()
    # a canvas holding every shape (see the max-edge test for shapes crossing its far edges)
    kw = {**_grid_kw(1.9), "min_coordinate": [-3.3, -2.1], "max_coordinate": [131.9, 133.7]}
    for circles in (False, True):
        ours, theirs = _polygons(1, circles=circles)  # overlapping
        _compare(
            sf.rasterize(ours, agg="count", chunk=64, **kw),
            sd.rasterize(theirs, agg_func="count", value_key="score", **kw),
        )
        # 'first' where shapes overlap is not row order in datashader (see the next test), so
        # labels are compared on disjoint shapes
        ours, theirs = _polygons(1, circles=circles, disjoint=True)
        _compare(sf.rasterize(ours, chunk=64, **kw), sd.rasterize(theirs, **kw))
        labels = sf.rasterize(ours, return_regions_as_labels=True, chunk=64, **kw)
        ref = sd.rasterize(theirs, return_regions_as_labels=True, **kw)
        assert isinstance(labels, sf.Labels) and labels.dtype == ref.dtype == np.uint16
        _compare(labels, ref)
        assert labels.attrs["label_index_to_category"] == ref.attrs["label_index_to_category"]
    ours, theirs = _polygons(2)
    mine = sf.rasterize(ours, agg="sum", value_key="score", chunk=50, **kw)
    ref = sd.rasterize(theirs, value_key="score", agg_func="sum", **kw)
    np.testing.assert_allclose(mine.scale(0).values, ref.values, rtol=1e-12)


def test_rasterize_pixel_centres_are_placed_exactly() -> None:
    # canvas x in [10, 20] with 4 px, y in [0, 7.5] with 3 px (pixels of 2.5): a point at the
    # centre of pixel (i=1, j=2) lands in that pixel, and the transform maps (j+.5, i+.5) back
    px, py = 10 + 2.5 * 2.5, 1.5 * 2.5
    pts = sf.Points(pd.DataFrame({"x": [px], "y": [py]}))
    img = sf.rasterize(
        pts, axes=("x", "y"), min_coordinate=[10, 0], max_coordinate=[20, 7.5],
        target_coordinate_system="global", target_width=4,
    )  # fmt: skip
    arr = img.scale(0).values[0]
    assert arr.shape == (3, 4) and arr[1, 2] == 1 and arr.sum() == 1
    m = img.transforms["global"].to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(m @ [2.5, 1.5, 1], [px, py, 1])
    # a square of half a pixel around that centre paints exactly that pixel (centre sampling)
    sq = sf.Shapes(gpd.GeoDataFrame(geometry=[shapely.box(px - 0.6, py - 0.6, px + 0.6, py + 0.6)]))
    lab = sf.rasterize(
        sq, axes=("x", "y"), min_coordinate=[10, 0], max_coordinate=[20, 7.5],
        target_coordinate_system="global", target_width=4, return_regions_as_labels=True,
    )  # fmt: skip
    np.testing.assert_array_equal(np.argwhere(lab.scale(0).values), [[1, 2]])


def test_rasterize_first_is_row_order() -> None:
    # datashader's 'first' over overlapping polygons does not follow row order (here box A
    # wins in both orders); spatialflow's label is the first shape in row order
    sd = _sd()
    from spatialdata.models import ShapesModel

    a, b = shapely.box(0, 0, 3, 3), shapely.box(1, 1, 4, 4)
    kw = {"axes": ("x", "y"), "min_coordinate": [0, 0], "max_coordinate": [4, 4],
          "target_coordinate_system": "global", "target_unit_to_pixels": 1}  # fmt: skip
    for geoms in ([a, b], [b, a]):
        gdf = gpd.GeoDataFrame(geometry=geoms, index=[0, 1])
        mine = sf.rasterize(sf.Shapes(gdf, spatial_sort=False), **kw).scale(0).values[0]
        ref = sd.rasterize(ShapesModel.parse(gdf), **kw).values[0]
        assert mine[2, 2] == 1  # pixel centre (2.5, 2.5) is in both: the first row wins
        assert ref[2, 2] == (1 if geoms[0] is a else 2)  # spatialdata: always box a


def test_rasterize_shape_beyond_the_far_edge_difference() -> None:
    # a box starting above the last row's centre, crossing the canvas's max y: datashader
    # paints the last row although no centre there is inside; spatialflow paints nothing
    sd = _sd()
    from spatialdata.models import ShapesModel

    gdf = gpd.GeoDataFrame(geometry=[shapely.box(1.2, 3.8, 2.8, 6.0)])
    kw = {"axes": ("x", "y"), "min_coordinate": [0, 0], "max_coordinate": [4, 4],
          "target_coordinate_system": "global", "target_unit_to_pixels": 1}  # fmt: skip
    mine = sf.rasterize(sf.Shapes(gdf), agg="count", **kw).scale(0).values[0]
    ref = sd.rasterize(ShapesModel.parse(gdf), **kw).values[0]
    assert mine.sum() == 0
    assert ref[3].sum() > 0 and ref[:3].sum() == 0


def test_rasterize_edge_centre_difference_is_documented() -> None:
    # pixel centres exactly on polygon edges: spatialflow's one rule puts left/bottom edges in
    # and right/top edges out (two boxes sharing the edge x = 2.5 each get one side of it);
    # datashader leaves the centre column on the left edge x = 0.5 out
    sd = _sd()
    from spatialdata.models import ShapesModel

    gdf = gpd.GeoDataFrame(
        {"score": [1.0, 1.0]}, geometry=[shapely.box(0.5, 0, 2.5, 2), shapely.box(2.5, 0, 4, 2)]
    )
    kw = {"axes": ("x", "y"), "min_coordinate": [0, 0], "max_coordinate": [4, 2],
          "target_coordinate_system": "global", "target_unit_to_pixels": 1}  # fmt: skip
    mine = sf.rasterize(sf.Shapes(gdf), agg="count", **kw).scale(0).values[0]
    ref = sd.rasterize(ShapesModel.parse(gdf), agg_func="count", value_key="score", **kw).values[0]
    np.testing.assert_array_equal(mine, [[1, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(ref, [[0, 1, 1, 1], [0, 1, 1, 1]])


# --- to_circles ----------------------------------------------------------------------------------
def test_to_circles_equals_spatialdata() -> None:
    sd = _sd()
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Scale

    ours, theirs = _polygons(3)
    mine = sf.to_circles(ours)
    assert mine.is_circles and mine.transforms["global"] is ours.transforms["global"]
    got = mine.data.compute().sort_index()
    ref = sd.to_circles(theirs).sort_index()
    np.testing.assert_array_equal(got.index, ref.index)
    np.testing.assert_allclose(got["radius"], ref["radius"], rtol=1e-12)
    np.testing.assert_allclose(
        shapely.get_coordinates(got.geometry.values),
        shapely.get_coordinates(ref.geometry.values),
        rtol=1e-12,
    )
    assert sf.to_circles(mine) is mine  # circles stay circles

    rng = np.random.default_rng(5)
    arr = rng.integers(0, 9, (50, 70)).astype(np.int32)
    lab = sf.Labels(arr, chunks=(16, 16), transforms={"global": sf.Scale([2.0, 0.5], ("y", "x"))})
    got = sf.to_circles(lab)
    ref = sd.to_circles(
        Labels2DModel.parse(arr, dims=("y", "x"))  # identity: spatialdata 0.8 raises for
    )  # labels with another transform (see the module doc); circles are in intrinsic pixels
    with pytest.raises(ValueError, match="equal shapes"):
        sd.to_circles(
            Labels2DModel.parse(
                arr, dims=("y", "x"), transformations={"global": Scale([2.0, 0.5], axes=("y", "x"))}
            )
        )
    g = got.data.compute().sort_index()
    ref = ref.sort_index()
    np.testing.assert_array_equal(g.index, ref.index)
    np.testing.assert_allclose(g["radius"], ref["radius"], rtol=1e-12)
    np.testing.assert_allclose(
        shapely.get_coordinates(g.geometry.values),
        shapely.get_coordinates(ref.geometry.values),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        got.transforms["global"].to_affine_matrix(("x", "y"), ("x", "y")), np.diag([0.5, 2.0, 1.0])
    )


# --- get_extent ----------------------------------------------------------------------------------
def test_get_extent_equals_spatialdata() -> None:
    sd = _sd()
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Affine as SdAffine

    _, pts, sd_pts = _points(6)
    shp, sd_shp = _polygons(7)
    circ, sd_circ = _polygons(8, circles=True)
    m = np.array([[0.5, 0.2, 3.0], [-0.1, 2.0, 1.0], [0, 0, 1.0]])  # x, y affine
    img_arr = np.zeros((2, 30, 40), np.uint8)
    img = sf.Image(img_arr, transforms={"global": sf.Affine(m, ("x", "y"), ("x", "y"))})
    sd_img = Image2DModel.parse(
        img_arr,
        dims=("c", "y", "x"),
        transformations={"global": SdAffine(m, input_axes=("x", "y"), output_axes=("x", "y"))},
    )
    for ours, theirs in ((pts, sd_pts), (shp, sd_shp), (circ, sd_circ), (img, sd_img)):
        got, ref = sf.get_extent(ours), sd.get_extent(theirs)
        assert sorted(got) == sorted(ref)
        for a in ref:
            np.testing.assert_allclose(got[a], ref[a], rtol=1e-12, err_msg=a)
    ds = sf.Dataset(images={"im": img}, points={"tx": pts}, shapes={"cells": shp, "spots": circ})
    sdata = sd.SpatialData(
        images={"im": sd_img}, points={"tx": sd_pts}, shapes={"cells": sd_shp, "spots": sd_circ}
    )
    got, ref = sf.get_extent(ds), sd.get_extent(sdata)
    for a in ref:
        np.testing.assert_allclose(got[a], ref[a], rtol=1e-12)
    # without rotation the points' extent comes from partition bounds (no read), still exact
    plain = sf.Points(pts.data.compute(), transforms={"global": sf.Scale([2, 3], ("x", "y"))})
    df = pts.data.compute()
    assert sf.get_extent(plain)["y"] == pytest.approx((3 * df["y"].min(), 3 * df["y"].max()))


# --- bad input -------------------------------------------------------------------------------------
def test_geometry_bad_input() -> None:
    _, pts, _ = _points(9, n=100)
    img = sf.Image(np.zeros((1, 4, 4)))
    kw = _grid_kw()
    with pytest.raises(sf.PlanError, match="takes points or shapes, got Image"):
        sf.rasterize(img, **kw)  # type: ignore[arg-type]
    with pytest.raises(sf.PlanError, match="exactly one of"):
        sf.rasterize(pts, **{**kw, "target_width": 10})
    with pytest.raises(sf.PlanError, match="agg for Points"):
        sf.rasterize(pts, agg="first", **kw)
    with pytest.raises(sf.PlanError, match="needs value_key"):
        sf.rasterize(pts, agg="sum", **kw)
    with pytest.raises(sf.PlanError, match="greater than"):
        sf.rasterize(pts, **{**kw, "max_coordinate": [-20, 5]})
    with pytest.raises(sf.TransformError, match="no transformation to coordinate system 'um'"):
        sf.rasterize(pts, **{**kw, "target_coordinate_system": "um"})
    with pytest.raises(sf.TransformError, match="'um'"):
        sf.get_extent(pts, "um")
    with pytest.raises(sf.TransformError, match="no element of the Dataset"):
        sf.get_extent(sf.Dataset(points={"tx": pts}), "um")
    with pytest.raises(sf.PlanError, match="takes polygon shapes or labels"):
        sf.to_circles(pts)  # type: ignore[arg-type]
