"""sf.aggregate against spatialdata 0.8's aggregate (the oracle) on randomized data."""

from __future__ import annotations

import warnings

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd
from spatialdata import transformations as sdt
from spatialdata.models import PointsModel, ShapesModel, TableModel

import spatialflow as sf

XY = ("x", "y")
GENES = [f"g{i}" for i in range(12)]


def _affine(rng, scale=1.0):
    a = rng.uniform(0, 2 * np.pi)
    lin = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = lin @ np.array([[1.0, rng.uniform(-0.3, 0.3)], [0.0, rng.uniform(0.7, 1.3)]])
    centre = np.array([50.0, 50.0])  # rotate about the data's centre so both sides overlap
    t = centre - lin @ centre + rng.uniform(-5, 5, 2)
    return sdt.Affine(np.vstack([np.c_[lin, t], [0, 0, 1]]), input_axes=XY, output_axes=XY)


def _polygons(rng, n, string_index):
    geoms = []
    for _ in range(n):
        c = rng.uniform(0, 100, 2)
        k = rng.integers(5, 12)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        r = rng.uniform(4, 15, k)
        geoms.append(shapely.Polygon(np.c_[c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)]))
    for _ in range(max(2, n // 8)):  # multipolygons
        x0, y0 = rng.uniform(0, 80, 2)
        geoms.append(
            shapely.MultiPolygon(
                [
                    shapely.box(x0, y0, x0 + 6, y0 + 5),
                    shapely.box(x0 + 10, y0 + 8, x0 + 15, y0 + 16),
                ]
            )
        )
    geoms = [shapely.make_valid(g) if not g.is_valid else g for g in geoms]
    geoms = [g if g.geom_type in ("Polygon", "MultiPolygon") else g.convex_hull for g in geoms]
    idx = rng.permutation(len(geoms)) * 3 + 7
    index = pd.Index([f"cell-{i}" for i in idx]) if string_index else pd.Index(idx)
    return gpd.GeoDataFrame(
        {"kind": pd.Categorical(rng.choice(["a", "b", "c"], len(geoms)))},
        geometry=geoms,
        index=index,
    )


def _circles(rng, n, string_index):
    xy = rng.uniform(0, 100, (n, 2))
    index = pd.Index([f"spot{i}" for i in range(n)]) if string_index else pd.Index(np.arange(n) * 2)
    return gpd.GeoDataFrame(
        {"radius": rng.uniform(3, 9, n)}, geometry=shapely.points(xy), index=index
    )


def _points(rng, n, z=False):
    df = pd.DataFrame(
        {
            "x": rng.uniform(-5, 105, n),
            "y": rng.uniform(-5, 105, n),
            "gene": pd.Categorical(rng.choice(GENES, n), categories=GENES),
            "intensity": rng.gamma(2.0, 3.0, n),
        }
    )
    if z:
        df["z"] = rng.uniform(0, 5, n)
    return df


def _sdata(seed, *, string_index, by_kind, transforms, z=False):
    rng = np.random.default_rng(seed)
    pts = _points(rng, 4000, z=z)
    by = (
        _polygons(rng, 40, string_index)
        if by_kind == "polygons"
        else _circles(rng, 30, string_index)
    )
    t_pts, t_by = transforms(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = PointsModel.parse(pts, feature_key="gene", transformations=t_pts)
        s = ShapesModel.parse(by, transformations=t_by)
        return sd.SpatialData(points={"pts": p}, shapes={"by": s})


TRANSFORMS = {
    "identity": lambda rng: ({"global": sdt.Identity()}, {"global": sdt.Identity()}),
    "scale_translation": lambda rng: (
        {"global": sdt.Scale([1.5, 1.5], axes=XY)},
        {
            "global": sdt.Sequence(
                [sdt.Scale([1.4, 1.4], axes=XY), sdt.Translation([2.0, 3.0], axes=XY)]
            )
        },
    ),
    "affine_both_and_second_cs": lambda rng: (
        {"global": sdt.Identity(), "aligned": _affine(rng)},
        {"global": sdt.Identity(), "aligned": _affine(rng)},
    ),
}


def _oracle(sdata, value_key, agg, cs, fractions=False, values="pts", by="by"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = sd.aggregate(
            values=values,
            by=by,
            values_sdata=sdata,
            by_sdata=sdata,
            value_key=value_key,
            agg_func=agg,
            target_coordinate_system=cs,
            fractions=fractions,
        )
    return out["table"]


def _dense(x):
    return np.asarray(x.todense()) if hasattr(x, "todense") else np.asarray(x)


def _compare(ours, theirs, rtol=0.0):
    assert list(ours.obs_names) == list(theirs.obs_names)
    assert list(ours.var_names) == list(theirs.var_names)
    np.testing.assert_allclose(_dense(ours.X), _dense(theirs.X), rtol=rtol, atol=0)
    assert ours.obs["instance_id"].dtype == theirs.obs["instance_id"].dtype
    np.testing.assert_array_equal(
        ours.obs["instance_id"].to_numpy(), theirs.obs["instance_id"].to_numpy()
    )
    assert list(ours.obs["region"].astype(str)) == list(theirs.obs["region"].astype(str))
    assert ours.uns["spatialdata_attrs"]["region"] == theirs.uns["spatialdata_attrs"]["region"]


CASES = [
    ("polygons", False, "identity", "global"),
    ("polygons", True, "scale_translation", "global"),
    ("polygons", False, "affine_both_and_second_cs", "aligned"),
    ("circles", True, "identity", "global"),
    ("circles", False, "scale_translation", "global"),
]


@pytest.mark.parametrize(("by_kind", "string_index", "tkey", "cs"), CASES)
def test_counts_by_category_equal_spatialdata(by_kind, string_index, tkey, cs):
    sdata = _sdata(11, string_index=string_index, by_kind=by_kind, transforms=TRANSFORMS[tkey])
    ds = sf.from_spatialdata(sdata)
    ours = sf.aggregate(ds, "pts", "by", value_key="gene", coordinate_system=cs).compute()
    theirs = _oracle(sdata, "gene", "count", cs)
    _compare(ours, theirs)
    assert _dense(ours.X).sum() > 100  # the test exercises real overlaps
    assert ours.X.format == "csr" and (ours.X.data != 0).all()


@pytest.mark.parametrize("agg", ["sum", "mean", "min", "max", "count"])
def test_numeric_value_key_equal_spatialdata(agg):
    sdata = _sdata(
        5,
        string_index=False,
        by_kind="polygons",
        transforms=TRANSFORMS["affine_both_and_second_cs"],
    )
    ds = sf.from_spatialdata(sdata)
    ours = sf.aggregate(
        ds, "pts", "by", value_key="intensity", agg=agg, coordinate_system="aligned"
    ).compute()
    theirs = _oracle(sdata, "intensity", agg, "aligned")
    _compare(ours, theirs, rtol=1e-6 if agg != "count" else 0.0)


def test_points_with_z_against_2d_shapes():
    sdata = _sdata(
        3, string_index=True, by_kind="polygons", transforms=TRANSFORMS["identity"], z=True
    )
    ds = sf.from_spatialdata(sdata)
    ours = sf.aggregate(ds, "pts", "by", value_key="gene").compute()
    _compare(ours, _oracle(sdata, "gene", "count", "global"))


def test_shapes_by_circles_with_fractions_from_a_table():
    rng = np.random.default_rng(2)
    cells = _polygons(rng, 60, string_index=False)
    spots = _circles(rng, 25, string_index=True)
    obs = pd.DataFrame(
        {
            "instance": cells.index.to_numpy(),
            "region": pd.Categorical(["cells"] * len(cells)),
            "cell_type": pd.Categorical(rng.choice(["T", "B", "M"], len(cells))),
        },
        index=[str(i) for i in range(len(cells))],
    )
    import anndata as ad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.SpatialData(
            shapes={
                "cells": ShapesModel.parse(cells.drop(columns="kind")),
                "spots": ShapesModel.parse(spots),
            },
            tables={
                "table": TableModel.parse(
                    ad.AnnData(obs=obs),
                    region="cells",
                    region_key="region",
                    instance_key="instance",
                )
            },
        )
        theirs = sd.aggregate(
            values="cells",
            by="spots",
            values_sdata=sdata,
            by_sdata=sdata,
            value_key="cell_type",
            agg_func="sum",
            fractions=True,
            table_name="table",
        )["table"]
    ds = sf.from_spatialdata(sdata)
    ours = sf.aggregate(
        ds, "cells", "spots", value_key="cell_type", agg="sum", fractions=True
    ).compute()
    _compare(ours, theirs, rtol=1e-6)
    assert _dense(ours.X).sum() > 1.0


def test_shapes_by_shapes_counts_and_numeric_column():
    rng = np.random.default_rng(8)
    small = _polygons(rng, 50, string_index=False)
    small["area_w"] = rng.uniform(1, 3, len(small))
    big = _circles(rng, 12, string_index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.SpatialData(
            shapes={"small": ShapesModel.parse(small), "big": ShapesModel.parse(big)}
        )
    ds = sf.from_spatialdata(sdata)
    ours = sf.aggregate(ds, "small", "big", value_key="kind").compute()
    _compare(ours, _oracle(sdata, "kind", "count", "global", values="small", by="big"))
    ours = sf.aggregate(ds, "small", "big", value_key="area_w", agg="sum", fractions=True).compute()
    _compare(
        ours,
        _oracle(sdata, "area_w", "sum", "global", fractions=True, values="small", by="big"),
        rtol=1e-6,
    )


def test_same_results_on_a_local_cluster(cluster_client):
    sdata = _sdata(
        11, string_index=True, by_kind="polygons", transforms=TRANSFORMS["scale_translation"]
    )
    ds = sf.from_spatialdata(sdata)
    lazy = sf.aggregate(ds, "pts", "by", value_key="gene")
    ours = lazy.compute(scheduler=cluster_client)
    _compare(ours, _oracle(sdata, "gene", "count", "global"))


def test_copartition_and_broadcast_agree_on_synthetic_data():
    ds = sf.datasets.xenium_like(40_000, 900, n_genes=40, transcripts_per_partition=5_000)
    co = sf.aggregate(ds, "transcripts", "cells", value_key="gene")
    assert co.lower().strategy == "copartition"
    bc = sf.aggregate(ds, "transcripts", "cells", value_key="gene", strategy="broadcast")
    assert bc.lower().strategy == "broadcast"
    # co-partitioning joins each points partition with its neighbours only
    assert co.lower().joins < bc.lower().joins
    a, b = dask.compute(co.to_delayed(), bc.to_delayed())
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X))
    pts = ds.points["transcripts"].data.compute()
    assert _dense(a.X).sum() >= (pts.cell_id >= 0).sum()  # every in-cell transcript counted
    text = co.explain(print_=False)
    assert "strategy: copartition" in text and "tasks:" in text and "partitions read" in text


def test_points_by_labels_and_image_by_labels():
    ds = sf.datasets.xenium_like(30_000, 400, n_genes=20, transcripts_per_partition=10_000)
    by_lab = sf.aggregate(ds, "transcripts", "nuclei", value_key="gene").compute()
    pts = ds.points["transcripts"].data.compute()
    lab = ds.labels["nuclei"].scale(0).values
    ps = ds.labels["nuclei"].transforms["global"].scale[0]
    i = np.floor(pts.y.to_numpy(np.float64) / ps).astype(int)
    j = np.floor(pts.x.to_numpy(np.float64) / ps).astype(int)
    ok = (i >= 0) & (j >= 0) & (i < lab.shape[0]) & (j < lab.shape[1])
    ids = np.zeros(len(pts), np.int64)
    ids[ok] = lab[i[ok], j[ok]]
    expected = pd.Series(ids[ids > 0]).value_counts().sort_index()
    got = pd.Series(
        np.asarray(by_lab.X.sum(axis=1)).ravel(), index=by_lab.obs["instance_id"].to_numpy()
    )
    np.testing.assert_array_equal(got.reindex(expected.index).to_numpy(), expected.to_numpy())
    assert set(by_lab.obs["instance_id"]) == set(np.unique(lab)) - {0}
    img = sf.aggregate(ds, "morphology", "nuclei", agg="mean").compute()
    im = ds.images["morphology"].scale(0).values
    frame = pd.DataFrame({"id": lab.ravel(), "dapi": im[0].ravel()})
    mean = frame[frame.id > 0].groupby("id")["dapi"].mean()
    np.testing.assert_allclose(
        _dense(img.X)[:, 0], mean.reindex(img.obs["instance_id"]).to_numpy(), rtol=1e-9
    )
    assert list(img.var_names) == ["channel_DAPI_mean", "channel_PolyT_mean"]


def test_image_by_shapes_counts_pixel_centres():
    ds = sf.datasets.xenium_like(1_000, 100, n_genes=10)
    out = sf.aggregate(ds, "morphology", "cells", agg="count").compute()
    cells = ds.shapes["cells"].data.compute()
    ps = ds.images["morphology"].transforms["global"].scale[0]
    h, w = ds.images["morphology"].shape[1:]
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    cx, cy = (jj.ravel() + 0.5) * ps, (ii.ravel() + 0.5) * ps
    first = cells.geometry.values[0]
    expected = shapely.contains_xy(first, cx, cy).sum()
    got = _dense(out.X)[0, 0]
    assert abs(got - expected) <= 2  # boundary pixels may differ by the edge convention
    assert got > 50


def test_nan_points_dropped_with_warning_and_empty_inputs():
    df = pd.DataFrame(
        {"x": [1.0, np.nan, 5.0], "y": [1.0, 2.0, np.nan], "gene": pd.Categorical(["a", "b", "a"])}
    )
    pts = sf.Points(dask.dataframe.from_pandas(df, npartitions=1), feature_key="gene")
    by = sf.Shapes(gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 10, 10)]))
    ds = sf.Dataset(points={"p": pts}, shapes={"s": by})
    with pytest.warns(UserWarning, match="2 values with NaN coordinates were dropped"):
        out = sf.aggregate(ds, "p", "s").compute()
    assert _dense(out.X).tolist() == [[1, 0]]
    empty = sf.Points(df.iloc[:0].assign(x=[], y=[]), feature_key="gene")
    ds2 = sf.Dataset(points={"p": empty}, shapes={"s": by})
    out = sf.aggregate(ds2, "p", "s").compute()
    assert out.shape == (1, 2) and out.X.nnz == 0


