"""The `spatialflow` command: help, version, the demo."""

from __future__ import annotations

import subprocess
import sys

import spatialflow
from spatialflow.cli import main


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


def test_demo_small(capsys):
    assert main(["demo", "--transcripts", "20000", "--cells", "200"]) == 0
    out = capsys.readouterr().out
    assert "20,000 transcripts" in out
    assert "inside cells" in out


def test_bad_argument_is_a_usage_error():
    out = _run("demo", "--cells", "0")
    assert out.returncode == 2
    assert "at least 1" in out.stderr
