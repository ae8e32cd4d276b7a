"""Storage faults and concurrent writers on a real S3 server on loopback (moto), through a
fault-injecting proxy (tests/fault_proxy.py), and the commit lock of local repositories.

A job whose object store answers 5xx or stalls on a fraction of requests either retries and
commits exactly the right data, or fails with a StorageError and the branch where it was.
N jobs committing to one branch at once all land (rebased, or redone on the new head), each
run once in the history, nothing lost."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_proxy import FaultProxy

import spatialflow as sf
from spatialflow.errors import SpatialFlowError, StorageError
from spatialflow.io.location import location
from spatialflow.io.repository import LOCK_FILE, open_repository, ref_lock
from spatialflow.jobs.config import parse_config
from spatialflow.jobs.runner import run_job

N_JOBS = 4


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    ds = sf.datasets.xenium_like(8_000, 120, n_genes=10, transcripts_per_partition=2_000)
    ds.write(root / "sample.icechunk", format="icechunk", message="ingest")
    return root / "sample.icechunk"


@pytest.fixture
def proxy(s3_server, monkeypatch):
    with FaultProxy(s3_server["endpoint_url"], seed=18) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)  # the job finds the server through it
        yield p


def _config(repository: str, sample: Path, outputs: list[tuple[str, dict]]) -> Any:
    steps = [{kind: {"input": "s", **params, "output": name}} for name, (kind, params) in outputs]
    return parse_config(
        {
            "repository": repository,
            "inputs": {"s": {"url": str(sample)}},
            "steps": steps,
            "commit": {"message": f"job {'+'.join(n for n, _ in outputs)}"},
        }
    )


def _agg(by: str = "cells", agg: str = "count") -> tuple[str, dict]:
    return "aggregate", {"values": "transcripts", "by": by, "value_key": "gene", "agg": agg}


def _query(x0: float) -> tuple[str, dict]:
    box = {"axes": ["x", "y"], "min": [x0, 0.0], "max": [x0 + 60.0, 160.0]}  # extent ~0-165
    return "query", {"element": "transcripts", "coordinate_system": "global", **box}


def _expected(sample: Path, name: str, spec: tuple[str, dict]) -> Any:
    """What a step's output must hold, computed directly (no job, no store)."""
    kind, p = spec
    ds = sf.read(sample)
    if kind == "aggregate":
        t = sf.aggregate(ds, p["values"], p["by"], value_key=p["value_key"], agg=p["agg"])
        return np.asarray(t.compute().X.todense())
    q = sf.bounding_box_query(
        ds.points["transcripts"],
        axes=p["axes"],
        min_coordinate=p["min"],
        max_coordinate=p["max"],
        target_coordinate_system=p["coordinate_system"],
    )
    return np.sort(q.data.compute()[["x", "y"]].to_numpy(), axis=0)


def _got(ds: sf.Dataset, name: str, kind: str) -> Any:
    if kind == "aggregate":
        return np.asarray(ds.tables[name].data.X.todense())
    return np.sort(ds.points[name].data.compute()[["x", "y"]].to_numpy(), axis=0)


def _s3(s3_server: dict) -> tuple[str, dict]:
    """A new bucket (named uniquely: conftest's s3_bucket names buckets by a truncated test
    name, which parametrized variants share) and the options to reach it."""
    import uuid

    import s3fs

    opts = {k: s3_server[k] for k in ("endpoint_url", "key", "secret")}
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{bucket}/repo", opts


def _run_keys(repo: Any) -> list[str]:
    return [(s.metadata or {}).get("run_key") for s in repo.ancestry(branch="main")]


# --- faults while a job runs ---------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.1, pytest.param(0.35, marks=pytest.mark.slow)])
def test_a_job_under_storage_faults_commits_right_or_nothing(
    rate, sample, proxy, s3_server, cluster_client
):
    url, opts = _s3(s3_server)
    address = cluster_client.scheduler.address
    outputs = [("counts", _agg()), ("corner", _query(0.0))]
    base = run_job(_config(url, sample, [("first", _agg("spots"))]), scheduler=address)
    repo = open_repository(location(url, opts))
    head = repo.lookup_branch("main")
    assert head == base.snapshot
    proxy.arm(rate=rate, max_faults=40, stall=1.5)
    try:
        result = run_job(_config(url, sample, outputs), scheduler=address)
        error = None
    except SpatialFlowError as e:  # the only way a job may fail here
        result, error = None, e
    finally:
        proxy.disarm()
    injected = sum(proxy.faults.values())
    print(f"rate {rate}: {injected} faults {dict(proxy.faults)} in {proxy.requests} requests")
    assert injected > 0, "the proxy injected nothing: the test tested nothing"
    repo = open_repository(location(url, opts))
    if error is not None:  # nothing committed: the branch is where it was
        assert isinstance(error, StorageError), error
        assert repo.lookup_branch("main") == head
        return
    assert result.status == "committed"
    assert repo.lookup_branch("main") == result.snapshot
    assert _run_keys(repo).count(result.run_key) == 1
    ds = sf.read(url, storage_options=opts)
    for name, spec in outputs:
        np.testing.assert_array_equal(_got(ds, name, spec[0]), _expected(sample, name, spec))


# --- concurrent writers ------------------------------------------------------------------------------
def _concurrently(configs: list[Any], address: str) -> list[Any]:
    results: list[Any] = [None] * len(configs)

    def go(i: int) -> None:
        try:
            results[i] = run_job(configs[i], scheduler=address)
        except Exception as e:  # collected and checked by the caller
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("where", ["s3", "local"])
def test_n_concurrent_jobs_on_one_branch_lose_nothing(
    where, sample, s3_server, _cluster, tmp_path, monkeypatch
):
    if where == "s3":
        url, opts = _s3(s3_server)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint_url"])
    else:
        url, opts = str(tmp_path / "shared.icechunk"), {}
    # each job's own Client (in its own thread) computes its graph: the session cluster's
    # address, not a global default scheduler shared by the threads
    address = _cluster.scheduler.address
    # a fresh repository: the first commits also race for the root group's attributes
    jobs = [
        [(f"job{i}_counts", _agg(agg="count")), (f"job{i}_roi", _query(25.0 * i))]
        for i in range(N_JOBS)
    ]
    twin = jobs[0]  # the same run twice: it must land once
    results = _concurrently([_config(url, sample, j) for j in [*jobs, twin]], address)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    statuses = sorted(r.status for r in results)
    assert statuses == ["committed"] * N_JOBS + ["no-op"], statuses
    repo = open_repository(location(url, opts))
    keys = _run_keys(repo)
    for r in results:
        assert keys.count(r.run_key) == 1, f"run {r.run_key[:8]} is {keys.count(r.run_key)}x"
    assert len([k for k in keys if k]) == N_JOBS
    ds = sf.read(url, storage_options=opts)
    for outputs in jobs:  # no update lost: every job's outputs, with the right data
        for name, spec in outputs:
            np.testing.assert_array_equal(_got(ds, name, spec[0]), _expected(sample, name, spec))
    if where == "local":
        assert (Path(url) / LOCK_FILE).exists()


def test_the_local_commit_lock_serializes(icechunk_repo):
    """A second holder waits for the first and times out with a CommitConflictError."""
    from spatialflow.errors import CommitConflictError

    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with ref_lock(icechunk_repo):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    with (
        pytest.raises(CommitConflictError, match="another process"),
        ref_lock(icechunk_repo, timeout=0.3),
    ):
        pass
    release.set()
    t.join()
    with ref_lock(icechunk_repo, timeout=1.0):  # free again
        pass