def test_invalid_polygons_are_repaired():
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting
    by = sf.Shapes(gpd.GeoDataFrame(geometry=[bowtie]), spatial_sort=False)
    pts = sf.Points(pd.DataFrame({"x": [2.0, 5.0, 8.0], "y": [5.0, 2.0, 5.0]}))
    out = sf.aggregate(sf.Dataset(points={"p": pts}, shapes={"s": by}), "p", "s").compute()
    repaired = shapely.make_valid(bowtie)  # two triangles meeting at (5, 5)
    expected = int(shapely.contains_xy(repaired, [2.0, 5.0, 8.0], [5.0, 2.0, 5.0]).sum())
    assert expected == 2
    assert _dense(out.X).tolist() == [[expected]]


def test_bad_input():
    ds = sf.datasets.xenium_like(1_000, 50, n_genes=5)
    cases = [
        (dict(values="nope", by="cells"), "no element named 'nope'"),
        (dict(values="cells", by="transcripts"), "has no area"),
        (dict(values="transcripts", by="cells", value_key="missing"), "'missing'"),
        (dict(values="transcripts", by="cells", agg="median"), "agg must be one of"),
        (dict(values="transcripts", by="cells", value_key="gene", agg="mean"), "categorical"),
        (dict(values="transcripts", by="cells", fractions=True), "fractions"),
        (
            dict(values="transcripts", by="cells", coordinate_system="elsewhere"),
            "no transformation",
        ),
    ]
    for kwargs, words in cases:
        with pytest.raises(sf.SpatialFlowError, match=words):
            sf.aggregate(ds, **kwargs)


