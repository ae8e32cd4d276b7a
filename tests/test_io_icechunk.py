"""Writing the native layout into Icechunk under a real multi-process Dask cluster.

Every chunk of every array in the committed snapshot must be initialized (the known trap:
writers that store into a fork on a distributed cluster lose chunks silently), and a task that
fails mid-write must leave the branch at its previous snapshot with no trace for readers.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import icechunk
import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import get_task_stream

import spatialflow as sf


def _arrays(group: zarr.Group, prefix: str = "") -> list[tuple[str, zarr.Array]]:
    """Every array below ``group`` (the whole hierarchy), with its path."""
    out = []
    for name, member in group.members():
        path = f"{prefix}/{name}" if prefix else name
        if isinstance(member, zarr.Array):
            out.append((path, member))
        else:
            out.extend(_arrays(member, path))
    return out


def _uninitialized(repo: icechunk.Repository, branch: str = "main") -> dict[str, tuple]:
    session = repo.readonly_session(branch=branch)
    root = zarr.open_group(session.store, mode="r", zarr_format=3)
    arrays = _arrays(root)
    assert arrays, "the snapshot holds no arrays"
    return {
        path: (arr.nchunks_initialized, arr.nchunks)
        for path, arr in arrays
        if arr.nchunks_initialized != arr.nchunks
    }


def _small_xenium() -> sf.Dataset:
    return sf.datasets.xenium_like(
        20_000, 200, transcripts_per_partition=5_000, raster_chunk=128, pixel_size=1.0
    )


def _open(path) -> icechunk.Repository:
    return icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))


def test_cluster_write_initializes_every_chunk(cluster_client, tmp_path):
    ds = _small_xenium()
    path = tmp_path / "repo"
    with get_task_stream(cluster_client) as stream:
        ds.write(path, format="icechunk", message="xenium")
    keys = {t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in stream.data}
    assert any("_write_partition" in str(k) for k in keys), "partitions not written on workers"
    assert any("_write_region" in str(k) for k in keys), "raster chunks not written on workers"
    repo = _open(path)
    assert _uninitialized(repo) == {}
    # and the values are all there
    back = sf.read(path)
    pts, src = back.points["transcripts"], ds.points["transcripts"]
    pd.testing.assert_frame_equal(
        pts.data.compute(scheduler="threads"), src.data.compute(scheduler="threads")
    )
    np.testing.assert_array_equal(
        back.labels["nuclei"].scale(0).values, ds.labels["nuclei"].scale(0).values
    )
    for k in range(ds.images["morphology"].n_scales):
        np.testing.assert_array_equal(
            back.images["morphology"].scale(k).values, ds.images["morphology"].scale(k).values
        )
    got = back.shapes["cells"].data.compute(scheduler="threads")
    want = ds.shapes["cells"].data.compute(scheduler="threads")
    assert got.geometry.geom_equals_exact(want.geometry, tolerance=0).all()
    exact = [  # the stored bounds are the data's, per partition (tighter than the tiles)
        [*p[["x", "y", "z"]].min(), *p[["x", "y", "z"]].max()]
        for p in dask.compute(*src.data.to_delayed(), scheduler="threads")
    ]
    np.testing.assert_allclose(pts.partition_bounds, np.array(exact, dtype=np.float64))


def test_every_chunk_check_catches_a_lost_chunk(icechunk_repo):
    """The check above is not vacuous: a chunk never written is reported."""
    session = icechunk_repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a", zarr_format=3)
    arr = root.create_array("a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    arr[:2] = [1, 2]
    session.commit("half")
    assert _uninitialized(icechunk_repo) == {"a": (1, 2)}


def _failing_points(n_parts: int = 4, bad: int = 2) -> sf.Points:
    meta = pd.DataFrame({"x": np.empty(0), "y": np.empty(0)})

    def part(k: int) -> pd.DataFrame:
        if k == bad:
            raise RuntimeError(f"partition {k} exploded")
        return pd.DataFrame(
            {"x": np.arange(5.0) + k, "y": np.arange(5.0)}, index=range(k * 5, k * 5 + 5)
        )

    return sf.Points(dd.from_map(part, range(n_parts), meta=meta, enforce_metadata=False))


def _state(path) -> tuple[str, list[str], dict]:
    repo = _open(path)
    head = repo.lookup_branch("main")
    ids = [s.id for s in repo.ancestry(branch="main")]
    ds = sf.read(path)
    values = {name: el.data.compute(scheduler="threads") for name, el in ds.points.items()} | {
        name: el.scale(0).values for name, el in ds.images.items()
    }
    return head, ids, values


def _assert_same_state(before, after) -> None:
    assert after[0] == before[0] and after[1] == before[1]
    assert sorted(after[2]) == sorted(before[2])
    for name, v in before[2].items():
        if isinstance(v, pd.DataFrame):
            pd.testing.assert_frame_equal(after[2][name], v)
        else:
            np.testing.assert_array_equal(after[2][name], v)


@pytest.mark.parametrize("on_cluster", [True, False], ids=["cluster", "threads"])
def test_failed_task_leaves_the_branch_untouched(on_cluster, request, tmp_path):
    if on_cluster:
        request.getfixturevalue("cluster_client")
    path = tmp_path / "repo"
    first = sf.datasets.xenium_like(8_000, 80, transcripts_per_partition=2_000, pixel_size=1.0)
    first.write(path, format="icechunk", message="first")
    before = _state(path)
    img = first.images["morphology"]
    doomed = sf.Dataset(
        images={"morphology": sf.Image(img.scale(0).data + 1, channel_names=img.channel_names)},
        points={"transcripts": _failing_points(), "extra": _failing_points(bad=99)},
    )
    with pytest.raises(RuntimeError, match="partition 2 exploded"):
        doomed.write(path, format="icechunk", message="doomed")
    _assert_same_state(before, _state(path))
    assert "extra" not in sf.read(path)
    assert _uninitialized(_open(path)) == {}


def test_failed_first_write_leaves_an_empty_history(cluster_client, tmp_path):
    path = tmp_path / "repo"
    with pytest.raises(RuntimeError, match="exploded"):
        sf.Dataset(points={"p": _failing_points()}).write(path, format="icechunk")
    repo = _open(path)
    assert [s.message for s in repo.ancestry(branch="main")] == ["Repository initialized"]
    with pytest.raises(sf.FormatError, match="holds no dataset yet"):
        sf.read(path)


def test_unfinished_native_element_is_refused(icechunk_repo):
    """A points group without its partition table (a write that never finished) is not read
    as an element with missing rows."""
    from spatialflow.io.icechunk_writer import plan_writes

    pts = sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    session = icechunk_repo.writable_session("main")
    plan_writes(session, [], sf.Dataset(points={"p": pts}))  # nodes only, no partitions
    session.commit("nodes only")
    with pytest.raises(sf.FormatError, match=r"points/p: .*the write did not finish"):
        sf.read(icechunk_repo.path)


def test_writing_to_a_missing_branch_is_a_format_error(tmp_path):
    path = tmp_path / "repo"
    ds = sf.Dataset(points={"p": sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))})
    ds.write(path, format="icechunk")
    with pytest.raises(sf.FormatError, match="no branch 'dev'"):
        ds.write(path, format="icechunk", branch="dev")
    repo = _open(path)
    repo.create_branch("dev", repo.lookup_branch("main"))
    ds.write(path, format="icechunk", branch="dev", message="on dev")
    assert sf.read(path, branch="dev").points["p"].data.compute()["x"].tolist() == [1.0]
    with pytest.raises(sf.FormatError, match="no branch 'nope'"):
        sf.read(path, branch="nope")


def test_writer_uses_the_distributed_client_not_threads(cluster_client, tmp_path):
    """Points partitions computed on worker processes (pid differs from ours)."""
    import os

    def part(k: int) -> pd.DataFrame:
        return pd.DataFrame({"x": [float(os.getpid())], "y": [float(k)]}, index=[k])

    meta = pd.DataFrame({"x": np.empty(0), "y": np.empty(0)})
    pts = sf.Points(dd.from_map(part, range(4), meta=meta, enforce_metadata=False))
    sf.Dataset(points={"pids": pts}).write(tmp_path / "repo", format="icechunk")
    with dask.config.set(scheduler="threads"):
        pids = set(sf.read(tmp_path / "repo").points["pids"].data.compute()["x"].astype(int))
    workers = set(cluster_client.run(os.getpid).values())
    assert pids <= workers and os.getpid() not in pids
