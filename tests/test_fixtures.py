"""The shared fixtures are real: separate worker processes, a committed Icechunk repository."""

import os

import numpy as np
import zarr


def test_cluster_runs_tasks_in_other_processes(cluster_client):
    pids = set(cluster_client.run(os.getpid).values())
    assert len(pids) == 2
    assert os.getpid() not in pids
    fut = cluster_client.submit(os.getpid, pure=False)
    assert fut.result() in pids


def test_icechunk_repo_commits_and_reads_back(icechunk_repo):
    import icechunk

    session = icechunk_repo.writable_session("main")
    root = zarr.group(store=session.store)
    arr = root.create_array("a", shape=(4,), chunks=(2,), dtype="i4")
    arr[:] = np.arange(4)
    snap = session.commit("first")
    reopened = icechunk.Repository.open(icechunk.local_filesystem_storage(str(icechunk_repo.path)))
    ro = reopened.readonly_session(snapshot_id=snap)
    np.testing.assert_array_equal(zarr.open_array(ro.store, path="a")[:], np.arange(4))
