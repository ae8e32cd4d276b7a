"""The element model rejects each kind of bad input with a ValidationError naming element and field."""

from __future__ import annotations

import anndata as ad
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import spatialflow as sf
from spatialflow import Dataset, Image, Labels, Points, Shapes, Table, ValidationError


def _points_df(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.random(n) * 100,
            "y": rng.random(n) * 100,
            "gene": pd.Categorical(rng.choice(["a", "b", "c"], n)),
            "cell_id": rng.integers(0, 5, n),
        }
    )


def _raises(match_parts, fn, *args, **kwargs):
    with pytest.raises(ValidationError) as info:
        fn(*args, **kwargs)
    for part in match_parts:
        assert part in str(info.value), (part, str(info.value))
    return info.value


# --- rasters -----------------------------------------------------------------------------
def test_image_builds_multiscale_with_channel_names():
    img = Image(
        np.zeros((2, 64, 32), np.uint16),
        channel_names=["DAPI", "CD3"],
        scale_factors=[2, 2],
        name="img",
    )
    assert img.n_scales == 3
    assert [img.scale(k).shape for k in range(3)] == [(2, 64, 32), (2, 32, 16), (2, 16, 8)]
    assert list(img.channel_names) == ["DAPI", "CD3"]
    assert isinstance(img.scale(1).data, da.Array)
    assert img.scale(2).dtype == np.uint16
    assert img.scale_transform(1) == sf.Scale([2.0, 2.0], ("y", "x"))


@pytest.mark.parametrize("dims", [("y", "x", "c"), ("x", "y"), ("c", "y", "x", "t")])
def test_image_rejects_wrong_dims(dims):
    shape = (2,) * len(dims)
    _raises(["Image 'im'", "dims"], Image, np.zeros(shape, np.uint8), dims=dims, name="im")


def test_image_rejects_non_numeric_dtype():
    _raises(["Image 'im'", "dtype"], Image, np.array([[["a"]]]), name="im")


def test_image_rejects_bad_channel_names():
    _raises(
        ["channel_names", "2 names for 3 channels"],
        Image,
        np.zeros((3, 4, 4)),
        channel_names=["a", "b"],
        name="im",
    )
    _raises(
        ["channel_names", "unique"], Image, np.zeros((2, 4, 4)), channel_names=["a", "a"], name="im"
    )


def test_labels_reject_float_and_keep_ids_when_downsampling():
    _raises(["Labels 'lab'", "dtype", "integers"], Labels, np.zeros((4, 4), np.float32), name="lab")
    arr = np.arange(64, dtype=np.int32).reshape(8, 8)
    lab = Labels(arr, scale_factors=[2], name="lab")
    small = lab.scale(1).values
    assert small.shape == (4, 4)
    assert set(np.unique(small)) <= set(np.unique(arr))  # nearest: no averaged ids


def test_raster_rejects_bad_scale_factors():
    _raises(["scale_factors"], Image, np.zeros((1, 4, 4)), scale_factors=[1], name="im")
    _raises(
        ["scale_factors", "smaller than 1"],
        Image,
        np.zeros((1, 4, 4)),
        scale_factors=[2, 2, 2],
        name="im",
    )


# --- points ------------------------------------------------------------------------------
def test_points_spatially_partitioned_with_true_bounds():
    df = _points_df(1000)
    p = Points(df, feature_key="gene", instance_key="cell_id", rows_per_partition=100, name="tx")
    assert p.npartitions == 10
    assert p.data["gene"].cat.known
    parts = [p.data.get_partition(k).compute() for k in range(p.npartitions)]
    for part, box in zip(parts, p.partition_bounds, strict=True):
        np.testing.assert_allclose(box, [part.x.min(), part.y.min(), part.x.max(), part.y.max()])
    # spatial partitioning: partition boxes are much smaller than the whole extent
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in p.partition_bounds]
    assert np.mean(areas) < 0.5 * 100 * 100
    # nothing lost, index kept
    got = pd.concat(parts).sort_index()
    pd.testing.assert_frame_equal(got, df.sort_index(), check_categorical=False)


def test_points_rejects_nan_coordinates():
    df = _points_df()
    df.loc[3, "y"] = np.nan
    _raises(["Points 'tx'", "coordinates", "NaN"], Points, df, name="tx")


def test_points_rejects_missing_and_non_numeric_coordinates():
    df = _points_df()
    _raises(["Points 'tx'", "'y'"], Points, df.drop(columns="y"), name="tx")
    bad = df.assign(x=df.x.astype(str))
    _raises(["Points 'tx'", "x", "numeric"], Points, bad, name="tx")


def test_points_feature_key_must_be_known_categorical_in_dask_input():
    df = _points_df()
    ddf = dd.from_pandas(df.assign(gene=df.gene.astype(str)), npartitions=2)
    _raises(["Points 'tx'", "gene", "categorical"], Points, ddf, feature_key="gene", name="tx")
    unknown = dd.from_pandas(df, npartitions=2)
    unknown["gene"] = unknown["gene"].cat.as_unknown()
    _raises(["Points 'tx'", "gene", "as_known"], Points, unknown, feature_key="gene", name="tx")
    _raises(["Points 'tx'", "feature_key", "'nope'"], Points, df, feature_key="nope", name="tx")
    _raises(["Points 'tx'", "instance_key"], Points, df, instance_key="nope", name="tx")


def test_points_from_dask_computes_nothing_until_asked():
    df = _points_df(200)
    ddf = dd.from_pandas(df, npartitions=4)
    p = Points(ddf, feature_key="gene")
    assert p.partition_bounds is None
    b = p.compute_partition_bounds()
    assert b.shape == (4, 4)
    np.testing.assert_allclose(p.bounds(), [df.x.min(), df.y.min(), df.x.max(), df.y.max()])


