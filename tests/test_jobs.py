"""Jobs: config validation, atomic commits under a real LocalCluster, no-op reruns, kills,
concurrent runs, history and rollback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

import spatialflow as sf
from spatialflow.errors import CommitConflictError, ConfigError, SpatialFlowError
from spatialflow.io.location import location
from spatialflow.io.repository import open_repository
from spatialflow.jobs.config import load_config, parse_config
from spatialflow.jobs.history import history, rollback
from spatialflow.jobs.runner import run_job

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jobs")
    ds = sf.datasets.xenium_like(30_000, 400, n_genes=20, transcripts_per_partition=8_000)
    ds.write(root / "sample.icechunk", format="icechunk", message="ingest")
    return root


def _config(root: Path, name: str = "results.icechunk", **changes) -> sf.jobs.config.JobConfig:
    data = yaml.safe_load((CONFIGS / "aggregate.yaml").read_text())
    data["repository"] = str(root / name)
    data["inputs"]["sample"]["url"] = str(root / "sample.icechunk")
    data.update(changes)
    return parse_config(data, base_dir=str(root))


def _repo(path: Path):
    return open_repository(location(path))


def _snapshot_content(path: Path, snapshot: str | None = None) -> dict:
    ds = sf.read(path, snapshot=snapshot) if snapshot else sf.read(path)
    out = {}
    for name, el in ds.items():
        if isinstance(el, sf.Table):
            out[name] = np.asarray(el.data.X.todense()).sum()
        elif isinstance(el, sf.Points):
            out[name] = len(el.data.compute())
    return out


def _all_chunks_written(path: Path, snapshot: str) -> None:
    session = _repo(path).readonly_session(snapshot_id=snapshot)
    root = zarr.open_group(session.store, mode="r")
    for _, arr in root.arrays():
        assert arr.nchunks_initialized == arr.nchunks or arr.size == 0
    for _, grp in root.groups():
        _walk(grp)


def _walk(group) -> None:
    for _, arr in group.arrays():
        assert arr.nchunks_initialized == arr.nchunks or arr.size == 0, arr.path
    for _, sub in group.groups():
        _walk(sub)


# --- configs -------------------------------------------------------------------------------
def test_example_config_loads():
    cfg = load_config(CONFIGS / "aggregate.yaml")
    assert [s.kind for s in cfg.steps] == ["aggregate", "aggregate", "query"]
    assert cfg.cluster.workers == 2 and cfg.branch == "main"
    assert cfg.resolve("../x").endswith("x")


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda d: d.update(colour="red"), "unknown field(s) ['colour']"),
        (lambda d: d["steps"][0]["aggregate"].update(agg_func="x"), "steps[0].aggregate"),
        (lambda d: d["steps"][0]["aggregate"].update(input="nope"), "steps[0].aggregate.input"),
        (
            lambda d: d["steps"][1]["aggregate"].update(fractions="yes"),
            "steps[1].aggregate.fractions: expected true/false",
        ),
        (lambda d: d.pop("inputs"), "missing required field 'inputs'"),
        (lambda d: d["cluster"].update(workers=0), "cluster.workers"),
        (lambda d: d["steps"][2]["query"].update(min="zero"), "steps[2].query.min"),
        (lambda d: d["steps"][0]["aggregate"].update(agg="median"), "steps[0].aggregate.agg"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, mutate, words):
    data = yaml.safe_load((CONFIGS / "aggregate.yaml").read_text())
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert words in str(info.value)


def test_bad_config_file_and_missing_input_fail_before_work(tmp_path):
    with pytest.raises(ConfigError, match="agg_func"):
        load_config(CONFIGS / "bad_unknown_key.yaml")
    cfg = _config(tmp_path)  # the sample does not exist in this folder
    with pytest.raises(ConfigError, match=r"inputs\.sample"):
        run_job(cfg)
    assert not (tmp_path / "results.icechunk").exists()


def test_unreachable_scheduler_fails_fast(sample, tmp_path):
    cfg = _config(
        sample,
        name=f"unreach-{tmp_path.name}.icechunk",
        cluster={"scheduler": "tcp://127.0.0.1:9", "timeout": 2},
    )
    t0 = time.perf_counter()
    with pytest.raises(SpatialFlowError, match="cannot reach the Dask scheduler"):
        run_job(cfg)
    assert time.perf_counter() - t0 < 30


# --- running -------------------------------------------------------------------------------
def test_run_commits_once_then_is_a_noop(sample, cluster_client):
    cfg = _config(sample, name="once.icechunk")
    address = cluster_client.scheduler.address
    dry = run_job(cfg, scheduler=address, dry_run=True)
    assert dry.status == "dry-run" and "strategy" in dry.explain
    assert not (sample / "once.icechunk").exists()
    first = run_job(cfg, scheduler=address)
    assert first.status == "committed" and first.tag.startswith("run/")
    repo = _repo(sample / "once.icechunk")
    log = history(repo)
    assert log[0].run_key == first.run_key and first.tag in log[0].tags
    meta = next(iter(repo.ancestry(branch="main"))).metadata
    assert set(meta["inputs"]) == {"sample"} and "versions" in meta and "config" in meta
    _all_chunks_written(sample / "once.icechunk", first.snapshot)
    # the committed tables equal computing the same aggregation directly
    out = sf.read(sample / "once.icechunk")
    direct = sf.aggregate(
        sf.read(sample / "sample.icechunk"), "transcripts", "cells", value_key="gene"
    ).compute()
    got = out.tables["transcripts_by_cell"].data
    np.testing.assert_array_equal(np.asarray(got.X.todense()), np.asarray(direct.X.todense()))
    assert list(got.obs_names) == list(direct.obs_names)
    assert len(out.points["transcripts_corner"].data.compute()) > 0
    again = run_job(cfg, scheduler=address)
    assert again.status == "no-op" and again.snapshot == first.snapshot
    assert len(history(repo)) == len(log)
    forced = run_job(cfg, scheduler=address, force=True)
    assert forced.status == "committed" and forced.tag != first.tag
    assert len(history(repo)) == len(log) + 1


def test_failing_task_commits_nothing(sample, cluster_client):
    cfg = _config(sample, name="fail.icechunk")
    address = cluster_client.scheduler.address
    first = run_job(cfg, scheduler=address)
    bad = _config(
        sample,
        name="fail.icechunk",
        steps=[
            {
                "aggregate": {
                    "input": "sample",
                    "values": "transcripts",
                    "by": "cells",
                    "value_key": "gene",
                    "output": "transcripts_by_cell",
                }
            },
            {
                "transform": {
                    "input": "sample",
                    "element": "transcripts",
                    "to": "global",
                    "output": "moved",
                }
            },
        ],
    )
    import spatialflow.ops.transform as tr

    real = tr.transform_points_frame

    def boom(df, t, axes):
        raise RuntimeError("disk full")

    tr.transform_points_frame = boom
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            run_job(bad)  # a new LocalCluster: the failing function is shipped to workers
    finally:
        tr.transform_points_frame = real
    repo = _repo(sample / "fail.icechunk")
    assert repo.lookup_branch("main") == first.snapshot  # nothing committed


def test_rollback_restores_earlier_content(sample, cluster_client):
    cfg = _config(sample, name="rollback.icechunk")
    address = cluster_client.scheduler.address
    first = run_job(cfg, scheduler=address)
    before = _snapshot_content(sample / "rollback.icechunk")
    other = _config(
        sample,
        name="rollback.icechunk",
        steps=[
            {
                "aggregate": {
                    "input": "sample",
                    "values": "transcripts",
                    "by": "spots",
                    "value_key": "gene",
                    "output": "transcripts_by_cell",
                }
            }
        ],
    )
    run_job(other, scheduler=address)
    assert _snapshot_content(sample / "rollback.icechunk") != before
    repo = _repo(sample / "rollback.icechunk")
    rollback(repo, "main", first.tag)
    assert _snapshot_content(sample / "rollback.icechunk") == before
    with pytest.raises(SpatialFlowError, match="neither a tag nor a snapshot"):
        rollback(repo, "main", "run/never")


STALL_AFTER_WRITE = """
import pathlib, sys, time
import spatialflow.io.icechunk_writer as writer

