"""Spatial queries against spatialdata 0.8, pruning, and bad input."""

from __future__ import annotations

import warnings
from unittest import mock

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd
from spatialdata import transformations as sdt
from spatialdata.models import Image2DModel, PointsModel, ShapesModel

import spatialflow as sf
from spatialflow.datasets import XeniumLike

XY = ("x", "y")


def _sdata(seed):
    rng = np.random.default_rng(seed)
    pts = pd.DataFrame(
        {
            "x": rng.uniform(0, 100, 3000),
            "y": rng.uniform(0, 100, 3000),
            "gene": pd.Categorical(rng.choice(list("abcd"), 3000)),
        }
    )
    polys = gpd.GeoDataFrame(
        geometry=[
            shapely.box(*(c := rng.uniform(0, 95, 2)), *(c + rng.uniform(1, 8, 2)))
            for _ in range(80)
        ],
        index=pd.Index([f"p{i}" for i in range(80)]),
    )
    img = rng.integers(0, 1000, (2, 64, 80)).astype(np.uint16)
    aff = sdt.Affine(
        np.array([[0.9, -0.2, 4.0], [0.3, 1.1, -2.0], [0, 0, 1]]), input_axes=XY, output_axes=XY
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sd.SpatialData(
            points={
                "pts": PointsModel.parse(
                    pts,
                    feature_key="gene",
                    transformations={"global": sdt.Scale([1.5, 1.5], axes=XY), "other": aff},
                )
            },
            shapes={
                "polys": ShapesModel.parse(
                    polys,
                    transformations={"global": sdt.Translation([3.0, -2.0], axes=XY), "other": aff},
                )
            },
            images={
                "img": Image2DModel.parse(
                    img,
                    dims=("c", "y", "x"),
                    c_coords=["a", "b"],
                    transformations={"global": sdt.Scale([2.0, 2.0], axes=XY)},
                )
            },
        )


@pytest.mark.parametrize("cs", ["global", "other"])
def test_bounding_box_matches_spatialdata_for_points_and_polygons(cs):
    sdata = _sdata(0)
    ds = sf.from_spatialdata(sdata)
    box = dict(
        axes=("x", "y"),
        min_coordinate=[20.0, 15.0],
        max_coordinate=[70.0, 60.0],
        target_coordinate_system=cs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sd.bounding_box_query(sdata, **box)
    ours = sf.bounding_box_query(ds, **box)
    got = ours.points["pts"].data.compute()
    exp = theirs["pts"].compute()
    assert len(got) > 100
    assert set(got.index) == set(exp.index)
    assert set(ours.shapes["polys"].data.compute().index) == set(theirs["polys"].index)
    # transforms are carried unchanged for points and shapes
    assert ours.points["pts"].transforms == ds.points["pts"].transforms


def test_raster_crop_matches_spatialdata_for_pixel_aligned_boxes():
    sdata = _sdata(1)
    ds = sf.from_spatialdata(sdata)
    box = dict(
        axes=("x", "y"),
        min_coordinate=[20.0, 10.0],
        max_coordinate=[60.0, 50.0],
        target_coordinate_system="global",
    )  # pixel size 2: aligned to pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sd.bounding_box_query(sdata, **box)["img"]
    ours = sf.bounding_box_query(ds, **box).images["img"]
    np.testing.assert_array_equal(ours.scale(0).values, theirs.values)
    # the crop keeps its position: its pixel (0, 0) corner sits at the box corner
    t = ours.transforms["global"]
    np.testing.assert_allclose(t.apply(np.array([[0.0, 0.0]]), XY), [[20.0, 10.0]])
    m = sdt.get_transformation(theirs, "global").to_affine_matrix(XY, XY)
    np.testing.assert_allclose(t.to_affine_matrix(XY, XY), m)


def test_raster_crop_is_exact_to_the_pixel():
    img = sf.Image(np.arange(100, dtype=np.uint8).reshape(1, 10, 10))
    out = sf.bounding_box_query(
        img,
        axes=("x", "y"),
        min_coordinate=[2.5, 3.0],
        max_coordinate=[5.0, 4.2],
        target_coordinate_system="global",
    )
    # pixels whose extent meets x in (2.5, 5) and y in (3, 4.2): columns 2..4, rows 3..4
    np.testing.assert_array_equal(out.scale(0).values[0], np.arange(100).reshape(10, 10)[3:5, 2:5])


def test_polygon_query_points_keep_partitioning_and_match_spatialdata():
    sdata = _sdata(2)
    ds = sf.from_spatialdata(sdata)
    poly = shapely.Polygon([(10, 10), (80, 20), (60, 90), (15, 70)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sd.polygon_query(sdata, poly, target_coordinate_system="global")
    ours = sf.polygon_query(ds, poly, target_coordinate_system="global")
    assert set(ours.points["pts"].data.compute().index) == set(theirs["pts"].compute().index)
    assert ours.points["pts"].npartitions == ds.points["pts"].npartitions


def test_circles_are_tested_as_disks():
    circles = gpd.GeoDataFrame(
        {"radius": [3.0, 3.0, 1.0]}, geometry=shapely.points([[10, 10], [-2, 5], [-2, 5]])
    )
    shapes = sf.Shapes(circles, spatial_sort=False)
    out = sf.bounding_box_query(
        shapes,
        axes=("x", "y"),
        min_coordinate=[0, 0],
        max_coordinate=[20, 20],
        target_coordinate_system="global",
    )
    # the second circle's centre is outside the box but its disk reaches into it
    assert list(out.data.compute().index) == [0, 1]


def test_feature_filter_and_table_filtering():
    ds = sf.datasets.xenium_like(50_000, 900, n_genes=20, transcripts_per_partition=5_000)
    q = sf.bounding_box_query(
        ds,
        axes=("x", "y"),
        min_coordinate=[0, 0],
        max_coordinate=[150, 150],
        target_coordinate_system="global",
        features=["GENE0001", "GENE0002"],
    )
    pts = q.points["transcripts"].data.compute()
    assert set(pts.gene.unique()) <= {"GENE0001", "GENE0002"} and len(pts) > 0
    cells = q.shapes["cells"].data.compute()
    table = q.tables["table"].data
    assert set(table.obs["cell_id"]) == set(cells.index)
    assert 0 < len(cells) < 900


def test_query_reads_only_the_touched_tile():
    layout = XeniumLike(
        400_000, 10_000, n_genes=10, transcripts_per_partition=25_000, raster_chunk=256
    )
    ds = layout.dataset()
    n = ds.points["transcripts"].npartitions
    assert n >= 16
    x0, x1, y0, y1 = layout.tile_extent(5)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    box = dict(
        axes=("x", "y"),
        min_coordinate=[cx - 5, cy - 5],
        max_coordinate=[cx + 5, cy + 5],
        target_coordinate_system="global",
    )
    calls: list[int] = []
    chunks: list[tuple] = []
    real_t, real_l = XeniumLike.transcripts, XeniumLike.labels_chunk

    def count_t(self, t):
        calls.append(t)
        return real_t(self, t)

    def count_l(self, block_info=None):
        chunks.append(block_info[None]["chunk-location"])
        return real_l(self, block_info)

    with (
        mock.patch.object(XeniumLike, "transcripts", count_t),
        mock.patch.object(XeniumLike, "labels_chunk", count_l),
    ):
        ds = layout.dataset()
        q = sf.bounding_box_query(ds, **box)
        assert q.points["transcripts"].plan.partitions() == [5]
        pts = q.points["transcripts"].data.compute()
        lab = q.labels["nuclei"].scale(0).compute()
    assert calls == [5]  # only that tile's partition was generated (read)
    assert len(set(chunks)) == 1  # one raster chunk under a 10 um box
    assert len(pts) > 0 and lab.shape == (20, 20)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            dict(
                axes=("x", "y"),
                min_coordinate=[5, 0],
                max_coordinate=[1, 1],
                target_coordinate_system="global",
            ),
            "below max_coordinate",
        ),
        (
            dict(
                axes=("x", "y"),
                min_coordinate=[0, 0, 0],
                max_coordinate=[1, 1],
                target_coordinate_system="global",
            ),
            "3 values",
        ),
        (
            dict(
                axes=("x", "c"),
                min_coordinate=[0, 0],
                max_coordinate=[1, 1],
                target_coordinate_system="global",
            ),
            "axes",
        ),
        (
            dict(
                axes=("x", "y"),
                min_coordinate=[0, 0],
                max_coordinate=[1, 1],
                target_coordinate_system="nowhere",
            ),
            "unknown coordinate system",
        ),
    ],
)
def test_bad_bounding_boxes(kwargs, words):
    ds = sf.datasets.xenium_like(1_000, 20, n_genes=5)
    with pytest.raises(sf.SpatialFlowError, match=words):
        sf.bounding_box_query(ds, **kwargs)


def test_bad_polygons():
    ds = sf.datasets.xenium_like(1_000, 20, n_genes=5)
    with pytest.raises(sf.SpatialFlowError, match="empty"):
        sf.polygon_query(ds, shapely.Polygon(), target_coordinate_system="global")
    bowtie = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    with pytest.raises(sf.SpatialFlowError, match="invalid"):
        sf.polygon_query(ds, bowtie, target_coordinate_system="global")
    with pytest.raises(sf.SpatialFlowError, match="Polygon"):
        sf.polygon_query(ds, shapely.Point(0, 0), target_coordinate_system="global")


@pytest.fixture(scope="module")
def stored_shapes(tmp_path_factory):
    """Polygons (some multi, with a categorical column) and circles in many row groups,
    written in the SpatialData layout."""
    rng = np.random.default_rng(11)
    n = 3_000
    c = rng.uniform(0, 1_000, (n, 2))
    geoms = list(shapely.buffer(shapely.points(c), rng.uniform(1, 6, n), quad_segs=4))
    for i in range(0, n, 10):  # every tenth is a two-part multipolygon
        geoms[i] = shapely.MultiPolygon([geoms[i], shapely.box(*(c[i] + 8), *(c[i] + 11))])
    polys = gpd.GeoDataFrame(
        {"kind": pd.Categorical(rng.choice(["a", "b", "c"], n))},
        geometry=geoms,
        index=pd.Index([f"cell{i}" for i in range(n)]),
    )
    circles = gpd.GeoDataFrame({"radius": rng.uniform(1, 20, n)}, geometry=shapely.points(c))
    pts = pd.DataFrame(
        {
            "x": rng.uniform(0, 1_000, 30_000),
            "y": rng.uniform(0, 1_000, 30_000),
            "gene": pd.Categorical(rng.choice(["g1", "g2", "g3"], 30_000)),
            "note": rng.choice(["u", "v"], 30_000),  # a plain text column
        }
    )
    path = tmp_path_factory.mktemp("shapes") / "s.zarr"
    with (
        mock.patch("spatialflow.io.sdwriter.SHAPES_ROW_GROUP", 150),
        mock.patch("spatialflow.io.sdwriter.POINTS_ROW_GROUP", 500),
    ):
        sf.Dataset(
            points={"pts": sf.Points(pts, feature_key="gene", rows_per_partition=1_000)},
            shapes={"polys": sf.Shapes(polys), "circles": sf.Shapes(circles)},
        ).write(path)
    return path


# a box over part of the `stored_shapes` store, as the small-query tests use it
STORED_BOX = dict(
    axes=XY, min_coordinate=[300, 420], max_coordinate=[480, 610], target_coordinate_system="global"
)


@pytest.mark.parametrize(
    "path", ["kernel", "decode-all", "jit-paid-off", "batches", "per-partition"]
)
def test_shape_queries_read_batches_of_row_groups_and_match_spatialdata(
    stored_shapes, path, monkeypatch
):
    from spatialflow.io import geoparquet
    from spatialflow.ops import query

    if path == "kernel":  # WKB bounds pick the rows to decode
        monkeypatch.setattr(geoparquet, "KERNEL_MIN_ROWS", 0)
    elif path == "decode-all":  # a fresh process with a small selection: decode every row
        monkeypatch.setattr(geoparquet, "wkb_bounds_loaded", lambda: False)
        monkeypatch.setattr(geoparquet, "_decoded_whole", 0)
    elif path == "jit-paid-off":  # rows decoded whole so far reach the JIT's cost: use it
        monkeypatch.setattr(geoparquet, "wkb_bounds_loaded", lambda: False)
        monkeypatch.setattr(geoparquet, "_decoded_whole", geoparquet.KERNEL_MIN_ROWS - 10)
    decoded: list[int] = []
    real = geoparquet.geopandas_frame

    def count(table, geo, rows):
        decoded.append(table.num_rows)
        return real(table, geo, rows)

    monkeypatch.setattr(geoparquet, "geopandas_frame", count)
    ds = sf.read(stored_shapes)
    assert ds.shapes["polys"].npartitions >= 20
    if path == "batches":  # tasks of at most 2 row groups
        monkeypatch.setattr(query, "BATCH_ROWS", {"points": 300, "shapes": 300})
    if path == "per-partition":  # elements without a source: one task per partition
        for el in ds.shapes.values():
            el.frame_source = None
        ds.points["pts"].column_source = None
    box = STORED_BOX
    q = sf.bounding_box_query(ds, **box)
    touched = len(q.shapes["polys"].plan.partitions())
    tasks = {"per-partition": touched, "batches": (touched + 1) // 2}.get(path, 1)
    assert all(q.shapes[name].data.npartitions == tasks for name in ("polys", "circles"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sd.bounding_box_query(sd.read_zarr(stored_shapes), **box)
    for name in ("polys", "circles"):
        got = q.shapes[name].data.compute()
        assert 50 < len(got) < 600
        assert got.dtypes.to_dict() == ds.shapes[name].data._meta.dtypes.to_dict()
        stored = gpd.read_parquet(f"{stored_shapes}/shapes/{name}/shapes.parquet")
        assert got.geometry.geom_equals_exact(stored.geometry.loc[got.index], 0).all()
        if name == "polys":
            assert sorted(got.index) == sorted(theirs[name].index)
        else:  # disks meeting the box (spatialdata tests the centres only: a subset)
            box_geom = shapely.box(300, 420, 480, 610)
            disks = shapely.distance(stored.geometry.values, box_geom) <= stored["radius"]
            assert sorted(got.index) == sorted(stored.index[disks])
            assert set(theirs[name].index) < set(got.index)
    points = q.points["pts"].data.compute()
    their_points = theirs["pts"].compute()
    assert 500 < len(points) == len(their_points)
    pd.testing.assert_frame_equal(
        points.sort_values(["x", "y"]).reset_index(drop=True),
        their_points.sort_values(["x", "y"]).reset_index(drop=True),
        check_dtype=False,
        check_categorical=False,
    )
    assert points.dtypes.to_dict() == ds.points["pts"].data._meta.dtypes.to_dict()
    if path == "batches":
        assert q.points["pts"].data.npartitions > 1
    polys = q.shapes["polys"].data.compute()
    assert list(polys["kind"].cat.categories) == ["a", "b", "c"]
    stored = gpd.read_parquet(f"{stored_shapes}/shapes/polys/shapes.parquet")
    assert (polys["kind"] == stored["kind"].loc[polys.index]).all()
    if path in ("kernel", "jit-paid-off"):  # only rows whose bounds meet the box were decoded
        assert 0 < sum(decoded) < touched * 150 / 2
    elif path == "decode-all":
        assert sum(decoded) >= touched * 150


def test_small_queries_of_a_native_store_equal_the_per_partition_path(stored_shapes, tmp_path):
    repo = tmp_path / "r.icechunk"
    sf.read(stored_shapes).write(repo, format="icechunk", message="shapes")
    ds = sf.read(repo)
    assert ds.shapes["polys"].frame_source is not None
    box = STORED_BOX
    one_task = sf.bounding_box_query(ds, **box)
    for el in ds.shapes.values():
        el.frame_source = None
    per_partition = sf.bounding_box_query(ds, **box)
    for name in ("polys", "circles"):
        a = one_task.shapes[name].data
        b = per_partition.shapes[name].data
        assert a.npartitions == 1 < b.npartitions
        a, b = a.compute(), b.compute()
        assert len(a) > 50
        pd.testing.assert_frame_equal(
            pd.DataFrame(a.drop(columns="geometry")), pd.DataFrame(b.drop(columns="geometry"))
        )
        assert a.geometry.geom_equals_exact(b.geometry, 0).all()
