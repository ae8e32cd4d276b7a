"""Progress: a bar with done/total tasks on a terminal (read through a pseudo-terminal), one line
per step otherwise, and task counts from a real distributed cluster."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import pytest
from rich.console import Console

import spatialflow as sf
from spatialflow.jobs.progress import StepProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("progress")
    ds = sf.datasets.xenium_like(4_000, 40, n_genes=10)
    ds.write(root / "sample.zarr")
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LINES="40")
    env.pop("NO_COLOR", None)
    env.pop("CI", None)
    return env


def _run_in_pty(args: list[str]) -> tuple[int, str]:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spatialflow.cli", *args],
        stdin=child,
        stdout=child,
        stderr=child,
        env=_env(),
        close_fds=True,
    )
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_convert_shows_a_bar_on_a_terminal(store):
    code, out = _run_in_pty(["convert", str(store / "sample.zarr"), str(store / "tty.zarr")])
    assert code == 0, out
    text = ANSI.sub("", out)
    assert "━" in text  # rich's bar
    done = re.findall(r"(\d+)/(\d+) tasks", text)
    assert done, text
    final_done, final_total = map(int, done[-1])
    assert final_total > 0 and final_done == final_total
    assert "left" in text  # time remaining column
    assert "convert to spatialdata" in text
    assert sf.read(store / "tty.zarr").points["transcripts"].data.shape[0].compute() == 4_000


def test_convert_prints_one_line_per_step_without_a_terminal(store):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spatialflow.cli",
            "convert",
            str(store / "sample.zarr"),
            str(store / "pipe.zarr"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "━" not in out.stdout and "\r" not in out.stdout
    steps = [ln for ln in out.stdout.splitlines() if ln.startswith("convert to spatialdata:")]
    assert len(steps) == 1, out.stdout
    n, total = map(int, re.search(r": (\d+) of (\d+) tasks in", steps[0]).groups())
    assert n == total > 0
    assert "tasks:" not in out.stderr  # the old "tasks: 4 in memory ..." lines are gone


def test_step_counts_tasks_on_a_distributed_cluster(cluster_client):
    buf = io.StringIO()
    progress = StepProgress(Console(file=buf, width=120), live=False, interval=0.05)
    progress.set_client(cluster_client)
    x = da.ones((40, 40), chunks=(10, 10))
    with progress.step("sum"):
        (total,) = dask.compute((x + 1).sum())
    assert total == 3200
    line = buf.getvalue().strip()
    m = re.fullmatch(r"sum: (\d+) of (\d+) tasks in [\d.]+ s", line)
    assert m, line
    done, submitted = map(int, m.groups())
    assert done == submitted >= 16  # at least one task per chunk


def test_library_logs_and_never_prints(store, capsys):
    from spatialflow.jobs.progress import no_progress

    with no_progress("quiet step"):
        dask.compute(da.ones(10, chunks=5).sum())
    fig = sf.plot(sf.read(store / "sample.zarr"), "cells", width=64)
    assert fig is not None
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
