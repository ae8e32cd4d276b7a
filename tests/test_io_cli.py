"""`spatialflow info` and `spatialflow convert`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import spatialflow as sf
from spatialflow.cli import main
from spatialflow.io.repository import history


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spatialflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_info_on_a_spatialdata_store(sd_store, capsys):
    assert main(["info", str(sd_store)]) == 0
    out = capsys.readouterr().out
    assert "SpatialData zarr v3 store (container 0.2)" in out
    assert (
        "morphology: 3c x 64y x 48x uint16, 3 scale(s), channels ['DAPI', 'PolyT', 'CD45']" in out
    )
    assert "lab: 64y x 48x int32, 2 scale(s)" in out
    assert "transcripts: 5,000 points in 3 partition(s)" in out
    assert "feature 'gene' (200 categories)" in out
    assert "cells: 4 polygons in 1 partition(s)" in out
    assert "spots: 3 circles in 1 partition(s)" in out
    assert "table: 7 x 5, annotates ['cells', 'lab']" in out
    assert "coordinate systems: aligned, chained, global, moved, same, swapped" in out
    assert "on disk:" in out


def test_info_json_on_a_repository(sd_store, tmp_path, capsys):
    repo = tmp_path / "repo"
    ds = sf.read(sd_store)
    first = ds.write(repo, format="icechunk", message="first import")
    second = sf.Dataset(images={"morphology": ds.images["morphology"]}).write(
        repo, format="icechunk", message="images again"
    )
    assert main(["info", str(repo), "--json", "--commits", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "icechunk"
    assert info["branch"] == "main" and info["branches"] == ["main"]
    assert info["snapshot"] == second
    assert [c["id"] for c in info["commits"]] == [second, first]
    assert [c["message"] for c in info["commits"]] == ["images again", "first import"]
    kinds = {(e["kind"], e["name"]): e for e in info["elements"]}
    assert kinds[("points", "transcripts")]["rows"] == 5000
    assert kinds[("shapes", "cells")]["rows"] == 4
    assert kinds[("images", "morphology")]["coordinate_systems"] == [
        "aligned",
        "chained",
        "global",
        "moved",
        "same",
        "swapped",
    ]
    assert info["bytes_on_disk"] > 0
    # the text form names the branch and the last commits
    assert main(["info", str(repo)]) == 0
    text = capsys.readouterr().out
    assert f"branch: main at snapshot {second}" in text
    assert f"{first}" in text and "first import" in text
    # an older snapshot
    assert main(["info", str(repo), "--snapshot", first, "--json"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["snapshot"] == first and old["commits"] == []


def test_convert_both_ways(oracle, sd_store, sd_expected, tmp_path, capsys):
    repo = tmp_path / "repo"
    back = tmp_path / "back.zarr"
    argv = ["convert", str(sd_store), str(repo), "--format", "icechunk", "--message", "m"]
    assert main(argv) == 0
    assert "converted 7 elements" in capsys.readouterr().out
    assert history(sf.io.location(repo))[0].message == "m"
    assert main(["convert", str(repo), str(back)]) == 0
    oracle.assert_equal(sd_expected, oracle.read(back))


def test_convert_refuses_to_clobber(sd_store, tmp_path, capsys):
    assert main(["convert", str(sd_store), str(sd_store)]) == 2
    err = capsys.readouterr().err
    assert "FormatError" in err and "already exists" in err


def test_info_on_a_bad_store_is_one_line_on_stderr(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("not a store")
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spatialflow info: FormatError:") and str(tmp_path) in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("bad", ["[1, 2]", "{nope"])
def test_bad_storage_options_are_a_usage_error(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["info", str(tmp_path), "--storage-options", bad])
    assert info.value.code == 2 and "storage-options" in capsys.readouterr().err


def test_help_lists_the_storage_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "info" in out and "convert" in out


def test_storage_commands_run_as_a_program(tmp_path):
    out = _run("info", str(tmp_path / "missing"))
    assert out.returncode == 2 and "no such directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_module_stays_light():
    """map-coords must start fast: importing the CLI loads none of the heavy libraries."""
    code = (
        "import sys, spatialflow.cli; "
        "heavy = [m for m in ('dask', 'zarr', 'anndata', 'icechunk', 'pyarrow', 'xarray') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
