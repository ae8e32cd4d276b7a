"""The `spatialflow` command: help, version, the demo."""

from __future__ import annotations

import subprocess
import sys

import spatialflow


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "spatialflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_commands():
    out = _run("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "map-coords" in out.stdout


def test_version(capsys):
    out = _run("--version")
    assert out.returncode == 0
    assert spatialflow.__version__ in out.stdout


def test_demo_ingests_runs_the_job_and_is_idempotent(tmp_path):
    repo = tmp_path / "demo.icechunk"
    args = ("demo", "--repo", str(repo), "--transcripts", "30000", "--cells", "300")
    first = _run(*args)
    assert first.returncode == 0, first.stderr
    assert "Dask dashboard:" in first.stdout and "Job committed" in first.stdout
    ds = spatialflow.read(repo)
    assert {"transcripts_by_cell", "morphology_by_cell", "cell_types_by_spot"} <= set(ds.tables)
    counts = ds.tables["transcripts_by_cell"].data
    assert counts.n_obs == 300 and counts.X.sum() >= 0.85 * 30000
    fractions = ds.tables["cell_types_by_spot"].data
    assert fractions.X.sum() > 0
    second = _run(*args)
    assert second.returncode == 0 and "Nothing to do" in second.stdout
    log = _run("log", str(repo))
    assert log.stdout.count("\n") == 3  # init, ingest, job
    assert "run/" in log.stdout


def test_bad_argument_is_a_usage_error():
    out = _run("demo", "--cells", "0")
    assert out.returncode == 2
    assert "at least 1" in out.stderr
