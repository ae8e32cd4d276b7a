"""Interop with spatialdata 0.8, the oracle for its own transform dialect."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd  # the oracle: a test extra, always installed for the tests
from spatialdata import transformations as sdt
from spatialdata.models import Image2DModel, PointsModel, ShapesModel

from spatialflow.transforms import Affine, MapAxis, Scale, Sequence, Translation
from spatialflow.transforms.ngff import from_spatialdata_dict, to_spatialdata_dict

XY = ("x", "y")


def _sd_transforms():
    aff = np.array([[1.1, 0.3, 5.0], [-0.2, 0.9, -7.0], [0, 0, 1]])
    return {
        "global": sdt.Sequence(
            [sdt.Scale([2.0, 0.5], axes=("y", "x")), sdt.Translation([10.0, -3.0], axes=("x", "y"))]
        ),
        "affine": sdt.Affine(aff, input_axes=XY, output_axes=XY),
        "swap": sdt.MapAxis({"x": "y", "y": "x"}),
        "scaled": sdt.Scale([3.0, 4.0], axes=XY),
        "moved": sdt.Translation([1.5, 2.5], axes=XY),
        "same": sdt.Identity(),
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "x": rng.random(30) * 50,
            "y": rng.random(30) * 50,
            "gene": pd.Categorical(rng.choice(["a", "b"], 30)),
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image2DModel.parse(
            np.zeros((1, 8, 8), np.uint8), dims=("c", "y", "x"), transformations=_sd_transforms()
        )
        pts = PointsModel.parse(df, feature_key="gene", transformations=_sd_transforms())
        shp = ShapesModel.parse(
            gpd.GeoDataFrame({"radius": [1.0, 2.0]}, geometry=shapely.points([[0, 0], [3, 4]])),
            transformations=_sd_transforms(),
        )
        sdata = sd.SpatialData(images={"img": img}, points={"pts": pts}, shapes={"shp": shp})
        path = tmp_path_factory.mktemp("sd") / "store.zarr"
        sdata.write(path)
    return path, sdata, df


def _stored(path: Path, group: str) -> list[dict]:
    attrs = json.loads((path / group / "zarr.json").read_text())["attributes"]
    if "ome" in attrs:
        return attrs["ome"]["multiscales"][0]["coordinateTransformations"]
    return attrs["coordinateTransformations"]


@pytest.mark.parametrize("group", ["images/img", "points/pts", "shapes/shp"])
def test_reads_what_spatialdata_writes_with_equal_coordinates(written, group):
    path, sdata, df = written
    el = sdata[group.split("/")[1]]
    entries = _stored(path, group)
    assert len(entries) == 6
    xy = df[["x", "y"]].to_numpy()
    for entry in entries:
        cs, t = from_spatialdata_dict(entry)
        theirs = sdt.get_transformation(el, cs)
        m = theirs.to_affine_matrix(input_axes=XY, output_axes=XY)
        expected = xy @ m[:2, :2].T + m[:2, 2]
        np.testing.assert_allclose(
            t.apply(xy, XY, XY), expected, rtol=1e-12, atol=1e-9, err_msg=f"{group} -> {cs}"
        )


def test_points_match_spatialdata_transform(written):
    _, sdata, df = written
    entries = {
        from_spatialdata_dict(e)[0]: from_spatialdata_dict(e)[1]
        for e in _stored(written[0], "points/pts")
    }
    xy = df[["x", "y"]].to_numpy()
    for cs, t in entries.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            moved = sd.transform(sdata["pts"], to_coordinate_system=cs).compute()
        np.testing.assert_allclose(
            t.apply(xy, XY, XY), moved[["x", "y"]].to_numpy(), rtol=1e-12, atol=1e-9
        )


OURS = {
    "global": (
        Sequence([Scale([2.0, 0.5], ("y", "x")), Translation([10.0, -3.0])]),
        sdt.Sequence(
            [sdt.Scale([2.0, 0.5], axes=("y", "x")), sdt.Translation([10.0, -3.0], axes=XY)]
        ),
    ),
    "affine": (
        Affine([[1.1, 0.3, 5.0], [-0.2, 0.9, -7.0]], XY, XY),
        sdt.Affine(
            np.array([[1.1, 0.3, 5.0], [-0.2, 0.9, -7.0], [0, 0, 1]]), input_axes=XY, output_axes=XY
        ),
    ),
    "swap": (MapAxis.from_names({"x": "y", "y": "x"}), sdt.MapAxis({"x": "y", "y": "x"})),
    "scaled": (Scale([3.0, 4.0]), sdt.Scale([3.0, 4.0], axes=XY)),
    "moved": (Translation([1.5, 2.5]), sdt.Translation([1.5, 2.5], axes=XY)),
}


@pytest.mark.parametrize("group", ["images/img", "points/pts", "shapes/shp"])
def test_spatialdata_reads_what_spatialflow_writes(written, tmp_path, group):
    import shutil

    import zarr

    src, _, _ = written
    path = tmp_path / "ours.zarr"
    shutil.copytree(src, path)
    name = group.split("/")[1]
    element_axes = ("c", "y", "x") if group.startswith("images") else XY
    entries = [to_spatialdata_dict(t, element_axes, cs) for cs, (t, _) in OURS.items()]
    meta_file = path / group / "zarr.json"
    meta = json.loads(meta_file.read_text())
    if "ome" in meta["attributes"]:
        meta["attributes"]["ome"]["multiscales"][0]["coordinateTransformations"] = entries
    else:
        meta["attributes"]["coordinateTransformations"] = entries
    meta_file.write_text(json.dumps(meta))
    root = json.loads((path / "zarr.json").read_text())
    if "consolidated_metadata" in root:
        zarr.consolidate_metadata(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = sd.read_zarr(path)
    got = sdt.get_transformation(back[name], get_all=True)
    assert set(got) == set(OURS)
    for cs, (_, theirs) in OURS.items():
        _assert_same(got[cs], theirs, cs)


def _assert_same(a, b, where):
    """Same type, and the same map on (x, y) step by step (spatialdata itself normalises the
    axis order of what it reads, so == on axis tuples is too strict)."""
    assert type(a) is type(b), where
    if isinstance(a, sdt.Sequence):
        assert len(a.transformations) == len(b.transformations), where
        for x, y in zip(a.transformations, b.transformations, strict=True):
            _assert_same(x, y, where)
    np.testing.assert_allclose(
        a.to_affine_matrix(XY, XY), b.to_affine_matrix(XY, XY), err_msg=where
    )