# --- read from stores: the column-source path, categories from the store, row order -------
@pytest.mark.parametrize("layout", ["spatialdata", "icechunk"])
@pytest.mark.parametrize("tkey", ["identity", "affine_both_and_second_cs"])
def test_stored_points_by_shapes_equal_spatialdata(tmp_path, layout, tkey):
    """Points read from a store go through their column source (no DataFrame per partition);
    the result must not change, whatever the layout, transform or row-group split."""
    cs = "aligned" if tkey.startswith("affine") else "global"
    sdata = _sdata(5, string_index=True, by_kind="polygons", transforms=TRANSFORMS[tkey])
    ds = sf.from_spatialdata(sdata)
    pts = ds.points["pts"]
    # several partitions, so units hold several row groups and meet several by partitions
    small = sf.Points(
        pts.data.compute(),
        feature_key="gene",
        transforms=pts.transforms,
        rows_per_partition=300,
    )
    ds.points["pts"] = small
    url = tmp_path / ("s.zarr" if layout == "spatialdata" else "r.icechunk")
    ds.write(url, format=layout, message="m")
    stored = sf.read(url)
    assert stored.points["pts"].column_source is not None
    assert stored.points["pts"].npartitions > 4
    ours = sf.aggregate(stored, "pts", "by", value_key="gene", coordinate_system=cs).compute()
    _compare(ours, _oracle(sdata, "gene", "count", cs))
    numeric = sf.aggregate(
        stored, "pts", "by", value_key="intensity", agg="mean", coordinate_system=cs
    ).compute()
    _compare(numeric, _oracle(sdata, "intensity", "mean", cs), rtol=1e-9)


