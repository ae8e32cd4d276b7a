"""fsspec URLs: local paths, file://, memory://, and S3 for real against moto's server on
loopback (the ``s3_server`` fixture), for the SpatialData layout and an Icechunk repository."""

from __future__ import annotations

import uuid

import anndata
import dask
import fsspec
import icechunk
import numpy as np
import pytest
import zarr

import spatialflow as sf
from spatialflow.io.location import location
from spatialflow.io.repository import history, repository_storage


@pytest.fixture(scope="module")
def source(sd_store) -> sf.Dataset:
    return sf.read(sd_store)


@pytest.fixture(scope="module")
def subset(source) -> sf.Dataset:
    """Every kind, without the labels and the larger table (moto answers one request at a
    time, and each zarr key is one request)."""
    return sf.Dataset(
        images=dict(source.images),
        points=dict(source.points),
        shapes=dict(source.shapes),
        tables={"spot_table": source.tables["spot_table"]},
    )


@pytest.fixture(scope="module")
def expected_subset(sd_expected):
    import spatialdata as sd

    e = sd_expected
    return sd.SpatialData(
        images=dict(e.images),
        points=dict(e.points),
        shapes=dict(e.shapes),
        tables={"spot_table": e.tables["spot_table"]},
    )


def test_local_path_string_and_file_url_are_the_same_store(oracle, sd_store, sd_expected, tmp_path):
    ds = sf.read(f"file://{sd_store}")
    out = tmp_path / "out.zarr"
    ds.write(f"file://{out}")
    oracle.assert_equal(sd_expected, oracle.read(str(out)))
    assert sorted(n for n, _ in sf.read(f"file://{out}").items()) == sorted(
        n for n, _ in ds.items()
    )


def test_file_url_repository(oracle, subset, expected_subset, tmp_path):
    repo = tmp_path / "repo"
    subset.write(f"file://{repo}", format="icechunk")
    oracle.assert_equal(expected_subset, sf.read(str(repo)).to_spatialdata())


def test_memory_url_round_trip(oracle, source, sd_expected):
    url = f"memory://sf-{uuid.uuid4().hex[:8]}/out.zarr"
    source.write(url)
    fs = fsspec.filesystem("memory")
    assert fs.exists(url.removeprefix("memory://") + "/points/transcripts/points.parquet")
    meta = zarr.open_consolidated(zarr.storage.FsspecStore.from_url(url), zarr_format=3)
    assert "tables/table" in dict(meta.members(max_depth=None))
    # memory:// lives in this process: compute here even if a distributed client is active
    with dask.config.set(scheduler="threads"):
        oracle.assert_equal(sd_expected, sf.read(url).to_spatialdata())


def test_memory_url_under_a_cluster(cluster_client, source):
    """memory:// exists in this process only: the write runs here, not on the workers, and a
    read computed on the workers fails with an error that says why."""
    url = f"memory://sf-{uuid.uuid4().hex[:8]}/out.zarr"
    sf.Dataset(points=dict(source.points)).write(url)
    back = sf.read(url).points["transcripts"].data
    assert len(back.compute(scheduler="threads")) == 5000
    with pytest.raises(sf.FormatError, match="exist in one process only"):
        back.compute()


def _s3fs(opts: dict) -> fsspec.AbstractFileSystem:
    import s3fs

    return s3fs.S3FileSystem(
        key=opts["key"], secret=opts["secret"], endpoint_url=opts["endpoint_url"]
    )


def test_spatialdata_layout_on_s3(oracle, subset, expected_subset, s3_server, s3_bucket, tmp_path):
    url = f"s3://{s3_bucket}/data/out.zarr"
    subset.write(url, storage_options=s3_server)
    fs = _s3fs(s3_server)
    assert fs.exists(f"{s3_bucket}/data/out.zarr/zarr.json")
    assert fs.ls(f"{s3_bucket}/data/out.zarr/points/transcripts/points.parquet")
    assert not fs.exists(f"{s3_bucket}/data/out.zarr/__spatialflow_tmp__")
    back = sf.read(url, storage_options=s3_server)
    oracle.assert_equal(expected_subset, back.to_spatialdata())
    # spatialdata itself reads the objects (copied to disk: it takes local paths)
    local = tmp_path / "from-s3.zarr"
    fs.get(f"{s3_bucket}/data/out.zarr", str(local), recursive=True)
    oracle.assert_equal(expected_subset, oracle.read(local))


