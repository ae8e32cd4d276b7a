"""Operational scripts and the example notebook: scripts/reprocess.sh twice (the second run is a
no-op), a failing run exits non-zero, and examples/tour.ipynb runs top to bottom (nbclient)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

import spatialflow as sf

ROOT = Path(__file__).parent.parent


def _reprocess(config: Path, log: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPATIALFLOW=f"{shlex.quote(sys.executable)} -m spatialflow.cli")
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "reprocess.sh"), str(config), str(log)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_reprocess_runs_then_skips_unchanged_inputs_and_fails_loudly(tmp_path):
    sf.datasets.xenium_like(3_000, 30, n_genes=5).write(
        tmp_path / "sample.icechunk", format="icechunk", message="ingest"
    )
    config = {
        "repository": "results.icechunk",
        "inputs": {"sample": {"url": "sample.icechunk", "branch": "main"}},
        "steps": [
            {
                "aggregate": {
                    "input": "sample",
                    "values": "transcripts",
                    "by": "cells",
                    "value_key": "gene",
                    "output": "counts",
                }
            }
        ],
        "cluster": {"workers": 1, "memory_limit": "2GiB"},
        "commit": {"message": "nightly"},
    }
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "logs" / "nightly.log"

    first = _reprocess(path, log)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "done: Committed" in first.stdout
    assert sf.read(tmp_path / "results.icechunk").tables["counts"].data.n_obs == 30

    second = _reprocess(path, log)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "skipped: the inputs are unchanged" in second.stdout
    text = log.read_text()
    assert text.count("start:") == 2 and "Nothing to do" in text

    config["inputs"]["sample"]["url"] = "missing.icechunk"
    path.write_text(yaml.safe_dump(config))
    third = _reprocess(path, log)
    assert third.returncode != 0
    assert "FAILED with exit status" in third.stdout and "inputs.sample" in log.read_text()


def test_notebook_script_explains_how_to_get_jupyter():
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "notebook.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "uv run --with jupyterlab" in out.stdout


def test_tour_notebook_runs_top_to_bottom(tmp_path):
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "examples" / "tour.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [c.outputs for c in nb.cells if c.cell_type == "code"]
    assert all(not any(o.get("output_type") == "error" for o in out) for out in outputs)
    figures = [o for out in outputs for o in out if "image/png" in o.get("data", {})]
    assert len(figures) >= 2  # the two plots rendered