def test_categorical_column_of_stored_shapes_gives_one_variable_per_category(tmp_path):
    """spatialdata writes a pd.Categorical column of shapes as a parquet dictionary column
    whose categories dask does not know; the engine must learn them (one per variable)."""
    rng = np.random.default_rng(8)
    small = _polygons(rng, 60, string_index=False)
    small["kind"] = pd.Categorical(
        rng.choice(["a", "b", "c", "d"], len(small)), categories=["d", "c", "b", "a"]
    )
    big = _circles(rng, 12, string_index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.SpatialData(
            shapes={"small": ShapesModel.parse(small), "big": ShapesModel.parse(big)}
        )
        sdata.write(tmp_path / "s.zarr")
        stored_sd = sd.read_zarr(tmp_path / "s.zarr")
    ds = sf.read(tmp_path / "s.zarr")
    ours = sf.aggregate(ds, "small", "big", value_key="kind").compute()
    theirs = _oracle(stored_sd, "kind", "count", "global", values="small", by="big")
    assert ours.n_vars == 4
    _compare(ours, theirs)
    ours = sf.aggregate(ds, "small", "big", value_key="kind", agg="sum", fractions=True).compute()
    theirs = _oracle(stored_sd, "kind", "sum", "global", fractions=True, values="small", by="big")
    _compare(ours, theirs, rtol=1e-9)


def test_aggregated_rows_come_in_the_by_elements_order():
    """Shapes built from memory are partitioned in spatial order; the table still lists them
    in the order the user gave them, as spatialdata does."""
    rng = np.random.default_rng(21)
    by = _polygons(rng, 200, string_index=True)
    by = by.iloc[rng.permutation(len(by))]
    pts = _points(rng, 5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = sd.SpatialData(
            points={"pts": PointsModel.parse(pts, feature_key="gene")},
            shapes={"by": ShapesModel.parse(by)},
        )
    ds = sf.from_spatialdata(sdata)
    ds.shapes["by"] = sf.Shapes(by, rows_per_partition=16)  # spatially sorted partitions
    parts = ds.shapes["by"].data.to_delayed()
    in_partitions = np.concatenate([dask.compute(p)[0].index.to_numpy() for p in parts])
    assert list(in_partitions) != list(by.index)  # the engine's order differs from the user's
    ours = sf.aggregate(ds, "pts", "by", value_key="gene").compute()
    assert list(ours.obs_names) == list(by.index)
    _compare(ours, _oracle(sdata, "gene", "count", "global"))