# --- shapes ------------------------------------------------------------------------------
def _circles(n=10, radius=1.0):
    rng = np.random.default_rng(1)
    return gpd.GeoDataFrame(
        {"radius": np.full(n, radius)}, geometry=shapely.points(rng.random((n, 2)) * 10)
    )


def test_shapes_circles_and_polygons():
    c = Shapes(_circles(), name="spots")
    assert c.is_circles
    polys = gpd.GeoDataFrame(
        geometry=[
            shapely.box(0, 0, 1, 1),
            shapely.MultiPolygon([shapely.box(2, 2, 3, 3), shapely.box(4, 4, 5, 5)]),
        ]
    )
    p = Shapes(polys, name="cells")
    assert p.geometry_kind == "polygons"
    np.testing.assert_allclose(p.bounds(), [0, 0, 5, 5])
    # circle bounds include the radius
    np.testing.assert_allclose(
        c.partition_bounds[0, :2], shapely.bounds(_circles().geometry.values).min(axis=0)[:2] - 1
    )


def test_shapes_reject_negative_radius():
    _raises(["Shapes 'spots'", "radius", "positive"], Shapes, _circles(radius=-1.0), name="spots")


def test_shapes_reject_mixed_geometry_kinds():
    gdf = gpd.GeoDataFrame(
        {"radius": [1.0, 1.0]}, geometry=[shapely.Point(0, 0), shapely.box(0, 0, 1, 1)]
    )
    _raises(["Shapes 'mix'", "geometry", "mixed"], Shapes, gdf, name="mix")


def test_shapes_reject_nan_coordinates_and_empty_geometries():
    gdf = gpd.GeoDataFrame(
        {"radius": [1.0, 1.0]}, geometry=[shapely.Point(0, 0), shapely.Point(np.nan, 1)]
    )
    _raises(["Shapes 'c'", "geometry"], Shapes, gdf, name="c")
    gdf = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1), shapely.Polygon()])
    _raises(["Shapes 'c'", "geometry", "empty"], Shapes, gdf, name="c")


def test_shapes_reject_radius_for_polygons_and_points_without_radius():
    gdf = gpd.GeoDataFrame({"radius": [1.0]}, geometry=[shapely.box(0, 0, 1, 1)])
    _raises(["radius", "only allowed for circles"], Shapes, gdf, name="c")
    gdf = gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)])
    _raises(["radius", "need"], Shapes, gdf, name="c")


# --- tables ------------------------------------------------------------------------------
def _adata(n=4):
    obs = pd.DataFrame(
        {"region": ["cells"] * n, "cell_id": np.arange(n)}, index=[str(i) for i in range(n)]
    )
    return ad.AnnData(X=np.ones((n, 2), np.float32), obs=obs)


def test_table_links_and_uns():
    t = Table(_adata(), region="cells", region_key="region", instance_key="cell_id", name="tab")
    assert isinstance(t.data.obs["region"].dtype, pd.CategoricalDtype)
    assert t.data.uns["spatialdata_attrs"] == {
        "region": "cells",
        "region_key": "region",
        "instance_key": "cell_id",
    }
    again = Table(t.data)  # read back from uns
    assert again.region == ["cells"] and again.instance_key == "cell_id"


def test_table_rejects_bad_links():
    _raises(
        ["Table 'tab'", "region_key", "'nope'"],
        Table,
        _adata(),
        region="cells",
        region_key="nope",
        instance_key="cell_id",
        name="tab",
    )
    _raises(
        ["Table 'tab'", "region", "'cells'"],
        Table,
        _adata(),
        region="other",
        region_key="region",
        instance_key="cell_id",
        name="tab",
    )
    a = _adata()
    a.obs["cell_id"] = 0
    _raises(
        ["Table 'tab'", "instance_key", "duplicate"],
        Table,
        a,
        region="cells",
        region_key="region",
        instance_key="cell_id",
        name="tab",
    )
    _raises(["Table 'tab'", "together"], Table, _adata(), region="cells", name="tab")


# --- Dataset -----------------------------------------------------------------------------
def test_dataset_names_must_be_well_formed_and_unique():
    pts = Points(_points_df(), feature_key="gene")
    for bad in ["", "has space", "__private", "a/b", ".."]:
        _raises(["name"], Dataset, points={bad: pts})
    circles = Shapes(_circles())
    _raises(
        ["clashes", "points['Cells']"], Dataset, points={"Cells": pts}, shapes={"cells": circles}
    )
    ds = Dataset(points={"tx": pts})
    _raises(["expected a Shapes"], ds.shapes.__setitem__, "s", pts)
    assert ds["tx"] is pts and pts.name == "tx"


def test_dataset_rejects_table_annotating_missing_element():
    t = Table(_adata(), region="cells", region_key="region", instance_key="cell_id")
    _raises(["Table 'tab'", "region", "no element"], Dataset, tables={"tab": t})


def test_dataset_reprs_list_elements_and_coordinate_systems():
    pts = Points(
        _points_df(),
        feature_key="gene",
        transforms={"global": sf.Identity(), "aligned": sf.Scale([2.0, 2.0])},
    )
    ds = Dataset(points={"tx": pts}, shapes={"spots": Shapes(_circles())})
    text = repr(ds)
    assert "tx" in text and "spots" in text and "aligned" in text
    assert ds.coordinate_systems == ["aligned", "global"]
    html = ds._repr_html_()
    assert "<table>" in html and "spots" in html and "aligned" in html