def test_overwrite_and_failed_writes_on_s3(source, s3_server, s3_bucket):
    url = f"s3://{s3_bucket}/small.zarr"
    first = sf.Dataset(images={"morphology": source.images["morphology"]})
    first.write(url, storage_options=s3_server)
    with pytest.raises(sf.FormatError, match="already exists"):
        first.write(url, storage_options=s3_server)
    spots = sf.Dataset(shapes={"spots": source.shapes["spots"]})
    spots.write(url, storage_options=s3_server, overwrite=True)
    assert [n for n, _ in sf.read(url, storage_options=s3_server).items()] == ["spots"]
    broken = sf.Dataset(points={"spots": sf.Points(_exploding_frame())})
    with pytest.raises(RuntimeError, match="exploded"):
        broken.write(url, storage_options=s3_server, overwrite=True)
    fs = _s3fs(s3_server)
    assert not fs.exists(f"{s3_bucket}/small.zarr/points/spots")
    assert not fs.exists(f"{s3_bucket}/small.zarr/__spatialflow_tmp__")
    back = sf.read(url, storage_options=s3_server)
    assert len(back.shapes["spots"].data.compute()) == 3


def _exploding_frame():
    import dask.dataframe as dd
    import pandas as pd

    def part(k: int) -> pd.DataFrame:
        if k == 1:
            raise RuntimeError("partition exploded")
        return pd.DataFrame({"x": [1.0], "y": [2.0]})

    meta = pd.DataFrame({"x": np.empty(0), "y": np.empty(0)})
    return dd.from_map(part, range(2), meta=meta, enforce_metadata=False)


def test_icechunk_repository_on_s3(oracle, subset, expected_subset, s3_server, s3_bucket):
    url = f"s3://{s3_bucket}/repos/main.icechunk"
    first = subset.write(url, format="icechunk", message="to s3", storage_options=s3_server)
    fs = _s3fs(s3_server)
    assert fs.exists(f"{s3_bucket}/repos/main.icechunk/repo")
    back = sf.read(url, storage_options=s3_server)
    oracle.assert_equal(expected_subset, back.to_spatialdata())
    extra = sf.Table(anndata.AnnData(np.arange(6, dtype=np.float32).reshape(3, 2)))
    second = sf.Dataset(tables={"extra": extra}).write(
        url, format="icechunk", message="more", storage_options=s3_server
    )
    log = history(location(url, s3_server))
    assert [c.id for c in log[:2]] == [second, first]
    assert "extra" in sf.read(url, storage_options=s3_server)
    assert "extra" not in sf.read(url, snapshot=first, storage_options=s3_server)
    # every chunk written, seen through icechunk's own S3 client
    repo = icechunk.Repository.open(repository_storage(location(url, s3_server)))
    root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    arrays = [a for _, a in root.arrays()] + [
        a
        for _, g in root.groups()
        for _, a in g.members(max_depth=None)
        if isinstance(a, zarr.Array)
    ]
    assert arrays and all(a.nchunks_initialized == a.nchunks for a in arrays)


def test_icechunk_on_s3_written_by_cluster_workers(cluster_client, s3_server, s3_bucket):
    """Workers in other processes write to the same bucket through their own fork."""
    ds = sf.datasets.xenium_like(20_000, 200, transcripts_per_partition=5_000, pixel_size=1.0)
    url = f"s3://{s3_bucket}/cluster.icechunk"
    ds.write(url, format="icechunk", storage_options=s3_server)
    back = sf.read(url, storage_options=s3_server)
    got = back.points["transcripts"].data.compute(scheduler="threads")
    want = ds.points["transcripts"].data.compute(scheduler="threads")
    assert got.equals(want)


def test_missing_s3_store_is_a_format_error(s3_server, s3_bucket):
    with pytest.raises(sf.FormatError, match=rf"s3://{s3_bucket}/nothing-here: no such directory"):
        sf.read(f"s3://{s3_bucket}/nothing-here", storage_options=s3_server)


def test_unsupported_url_scheme():
    with pytest.raises(sf.FormatError, match="cannot open this URL"):
        sf.read("nosuchscheme://x/y")
