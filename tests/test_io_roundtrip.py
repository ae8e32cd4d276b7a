"""Round trips with spatialdata 0.8 as the oracle, on a dataset holding every kind and feature.

The source is built with spatialdata's own models and written by spatialdata itself
(``sd_store`` in conftest.py); every comparison is ``oracle.assert_equal``: values, dtypes,
index, categories (and their order), channel names, coordinates, transforms (type and matrix
via to_affine_matrix), feature/instance keys and table links.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
import shapely
import zarr

import spatialflow as sf
from spatialflow.transforms import MapAxis


def test_the_source_holds_every_feature(oracle, sd_store, sd_expected):
    """Guard against a weaker fixture: the round trips below rely on all of these."""
    src = sd_expected
    img = src.images["morphology"]
    assert len(img.children) == 3 and list(img["scale0"]["image"].coords["c"].values) == [
        "DAPI",
        "PolyT",
        "CD45",
    ]
    assert len(src.labels["lab"].children) == 2
    pts = src.points["transcripts"]
    assert "z" in pts.columns and pts.attrs["spatialdata_attrs"]["instance_key"] == "cell_id"
    assert len(pts["gene"].compute().cat.categories) > 127
    kinds = set(shapely.get_type_id(src.shapes["cells"].geometry.values).tolist())
    assert kinds == {shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON}
    assert "radius" in src.shapes["spots"].columns
    from spatialdata.transformations import get_transformation

    types = {type(t).__name__ for t in get_transformation(pts, get_all=True).values()}
    assert {"Scale", "Translation", "Affine", "Sequence", "MapAxis", "Identity"} <= types
    assert src.tables["table"].uns["spatialdata_attrs"]["region"] == ["cells", "lab"]


@pytest.fixture(scope="module")
def sf_written(sd_store, tmp_path_factory) -> Path:
    """The oracle store read by spatialflow and written back in the SpatialData layout."""
    out = tmp_path_factory.mktemp("sf") / "out.zarr"
    sf.read(sd_store).write(out, format="spatialdata")
    return out


def test_spatialdata_store_to_spatialflow_to_spatialdata_layout(
    oracle, sd_store, sf_written, sd_expected
):
    oracle.assert_equal(sd_expected, oracle.read(sf_written))


def test_spatialdata_store_to_icechunk_to_spatialdata(oracle, sd_store, tmp_path, sd_expected):
    ds = sf.read(sd_store)
    repo = tmp_path / "repo"
    snapshot = ds.write(repo, format="icechunk", message="import")
    back = sf.read(repo)
    assert isinstance(snapshot, str) and len(snapshot) == 20
    oracle.assert_equal(sd_expected, back.to_spatialdata())
    # partitioning and partition bounds survive the native layout
    pts = back.points["transcripts"]
    assert pts.npartitions == 3
    computed = pts.data.compute()
    starts = np.cumsum([0, *[len(p) for p in pts.data.partitions]])[:-1]
    assert pts.partition_bounds[0, 0] == pytest.approx(
        computed["x"].iloc[starts[0] : starts[1]].min()
    )


def test_from_spatialdata_to_spatialdata(oracle):
    src = oracle.full()
    oracle.assert_equal(src, sf.from_spatialdata(src).to_spatialdata())
    # the conversion does not touch the source object
    assert "transform" in src.points["transcripts"].attrs
    oracle.assert_equal(src, oracle.full())


def test_from_a_spatialdata_read_keeps_the_written_category_order(oracle, sd_store, sd_expected):
    """spatialdata reads the feature as unknown categories; the union over partitions keeps
    the written (unsorted) order, which is what computing the spatialdata frame gives."""
    src = sd_expected
    ds = sf.from_spatialdata(src)
    cats = ds.points["transcripts"].feature_categories
    assert cats == list(src.points["transcripts"]["gene"].compute().cat.categories)
    assert cats != sorted(cats)
    oracle.assert_equal(src, ds.to_spatialdata())


def test_written_store_keeps_consolidated_metadata_true(sf_written):
    out = sf_written
    meta = json.loads((out / "zarr.json").read_text())
    listed = set(meta["consolidated_metadata"]["metadata"])
    on_disk = {
        str(p.parent.relative_to(out))
        for p in out.rglob("zarr.json")
        if p.parent != out and "parquet" not in str(p)
    }
    assert listed == on_disk
    assert not any("__spatialflow_tmp" in k for k in listed)
    attrs = meta["attributes"]["spatialdata_attrs"]
    assert attrs["version"] == "0.2"
    labels = json.loads((out / "labels" / "zarr.json").read_text())["attributes"]
    assert labels["ome"]["labels"] == ["lab"]


def test_points_columns_are_encoded_for_reading(sd_store, sf_written):
    """Coordinates plain (their dictionary would be as large as the values), categorical and
    integer columns dictionary-encoded, an integer index delta-encoded."""
    import pyarrow.parquet as pq

    part = next((sf_written / "points" / "transcripts" / "points.parquet").glob("*.parquet"))
    meta = pq.ParquetFile(part).metadata
    group = meta.row_group(0)
    encodings = {
        group.column(i).path_in_schema: set(group.column(i).encodings)
        for i in range(group.num_columns)
    }
    for axis in ("x", "y", "z"):
        assert "RLE_DICTIONARY" not in encodings[axis]
    assert "RLE_DICTIONARY" in encodings["gene"]
    index = next(c for c in encodings if c not in sf.read(sd_store).points["transcripts"].data)
    assert "DELTA_BINARY_PACKED" in encodings[index]


def test_mapaxis_on_3d_points_keeps_z(sd_store, sf_written):
    """spatialdata's mapAxis lists only the axes it moves; z passes through."""
    t = sf.read(sd_store).points["transcripts"].transforms["swapped"]
    assert isinstance(t, MapAxis)
    np.testing.assert_array_equal(
        t.apply(np.array([[1.0, 2.0, 3.0]]), ("x", "y", "z")), [[2.0, 1.0, 3.0]]
    )
    attrs = json.loads((sf_written / "points" / "transcripts" / "zarr.json").read_text())
    entry = next(
        e
        for e in attrs["attributes"]["coordinateTransformations"]
        if e["output"]["name"] == "swapped"
    )
    assert entry["type"] == "mapAxis"
    assert [a["name"] for a in entry["output"]["axes"]] == ["y", "x", "z"]


