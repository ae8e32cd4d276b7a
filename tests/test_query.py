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
