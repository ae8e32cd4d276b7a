"""The coordinate-system graph, landmark alignment and sf.transform on every element kind."""

from __future__ import annotations

import warnings

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import spatialflow as sf
from spatialflow import Affine, Dataset, Image, Labels, Points, Scale, Shapes, Translation

XY = ("x", "y")


def _points(n=200, transforms=None):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "x": rng.random(n) * 100,
            "y": rng.random(n) * 100,
            "z": rng.random(n),
            "gene": pd.Categorical(rng.choice(["a", "b"], n)),
        }
    )
    return df, Points(df, feature_key="gene", transforms=transforms, rows_per_partition=50)


# --- graph -------------------------------------------------------------------------------
def _dataset():
    _, pts = _points(transforms={"global": Scale([2.0, 2.0])})
    img = Image(
        np.zeros((1, 10, 10), np.uint8),
        transforms={"global": Translation([5.0, 5.0]), "microscope": Scale([0.5, 0.5])},
    )
    shp = Shapes(
        gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]),
        transforms={"aligned": Affine([[0, 1, 0], [1, 0, 0]])},
    )
    return Dataset(points={"tx": pts}, images={"img": img}, shapes={"cells": shp})


def test_get_and_set_transformation():
    ds = _dataset()
    assert sf.get_transformation(ds["tx"], "global") == Scale([2.0, 2.0])
    assert set(sf.get_transformation(ds["img"])) == {"global", "microscope"}
    sf.set_transformation(ds["tx"], Translation([1.0, 0.0]), to="other")
    assert "other" in ds.coordinate_systems
    with pytest.raises(sf.TransformError, match=r"'tx'.*no transformation to coordinate system"):
        sf.get_transformation(ds["tx"], "nowhere")
    with pytest.raises(sf.TransformError, match="not a Transform"):
        sf.set_transformation(ds["tx"], "scale", to="x")


def test_path_through_elements_and_coordinate_systems():
    ds = _dataset()
    # points -> global -> (inverse of img's global) img -> microscope: two hops through the graph
    t = sf.get_transformation_between(ds, "tx", "microscope")
    p = np.array([[1.0, 3.0]])
    expected = ((p * 2.0) - 5.0) * 0.5
    np.testing.assert_allclose(t.apply(p, XY), expected)
    # coordinate system to coordinate system
    back = sf.get_transformation_between(ds, "microscope", "global")
    np.testing.assert_allclose(back.apply(expected, XY), p * 2.0)
    # element objects work too
    assert sf.get_transformation_between(ds, ds["img"], "global").apply(p, XY).tolist() == [
        [6.0, 8.0]
    ]


def test_path_errors():
    ds = _dataset()
    with pytest.raises(sf.TransformError, match="no transformation path"):
        sf.get_transformation_between(ds, "tx", "aligned")
    with pytest.raises(sf.TransformError, match="unknown element or coordinate system 'nope'"):
        sf.get_transformation_between(ds, "tx", "nope")
    _, pts = _points(transforms={"global": Affine([[1, 0, 0], [0, 0, 0]])})  # singular
    ds2 = Dataset(
        points={"flat": pts},
        shapes={"cells": Shapes(gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 1, 1)]))},
    )
    with pytest.raises(sf.TransformError, match="non-invertible"):
        sf.get_transformation_between(ds2, "cells", "flat")


# --- landmarks ---------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["affine", "similarity", "rigid"])
def test_align_landmarks_recovers_the_transform(model):
    rng = np.random.default_rng(1)
    moving = rng.random((8, 2)) * 100
    a = 0.3
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = {"affine": np.array([[1.2, 0.3], [-0.1, 0.8]]), "similarity": 1.7 * rot, "rigid": rot}[
        model
    ]
    reference = moving @ lin.T + [12.0, -4.0]
    t = sf.align_landmarks(reference, moving, model=model)
    assert isinstance(t, Affine)
    np.testing.assert_allclose(t.apply(moving, XY), reference, atol=1e-9)
    # a dataset helper: set it on the moving elements
    _, pts = _points()
    ds = Dataset(points={"tx": pts})
    sf.set_transformation(ds["tx"], t, to="reference")
    np.testing.assert_allclose(
        sf.get_transformation_between(ds, "tx", "reference").apply(moving, XY), reference, atol=1e-9
    )


def test_align_landmarks_from_points_elements():
    ref = pd.DataFrame({"x": [0.0, 10, 0, 10], "y": [0.0, 0, 10, 10]})
    mov = pd.DataFrame({"x": [1.0, 6, 1, 6], "y": [1.0, 1, 6, 6]})
    t = sf.align_landmarks(
        Points(ref, spatial_sort=False), Points(mov, spatial_sort=False), model="similarity"
    )
    np.testing.assert_allclose(t.apply(mov.to_numpy(), XY), ref.to_numpy(), atol=1e-9)