def test_legacy_v01_container(oracle, tmp_path):
    """A zarr v2 store in spatialdata's legacy formats (container 0.1, raster 0.2 with
    "0.4-dev-spatialdata", points 0.1, shapes 0.2, tables 0.1)."""
    from spatialdata._io.format import (
        PointsFormatV01,
        RasterFormatV02,
        ShapesFormatV02,
        SpatialDataContainerFormatV01,
        TablesFormatV01,
    )

    path = tmp_path / "legacy.zarr"
    formats = [
        SpatialDataContainerFormatV01(),
        RasterFormatV02(),
        ShapesFormatV02(),
        PointsFormatV01(),
        TablesFormatV01(),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle.full().write(path, sdata_formats=formats)
    assert (path / ".zgroup").exists() and not (path / "zarr.json").exists()
    ds = sf.read(path)
    theirs = oracle.read(path)
    oracle.assert_equal(theirs, ds.to_spatialdata())
    out = tmp_path / "upgraded.zarr"
    ds.write(out)
    assert (
        json.loads((out / "zarr.json").read_text())["attributes"]["spatialdata_attrs"]["version"]
        == "0.2"
    )
    oracle.assert_equal(theirs, oracle.read(out))


def test_legacy_shapes_v01_ragged_arrays(oracle, tmp_path):
    import geopandas as gpd
    import spatialdata as sd
    from spatialdata._io.format import ShapesFormatV01, SpatialDataContainerFormatV01
    from spatialdata.models import ShapesModel

    polys = gpd.GeoDataFrame(
        geometry=[shapely.box(0, 0, 1, 1), shapely.box(2, 2, 4, 5)], index=pd.Index([4, 8])
    )
    circles = gpd.GeoDataFrame({"radius": [1.0, 2.0]}, geometry=shapely.points([[0, 0], [3, 3]]))
    sdata = sd.SpatialData(
        shapes={"polys": ShapesModel.parse(polys), "circles": ShapesModel.parse(circles)}
    )
    path = tmp_path / "shapes01.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(path, sdata_formats=[SpatialDataContainerFormatV01(), ShapesFormatV01()])
    oracle.assert_equal(oracle.read(path), sf.read(path).to_spatialdata())


def test_geoarrow_encoded_shapes(oracle, tmp_path):
    import spatialdata as sd

    path = tmp_path / "geoarrow.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = sd.SpatialData(shapes=dict(oracle.full().shapes))
        shapes.write(path, shapes_geometry_encoding="geoarrow")
    oracle.assert_equal(oracle.read(path), sf.read(path).to_spatialdata())


def test_overwrite_replaces_a_spatialdata_store(oracle, sd_store, tmp_path):
    out = tmp_path / "out.zarr"
    shutil.copytree(sd_store, out)
    ds = sf.read(sd_store)
    with pytest.raises(sf.FormatError, match="already exists"):
        ds.write(out)
    small = sf.Dataset(images={"morphology": ds.images["morphology"]})
    small.write(out, overwrite=True)
    back = oracle.read(out)
    assert list(back.images) == ["morphology"] and not back.points and not back.tables
    assert not (out / "points" / "transcripts").exists()
    assert json.loads((out / "labels" / "zarr.json").read_text())["attributes"]["ome"] == {
        "labels": []
    }
    other = tmp_path / "not_a_store"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(sf.FormatError, match="not a SpatialData"):
        small.write(other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def _tricky_points() -> sf.Points:
    """Points whose columns cover every dtype the native layout keeps, with missing values,
    a named string index and an empty partition."""
    frame = pd.DataFrame(
        {
            "x": [1.0, 2.0, 3.0, 4.0, 5.0],
            "y": np.array([1, 2, 3, 4, 5], dtype=np.float32),
            "gene": pd.Categorical(["b", None, "a", "b", "c"], categories=["c", "b", "a"]),
            "n": pd.array([1, None, 3, 4, 5], dtype="Int64"),
            "flag": pd.array([True, False, None, True, True], dtype="boolean"),
            "ok": np.array([True, False, True, True, False]),
            "label": pd.array(["p", None, "r", "s", "t"], dtype="string"),
            "name": pd.array(["p", "q", None, "s", "t"], dtype="str"),
            "obj": pd.Series(["u", None, "w", "x", "y"], dtype=object),
            "tiny": np.array([1, 2, 3, 4, 5], dtype=np.uint8),
        },
        index=pd.Index(["i0", "i1", "i2", "i3", "i4"], dtype="string", name="point_id"),
    )
    parts = [frame.iloc[:2], frame.iloc[2:2], frame.iloc[2:]]
    import dask

    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_map(lambda p: p, parts, meta=frame.iloc[:0], enforce_metadata=False)
    return sf.Points(ddf, feature_key="gene", transforms={"global": sf.Scale([2.0, 2.0])})


def test_native_layout_keeps_every_dtype(tmp_path):
    pts = _tricky_points()
    expected = pts.data.compute()
    sf.Dataset(points={"tricky": pts}).write(tmp_path / "repo", format="icechunk")
    back = sf.read(tmp_path / "repo").points["tricky"]
    got = back.data.compute()
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    pd.testing.assert_frame_equal(back.data._meta, expected.iloc[:0])
    assert back.npartitions == 3
    assert np.isnan(back.partition_bounds[1]).all()
    assert back.transforms == pts.transforms


def test_native_layout_refuses_dtypes_it_cannot_keep(tmp_path):
    frame = pd.DataFrame({"x": [1.0], "y": [2.0], "when": pd.to_datetime(["2024-01-01"])})
    ds = sf.Dataset(points={"p": sf.Points(frame)})
    with pytest.raises(sf.FormatError, match=r"points/p: column 'when'.*datetime"):
        ds.write(tmp_path / "repo", format="icechunk")
    with pytest.raises(sf.FormatError, match="holds no dataset yet"):
        sf.read(tmp_path / "repo")  # nothing was committed


def test_icechunk_commits_replace_elements_and_keep_history(sd_store, tmp_path):
    ds = sf.read(sd_store)
    repo = tmp_path / "repo"
    first = ds.write(repo, format="icechunk", message="first")
    img = ds.images["morphology"]
    changed = sf.Image(
        img.scale(0).data + 1,
        dims=img.dims,
        channel_names=img.channel_names,
        transforms=img.transforms,
    )
    second = sf.Dataset(images={"morphology": changed}).write(
        repo, format="icechunk", message="second"
    )
    now = sf.read(repo)
    assert sorted(n for n, _ in now.items()) == sorted(n for n, _ in ds.items())
    assert now.images["morphology"].n_scales == 1
    assert int(now.images["morphology"].scale(0)[0, 0, 0]) == int(img.scale(0)[0, 0, 0]) + 1
    before = sf.read(repo, snapshot=first)
    assert before.images["morphology"].n_scales == 3
    from spatialflow.io.location import location
    from spatialflow.io.repository import history

    log = history(location(repo))
    assert [c.id for c in log[:2]] == [second, first]
    assert [c.message for c in log[:2]] == ["second", "first"]


def _zarr_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_raster_attrs_match_what_spatialdata_writes(sd_store, sf_written):
    out = sf_written
    for kind, name in (("images", "morphology"), ("labels", "lab")):
        ours = _zarr_json(out / kind / name / "zarr.json")["attributes"]
        theirs = _zarr_json(sd_store / kind / name / "zarr.json")["attributes"]
        assert ours["ome"]["version"] == theirs["ome"]["version"] == "0.5-dev-spatialdata"
        assert ours["spatialdata_attrs"] == theirs["spatialdata_attrs"]
        ms_o, ms_t = ours["ome"]["multiscales"][0], theirs["ome"]["multiscales"][0]
        assert ms_o["datasets"] == ms_t["datasets"]
        assert ms_o["axes"] == ms_t["axes"]
        for k in range(len(ms_o["datasets"])):
            arr_o = zarr.open_array(out / kind / name / f"s{k}")
            arr_t = zarr.open_array(sd_store / kind / name / f"s{k}")
            assert arr_o.metadata.dimension_names == arr_t.metadata.dimension_names
