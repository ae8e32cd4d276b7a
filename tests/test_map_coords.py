"""`spatialflow map-coords` against our own RFC-5 cases (tests/data/rfc5_cases.json).

Each case is an OME-Zarr group whose zarr.json holds an ngff 0.6 scene; expected coordinates were
worked out by hand from the RFC-5 definitions, not by spatialflow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CASES = json.loads((Path(__file__).parent / "data" / "rfc5_cases.json").read_text())


def _materialize(case: dict, root: Path) -> Path:
    group = root / case["name"]
    group.mkdir()
    meta = {"zarr_format": 3, "node_type": "group", "attributes": case["attributes"]}
    (group / "zarr.json").write_text(json.dumps(meta))
    for rel, attrs in case.get("subgroups", {}).items():
        (group / rel).mkdir(parents=True)
        sub = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        (group / rel / "zarr.json").write_text(json.dumps(sub))
    return group


def _map_coords(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("spatialflow")
    cmd = [exe] if exe else [sys.executable, "-m", "spatialflow.cli"]
    return subprocess.run([*cmd, "map-coords", *args], capture_output=True, text=True, timeout=60)


def test_cases_cover_every_type():
    kinds = set()

    def walk(d):
        if isinstance(d, dict):
            if "type" in d:
                kinds.add(d["type"])
            for v in d.values():
                walk(v)
        elif isinstance(d, list):
            for v in d:
                walk(v)

    walk([c["attributes"] for c in CASES])
    assert {
        "identity",
        "translation",
        "scale",
        "affine",
        "rotation",
        "mapAxis",
        "sequence",
        "byDimension",
        "bijection",
        "inverseOf",
    } <= kinds


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_map_coords_case(case, tmp_path):
    group = _materialize(case, tmp_path)
    out = _map_coords(str(group), case["source"], case["target"], json.dumps(case["coords"]))
    if "error" in case:
        assert out.returncode != 0, out.stdout
        assert case["error"] in json.loads(out.stdout)["message"]
        return
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout)
    assert set(got) == {"coordinates"}
    np.testing.assert_allclose(got["coordinates"], case["expected"], rtol=1e-12, atol=1e-12)


def test_map_coords_bad_path_and_coords(tmp_path):
    out = _map_coords(str(tmp_path / "missing"), "a", "b", "[[1, 2]]")
    assert out.returncode != 0 and "zarr.json" in json.loads(out.stdout)["message"]
    group = _materialize(CASES[0], tmp_path)
    out = _map_coords(str(group), "a", "b", "[[1, 2")
    assert out.returncode != 0 and "JSON" in json.loads(out.stdout)["message"]
    out = _map_coords(str(group), "a", "b", "[[1, 2, 3]]")
    assert out.returncode != 0 and "axes" in json.loads(out.stdout)["message"]


def test_map_coords_starts_light():
    """The conformance command must not import Dask, AnnData or zarr to answer."""
    code = (
        "import sys, spatialflow.cli as c; from spatialflow.transforms.scene import read_scene;"
        "print(sorted(m for m in ('dask', 'anndata', 'zarr', 'geopandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