def test_align_landmarks_bad_input():
    with pytest.raises(sf.TransformError, match="at least 3"):
        sf.align_landmarks([[0, 0], [1, 1]], [[0, 0], [1, 1]])
    with pytest.raises(sf.TransformError, match="collinear"):
        sf.align_landmarks([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(sf.TransformError, match="unknown model"):
        sf.align_landmarks([[0, 0], [1, 0], [0, 1]], [[0, 0], [1, 0], [0, 1]], model="warp")
    with pytest.raises(sf.TransformError, match=r"\(N, 2\)"):
        sf.align_landmarks([[0, 0], [1, 0], [0, 1]], [[0, 0], [1, 0]])


# --- sf.transform --------------------------------------------------------------------------
def test_transform_points_lazy_and_keeps_z():
    t = Affine([[0.5, 0.2, 3.0], [0.1, 2.0, -1.0]])
    df, pts = _points(transforms={"global": Scale([1.0, 1.0]), "aligned": t})
    with dask.config.set(scheduler="sync"):
        moved = sf.transform(pts, "aligned")
    assert isinstance(moved, Points) and moved.npartitions == pts.npartitions
    assert moved.transforms["aligned"] == sf.Identity()
    got = moved.data.compute().sort_index()
    np.testing.assert_allclose(got[["x", "y"]].to_numpy(), t.apply(df[["x", "y"]].to_numpy(), XY))
    np.testing.assert_array_equal(got["z"].to_numpy(), df["z"].to_numpy())
    # still in place in the other coordinate system
    again = moved.transforms["global"].apply(got[["x", "y"]].to_numpy(), XY)
    np.testing.assert_allclose(again, df[["x", "y"]].to_numpy(), atol=1e-9)
    # partition bounds were carried and still contain the points
    for k, b in enumerate(moved.partition_bounds):
        part = moved.data.get_partition(k).compute()
        assert (part.x >= b[0] - 1e-9).all() and (part.x <= b[3] + 1e-9).all()


def test_transform_shapes_polygons_and_circles():
    polys = gpd.GeoDataFrame(geometry=[shapely.box(0, 0, 2, 1), shapely.box(5, 5, 6, 8)])
    circles = gpd.GeoDataFrame({"radius": [1.0, 2.0]}, geometry=shapely.points([[0, 0], [3, 4]]))
    sim = Affine([[0, -3, 1], [3, 0, 2]])  # rotation by 90 degrees, scale 3
    p = Shapes(polys, transforms={"s": sim}, spatial_sort=False)
    c = Shapes(circles, transforms={"s": sim}, spatial_sort=False)
    moved = sf.transform(p, "s").data.compute()
    np.testing.assert_allclose(shapely.area(moved.geometry.values), [18.0, 27.0])
    assert moved.geometry.values[0].equals(shapely.box(-2, 2, 1, 8))
    moved_c = sf.transform(c, "s").data.compute()
    np.testing.assert_allclose(moved_c["radius"], [3.0, 6.0])  # similarity: radius times scale
    np.testing.assert_allclose(
        shapely.get_coordinates(moved_c.geometry.values), [[1, 2], [-11, 11]]
    )
    shear = Affine([[2, 0, 0], [0, 0.5, 0]])
    c2 = Shapes(circles, transforms={"s": shear}, spatial_sort=False)
    with pytest.warns(UserWarning, match="same area"):
        out = sf.transform(c2, "s")
    np.testing.assert_allclose(out.data.compute()["radius"], [1.0, 2.0])  # sqrt(|det|) = 1


def test_transform_rasters_resample_on_the_target_grid():
    lab = np.zeros((40, 60), np.int32)
    lab[10:20, 30:50] = 7
    labels = Labels(lab, transforms={"rot": Affine([[0, -1, 100], [1, 0, 0]])}, chunks=16)
    out = sf.transform(labels, "rot")
    arr = out.scale(0).values
    # a 90-degree rotation of a pixel-aligned rectangle: same pixel count, same id
    assert set(np.unique(arr)) == {0, 7}
    assert (arr == 7).sum() == (lab == 7).sum()
    assert arr.shape in ((60, 40),)
    # each output pixel centre maps back into a source pixel with the same label
    grid = out.transforms["rot"]
    ii, jj = np.nonzero(arr == 7)
    centres = np.c_[jj + 0.5, ii + 0.5]  # (x, y)
    world = grid.apply(centres, XY)
    src = sf.Affine([[0, -1, 100], [1, 0, 0]]).inverse().apply(world, XY)
    assert (lab[np.floor(src[:, 1]).astype(int), np.floor(src[:, 0]).astype(int)] == 7).all()


def test_transform_image_linear_and_integer_shift_without_resampling():
    img = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    image = Image(
        img,
        channel_names=["a", "b"],
        transforms={"shift": Translation([3.0, 2.0]), "half": Scale([0.5, 0.5])},
    )
    shifted = sf.transform(image, "shift")
    np.testing.assert_array_equal(shifted.scale(0).values, img)  # no resampling
    np.testing.assert_allclose(
        shifted.transforms["shift"].apply(np.array([[0.0, 0.0]]), XY), [[3.0, 2.0]]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = sf.transform(image, "half")
    # the target grid keeps the pixel count (pixel size |det|^(1/2) = 0.5): pixel centres map
    # onto source pixel centres, so linear interpolation returns the source values
    assert half.scale(0).shape == (2, 8, 8)
    np.testing.assert_allclose(half.scale(0).values, img)
    assert list(half.channel_names) == ["a", "b"]
    np.testing.assert_allclose(
        half.transforms["half"].apply(np.array([[8.0, 8.0]]), XY), [[4.0, 4.0]]
    )
    # between pixel centres, linear interpolation of a ramp
    rot = Image(
        img,
        transforms={"r": Affine([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0]])},
    )
    vals = sf.transform(rot, "r").scale(0).values[0]
    inner = vals[vals > 0]
    assert inner.min() >= 0 and inner.max() <= img[0].max() + 1e-3


def test_transform_errors():
    _, pts = _points()
    with pytest.raises(sf.TransformError, match="no transformation to coordinate system 'x'"):
        sf.transform(pts, "x")
