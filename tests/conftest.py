"""Shared fixtures: a real multi-process Dask cluster and a real Icechunk repository on disk."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cluster_client() -> Iterator[object]:
    """A ``distributed.Client`` on a real LocalCluster: 2 worker processes, 1 thread each."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            processes=True,
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            memory_limit="4GiB",
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def icechunk_repo(tmp_path: Path) -> object:
    """A new, empty Icechunk repository on local disk (``.path`` holds its directory)."""
    import icechunk

    path = tmp_path / "repo.icechunk"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))
    repo.path = path  # type: ignore[attr-defined]
    return repo