real = writer._write_tables


def write_then_stall(*args, **kwargs):
    real(*args, **kwargs)  # the job's outputs are in the writable session, not committed
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(600)


writer._write_tables = write_then_stall
from spatialflow.cli import main

sys.exit(main(["run", sys.argv[1]]))
"""


def test_sigkill_mid_write_leaves_main_unchanged(sample, tmp_path):
    """The job process is killed after its outputs were computed and written into its
    session, before the commit (a marker file says when; a fixed sleep raced fast jobs)."""
    target = sample / "killed.icechunk"
    cfg_path = tmp_path / "job.yaml"
    data = yaml.safe_load((CONFIGS / "aggregate.yaml").read_text())
    data["repository"] = str(target)
    data["inputs"]["sample"]["url"] = str(sample / "sample.icechunk")
    cfg_path.write_text(yaml.safe_dump(data))
    run_job(load_config(cfg_path))  # a first clean commit
    repo = _repo(target)
    head = repo.lookup_branch("main")
    before = _snapshot_content(target)
    data["steps"][0]["aggregate"]["output"] = "second_table"
    cfg_path.write_text(yaml.safe_dump(data))
    marker = tmp_path / "written"
    proc = subprocess.Popen(
        [sys.executable, "-c", STALL_AFTER_WRITE, str(cfg_path), str(marker)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert marker.exists() and alive, err.decode()[-2000:]  # killed mid-job, after writing
    assert _repo(target).lookup_branch("main") == head
    assert _snapshot_content(target) == before
    rerun = run_job(load_config(cfg_path))
    assert rerun.status == "committed"
    content = _snapshot_content(target)
    assert content["second_table"] == content["transcripts_by_cell"]


def test_worker_killed_mid_job_leaves_old_or_complete_new(sample, tmp_path):
    from distributed import Client, LocalCluster

    target_name = "worker-kill.icechunk"
    cfg = _config(sample, name=target_name)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as lc,
        Client(lc) as client,
    ):
        pids = list(client.run(os.getpid).values())

        def kill_one():
            time.sleep(2.0)
            os.kill(pids[0], signal.SIGKILL)

        threading.Thread(target=kill_one, daemon=True).start()
        try:
            res = run_job(cfg, scheduler=lc.scheduler_address)
            outcome = res.status
        except Exception:
            outcome = "failed"
    path = sample / target_name
    repo = open_repository(location(path), create=True)
    if outcome == "committed":
        content = _snapshot_content(path)
        assert content["transcripts_by_cell"] > 0
        _all_chunks_written(path, repo.lookup_branch("main"))
    else:
        assert [e.run_key for e in history(repo) if e.run_key] == []


def test_concurrent_runs_on_one_branch(sample, cluster_client):
    """Disjoint outputs both land (rebase); the same outputs conflict and lose nothing."""
    address = cluster_client.scheduler.address
    base = _config(sample, name="concurrent.icechunk")
    run_job(base, scheduler=address)
    a = _config(
        sample,
        name="concurrent.icechunk",
        steps=[
            {
                "aggregate": {
                    "input": "sample",
                    "values": "transcripts",
                    "by": "cells",
                    "value_key": "gene",
                    "output": "table_a",
                }
            }
        ],
    )
    b = _config(
        sample,
        name="concurrent.icechunk",
        steps=[
            {
                "aggregate": {
                    "input": "sample",
                    "values": "transcripts",
                    "by": "spots",
                    "value_key": "gene",
                    "output": "table_b",
                }
            }
        ],
    )
    results: dict[str, object] = {}

    def go(name, cfg):
        try:
            results[name] = run_job(cfg, scheduler=address)
        except Exception as e:  # collected and checked below
            results[name] = e

    threads = [threading.Thread(target=go, args=(n, c)) for n, c in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    landed = {n for n, r in results.items() if getattr(r, "status", None) == "committed"}
    for n, r in results.items():
        if n not in landed:
            assert isinstance(r, CommitConflictError), r
    content = _snapshot_content(sample / "concurrent.icechunk")
    for n in landed:
        assert content[f"table_{n}"] > 0
    assert landed  # at least one landed; with disjoint outputs normally both
