"""Bad stores give a FormatError naming the path and what is wrong; failed writes leave no
half-written element under its final name."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import spatialflow as sf


@pytest.fixture
def store(sd_store, tmp_path) -> Path:
    """A private copy of the oracle store, to damage."""
    path = tmp_path / "store.zarr"
    shutil.copytree(sd_store, path)
    return path


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _drop_consolidated(store: Path) -> None:
    _edit_json(store / "zarr.json", lambda m: m.pop("consolidated_metadata", None))


def _raises(url, *patterns: str, **kwargs) -> sf.FormatError:
    with pytest.raises(sf.FormatError) as info:
        ds = sf.read(url, **kwargs)
        for _, el in ds.items():  # errors found only when data is read count too
            if isinstance(el, sf.Points | sf.Shapes):
                el.data.compute()
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return info.value


# --- the container ---------------------------------------------------------------------------
def test_missing_root_attrs(store):
    _edit_json(store / "zarr.json", lambda m: m["attributes"].pop("spatialdata_attrs"))
    _raises(store, re.escape(str(store)), "no 'spatialdata_attrs'")


def test_unknown_container_version(store):
    _edit_json(
        store / "zarr.json", lambda m: m["attributes"]["spatialdata_attrs"].update(version="0.9")
    )
    _raises(store, re.escape(str(store)), "unknown SpatialData container version '0.9'")


def test_legacy_container_with_a_v3_version_string(tmp_path):
    path = tmp_path / "v2.zarr"
    path.mkdir()
    (path / ".zgroup").write_text('{"zarr_format": 2}')
    (path / ".zattrs").write_text('{"spatialdata_attrs": {"version": "0.2"}}')
    _raises(path, "unknown SpatialData container version '0.2'", "zarr v2")


def test_not_a_store_at_all(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    _raises(tmp_path, re.escape(str(tmp_path)), "neither a SpatialData zarr store")
    _raises(tmp_path / "missing", "no such directory")


# --- rasters -------------------------------------------------------------------------------
def test_unknown_raster_version(store):
    _drop_consolidated(store)
    _edit_json(
        store / "images" / "morphology" / "zarr.json",
        lambda m: m["attributes"]["ome"].update(version="0.5"),
    )
    _raises(store, r"images/morphology", "unknown OME-Zarr version '0.5'")


def test_unknown_raster_version_is_found_through_consolidated_metadata(store):
    """Consolidated metadata is what zarr reads: a bad version there is reported too."""
    _edit_json(
        store / "zarr.json",
        lambda m: m["consolidated_metadata"]["metadata"]["labels/lab"]["attributes"]["ome"].update(
            version="0.7-dev"
        ),
    )
    _raises(store, r"labels/lab", "unknown OME-Zarr version '0.7-dev'")


def test_a_group_that_is_not_an_element(store):
    _drop_consolidated(store)
    (store / "images" / "stray").mkdir()
    (store / "images" / "stray" / "zarr.json").write_text(
        '{"zarr_format": 3, "node_type": "group", "attributes": {}}'
    )
    _raises(store, r"images/stray", "not a raster element")


def test_a_points_group_without_encoding(store):
    _drop_consolidated(store)
    _edit_json(
        store / "points" / "transcripts" / "zarr.json",
        lambda m: m["attributes"].pop("encoding-type"),
    )
    _raises(store, r"points/transcripts", "not a points element", "encoding-type None")


def test_an_array_where_an_element_must_be(store):
    import zarr

    _drop_consolidated(store)
    zarr.create_array(store / "shapes" / "oops", shape=(2,), dtype="i4")
    _raises(store, r"shapes/oops", "an array where a shape element")


@pytest.mark.parametrize(
    ("kind", "name", "version"),
    [("points", "transcripts", "0.9"), ("shapes", "cells", "0.7"), ("tables", "table", "1.0")],
)
def test_unknown_element_versions(store, kind, name, version):
    _drop_consolidated(store)

    def edit(m):
        attrs = m["attributes"]
        if kind == "tables":
            attrs["version"] = version
        else:
            attrs["spatialdata_attrs"]["version"] = version

    _edit_json(store / kind / name / "zarr.json", edit)
    _raises(store, rf"{kind}/{name}", rf"unknown \w+ format version '{re.escape(version)}'")


# --- names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["has space", "__private", "é-accent"])
def test_names_breaking_the_rules(store, bad):
    _drop_consolidated(store)
    (store / "shapes" / "spots").rename(store / "shapes" / bad)
    _raises(store, re.escape(f"shapes/{bad}"), "name")


def test_names_clashing_case_insensitively(store):
    _drop_consolidated(store)
    (store / "shapes" / "spots").rename(store / "shapes" / "Lab")
    _raises(store, r"shapes/Lab", "clashes with labels\\['lab'\\]")


# --- parquet ---------------------------------------------------------------------------------
def test_unreadable_parquet_part(store):
    part = store / "points" / "transcripts" / "points.parquet" / "part.1.parquet"
    part.write_bytes(b"PAR1 this is not parquet at all" * 10)
    _raises(store, re.escape(str(part)), "unreadable parquet file")


def test_parquet_part_with_a_valid_footer_but_corrupt_pages(store):
    """Damage found only when the data is read (not at open) is a FormatError too."""
    part = store / "points" / "transcripts" / "points.parquet" / "part.2.parquet"
    raw = bytearray(part.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little") + 8
    for i in range(4, len(raw) - footer - 4, 7):
        raw[i] ^= 0xFF
    part.write_bytes(bytes(raw))
    _raises(store, re.escape(str(part)), "unreadable parquet file")


def test_unreadable_shapes_parquet(store):
    file = store / "shapes" / "cells" / "shapes.parquet"
    file.write_bytes(b"garbage")
    _raises(store, re.escape(str(file)), "unreadable parquet file")


def _rewrite_part(part: Path, edit) -> None:
    table = pq.read_table(part)
    pq.write_table(edit(table), part)


def test_coordinates_stored_as_strings(store):
    parts = sorted((store / "points" / "transcripts" / "points.parquet").glob("*.parquet"))

    def x_as_text(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("x")
        return t.set_column(i, "x", pa.array([str(v) for v in t.column("x").to_pylist()]))

    for part in parts:
        _rewrite_part(part, x_as_text)
    _raises(store, r"points/transcripts", "column 'x' is stored as", "must be numbers")


def test_radius_stored_as_strings(store):
    import geopandas as gpd

    file = store / "shapes" / "spots" / "shapes.parquet"
    gdf = gpd.read_parquet(file)
    gdf["radius"] = gdf["radius"].astype(str)
    gdf.to_parquet(file)
    _raises(store, r"shapes/spots", "radius", "numeric")


def test_feature_column_not_categorical(store):
    parts = sorted((store / "points" / "transcripts" / "points.parquet").glob("*.parquet"))

    def decode(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("gene")
        return t.set_column(i, "gene", t.column("gene").cast(pa.string()))

    for part in parts:
        _rewrite_part(part, decode)
    _raises(store, r"points/transcripts", "gene", "categorical")


def test_a_part_without_the_feature_column(store):
    """The categories of a store spatialdata wrote are learnt from every part: one part
    without the dictionary column the first part has is a FormatError naming that part."""
    part = store / "points" / "transcripts" / "points.parquet" / "part.1.parquet"
    _rewrite_part(part, lambda t: t.drop_columns(["gene"]))
    _raises(store, re.escape(str(part)), "no column 'gene'", "write the element again")


def test_missing_parquet_directory(store):
    shutil.rmtree(store / "points" / "transcripts" / "points.parquet")
    _raises(store, r"points/transcripts", "parquet directory .* is missing")


# --- Icechunk --------------------------------------------------------------------------------
def test_repository_not_written_by_spatialflow(icechunk_repo):
    import zarr

    session = icechunk_repo.writable_session("main")
    zarr.open_group(session.store, mode="w", zarr_format=3).create_group("images")
    session.commit("foreign")
    _raises(icechunk_repo.path, "not written by spatialflow")


def test_empty_repository_and_unknown_refs(icechunk_repo):
    _raises(icechunk_repo.path, "holds no dataset yet")
    _raises(icechunk_repo.path, "no branch 'nope'", branch="nope")
    _raises(icechunk_repo.path, "no snapshot 'XYZ'", snapshot="XYZ")


def test_branch_on_a_plain_store(sd_store):
    _raises(sd_store, "apply to Icechunk repositories only", branch="dev")


def test_unknown_native_layout_version(tmp_path):
    import icechunk
    import zarr

    path = tmp_path / "repo"
    sf.Dataset(points={"p": sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))}).write(
        path, format="icechunk"
    )
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    zarr.open_group(session.store, path="points/p", mode="r+").attrs["version"] = 99
    session.commit("from the future")
    _raises(path, r"points/p", "unknown native layout version 99")


def test_spatialdata_store_is_not_overwritten_by_a_repository(sd_store, tmp_path):
    with pytest.raises(sf.FormatError, match="not an Icechunk repository"):
        sf.read(sd_store).write(sd_store, format="icechunk")
    with pytest.raises(sf.FormatError, match="Icechunk repositories can live on local disk or S3"):
        sf.Dataset().write("memory://somewhere", format="icechunk")


# --- failed writes to a plain directory ------------------------------------------------------
def _exploding_points(bad: int = 2) -> sf.Points:
    meta = pd.DataFrame({"x": np.empty(0), "y": np.empty(0)})

    def part(k: int) -> pd.DataFrame:
        if k == bad:
            raise RuntimeError(f"partition {k} exploded")
        return pd.DataFrame({"x": np.arange(3.0), "y": np.arange(3.0) + k})

    return sf.Points(dd.from_map(part, range(4), meta=meta, enforce_metadata=False))


def test_failed_write_to_a_new_directory_leaves_nothing(tmp_path):
    ds = sf.Dataset(points={"p": _exploding_points()})
    with pytest.raises(RuntimeError, match="exploded"):
        ds.write(tmp_path / "new.zarr")
    assert not (tmp_path / "new.zarr").exists()


def test_failed_write_keeps_the_previous_element(oracle, sd_store, tmp_path, sd_expected):
    out = tmp_path / "out.zarr"
    shutil.copytree(sd_store, out)
    before = {p.relative_to(out) for p in out.rglob("*")}
    ds = sf.read(sd_store)
    ds.points["transcripts"] = _exploding_points()  # replaces an element of the store
    with pytest.raises(RuntimeError, match="partition 2 exploded"):
        ds.write(out, overwrite=True)
    after = {p.relative_to(out) for p in out.rglob("*")}
    points_files = {p for p in after if p.parts[0] == "points"}
    assert points_files == {p for p in before if p.parts[0] == "points"}
    assert not any("__spatialflow_tmp" in str(p) for p in after)
    # the old points are there, whole, and spatialdata reads them
    pd.testing.assert_frame_equal(
        oracle.read(out).points["transcripts"].compute(),
        sd_expected.points["transcripts"].compute(),
    )


@pytest.mark.parametrize("target", ["empty directory", "existing store"])
def test_failed_write_midway_leaves_no_partial_element(target, sd_store, tmp_path, monkeypatch):
    """A failure after every parquet part of an element exists (not before any) leaves no
    trace of it: its final name never appears."""
    from spatialflow.io import sdwriter

    real = sdwriter._write_points

    def flaky(loc, group, path, el):
        real(loc, group, path, el)  # every part is written...
        assert list(Path(path, "points.parquet").glob("part.*.parquet"))
        raise OSError("disk full")  # ...then the element fails

    monkeypatch.setattr(sdwriter, "_write_points", flaky)
    out = tmp_path / "out.zarr"
    if target == "empty directory":
        out.mkdir()
    else:
        shutil.copytree(sd_store, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    ds = sf.Dataset(
        images={"img": sf.Image(np.zeros((1, 4, 4), dtype=np.uint8))},
        points={"new_points": sf.Points(frame)},
    )
    with pytest.raises(OSError, match="disk full"):
        ds.write(out, overwrite=True)
    assert not (out / "points" / "new_points").exists()
    assert not (out / "__spatialflow_tmp__").exists()
    if target == "empty directory":
        assert out.is_dir() and not list(out.iterdir())  # as it was
    else:  # the elements written before the failure are complete; nothing else changed
        after = sorted(p.relative_to(out) for p in out.rglob("*"))
        assert [p for p in after if p.parts[0] != "images"] == [
            p for p in before if p.parts[0] != "images"
        ]
        assert sf.read(out).images["img"].scale(0).values.sum() == 0
