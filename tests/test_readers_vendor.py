"""Vendor readers against spatialdata-io 0.7.1 on generated folders, ingest, malformed folders.

Each generated folder is read by spatialdata-io (the oracle) and by spatialflow; every element
must be equal. Two differences are by design and normalised here (see the readers' docstrings):
spatialflow's feature categories come from the panel in the panel's order (spatialdata-io's are
in order of first appearance: the same set, the same values), and the non-coordinate columns of
points keep the file's order (spatialdata-io orders them by a Python set). spatialflow's extra
``microns`` coordinate system is checked on its own.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
from conftest import (
    _assert_raster_equal,
    _assert_shapes_equal,
    _assert_table_equal,
    _assert_transforms_equal,
)

import spatialflow as sf
from spatialflow.errors import FormatError, SpatialFlowError
from spatialflow.transforms.base import Identity, Scale

N_TX, N_CELLS = 4000, 40


@pytest.fixture(scope="module", params=["1", "2"])
def xenium_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(f"xenium_v{request.param}")
    return sf.datasets.write_vendor_sample(
        "xenium", path, n_transcripts=N_TX, n_cells=N_CELLS, version=request.param
    )


def _oracle(kind: str, path: Path) -> object:
    import spatialdata_io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(spatialdata_io, kind)(path)


def _str_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Strings as pandas' default str dtype (dask computes them as string[pyarrow] with NA)."""
    frame = frame.copy()
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.StringDtype):
            frame[c] = frame[c].astype("str")
    if isinstance(frame.index.dtype, pd.StringDtype):
        frame.index = frame.index.astype("str")
    return frame


def _compare(ds: sf.Dataset, ref: object, *, panel_categories: bool = False) -> None:
    """Every element equal. ``panel_categories``: our categories are the whole panel, the
    oracle's only the values present (a subset)."""
    for _, el in ds.items():
        el.transforms.pop("microns", None)
    ours = ds.to_spatialdata()
    for kind in ("images", "labels", "points", "shapes", "tables"):
        assert sorted(getattr(ours, kind)) == sorted(getattr(ref, kind)), kind
    for name in ref.images:
        _assert_raster_equal(ours.images[name], ref.images[name], f"images/{name}")
    for name in ref.labels:
        _assert_raster_equal(ours.labels[name], ref.labels[name], f"labels/{name}")
    for name in ref.tables:
        _assert_table_equal(ours.tables[name], ref.tables[name], f"tables/{name}")
    for name in ref.shapes:
        a, b = ours.shapes[name], ref.shapes[name]
        a = type(a)(_str_dtypes(a), geometry="geometry", crs=a.crs)
        a.attrs.update(ours.shapes[name].attrs)
        _assert_shapes_equal(a, b, f"shapes/{name}")
    for name in ref.points:
        a, b = ours.points[name], ref.points[name]
        feature = b.attrs["spatialdata_attrs"]["feature_key"]
        fa, fb = a.compute(), b.compute()
        cats_a, cats_b = set(fa[feature].cat.categories), set(fb[feature].cat.categories)
        assert cats_b <= cats_a if panel_categories else cats_a == cats_b, name
        fa = fa[list(fb.columns)]
        for f in (fa, fb):
            f[feature] = f[feature].astype(str)
        pd.testing.assert_frame_equal(fa, fb, check_exact=True, obj=f"points/{name}")
        _assert_transforms_equal(a, b, f"points/{name}")


def test_xenium_matches_spatialdata_io(xenium_folder: Path) -> None:
    ds = sf.read(xenium_folder)  # guessed from experiment.xenium
    ps = json.loads((xenium_folder / "experiment.xenium").read_text())["pixel_size"]
    pts = ds.points["transcripts"]
    assert isinstance(pts.transforms["microns"], Identity)
    mic = ds.images["morphology_focus"].transforms["microns"]
    assert isinstance(mic, Scale) and np.allclose(mic.scale, [ps, ps])
    # partitions are the parquet row groups, bounded by their statistics
    assert pts.npartitions == pq.ParquetFile(xenium_folder / "transcripts.parquet").num_row_groups
    assert pts.partition_bounds is not None
    _compare(ds, _oracle("xenium", xenium_folder))


def test_boundaries_across_row_groups(tmp_path: Path) -> None:
    """Polygons that straddle row groups come out whole, each once."""
    folder = sf.datasets.write_vendor_sample(
        "xenium", tmp_path / "x", n_transcripts=500, n_cells=30
    )
    f = folder / "cell_boundaries.parquet"
    t = pq.read_table(f)
    pq.write_table(t, f, row_group_size=7)  # vertex runs cut at arbitrary rows
    ours = sf.read(folder, reader="xenium").shapes["cell_boundaries"]
    assert ours.npartitions > 10
    got = ours.data.compute()
    ref = _oracle("xenium", folder).shapes["cell_boundaries"]
    assert list(got.index) == list(ref.index)
    assert shapely.equals_exact(got.geometry.values, ref.geometry.values, tolerance=0).all()


# --- ingest -------------------------------------------------------------------------------------
def test_cli_ingest_one_commit(tmp_path: Path) -> None:
    from spatialflow.cli import main

    folder = sf.datasets.write_vendor_sample(
        "xenium", tmp_path / "x", n_transcripts=N_TX, n_cells=N_CELLS
    )
    repo = tmp_path / "repo.icechunk"
    assert main(["ingest", str(folder), str(repo), "--reader", "xenium"]) == 0
    back = sf.read(repo)
    src = sf.read(folder)
    assert sorted(n for n, _ in back.items()) == sorted(n for n, _ in src.items())
    a = back.points["transcripts"].data.compute().sort_index()
    b = src.points["transcripts"].data.compute().sort_index()
    assert len(a) == N_TX
    np.testing.assert_array_equal(a["x"].to_numpy(), b["x"].to_numpy())
    assert list(a["feature_name"].astype(str)) == list(b["feature_name"].astype(str))
    assert back.points["transcripts"].partition_bounds is not None
    np.testing.assert_array_equal(
        back.tables["table"].data.X.toarray(), src.tables["table"].data.X.toarray()
    )
    import icechunk

    r = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo)))
    snaps = list(r.ancestry(branch="main"))
    assert len(snaps) == 2 and snaps[0].metadata["ingest"]["reader"] == "xenium"


@pytest.mark.slow
def test_job_step_ingest(tmp_path: Path, cluster_client: object) -> None:
    from spatialflow.jobs.config import parse_config
    from spatialflow.jobs.runner import run_job

    folder = sf.datasets.write_vendor_sample(
        "xenium", tmp_path / "x", n_transcripts=800, n_cells=20
    )
    cfg = parse_config(
        {
            "repository": str(tmp_path / "out.icechunk"),
            "inputs": {"run": {"url": str(folder), "reader": "xenium"}},
            "steps": [{"ingest": {"input": "run", "prefix": "s1_"}}],
            "commit": {"message": "ingest run"},
        },
        base_dir=tmp_path,
    )
    res = run_job(cfg, scheduler=cluster_client.scheduler.address)
    assert res.status == "committed"
    back = sf.read(tmp_path / "out.icechunk")
    assert "s1_transcripts" in back.points and "s1_table" in back.tables
    assert len(back.points["s1_transcripts"].data) == 800


# --- malformed folders --------------------------------------------------------------------------
def _fresh(tmp_path: Path, src: Path) -> Path:
    dst = tmp_path / "bad"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sf.datasets.write_vendor_sample(
        "xenium", tmp_path_factory.mktemp("good"), n_transcripts=600, n_cells=16
    )


def _rewrite(file: Path, fn: object) -> None:
    t = pq.read_table(file).to_pandas()
    fn(t).to_parquet(file, index=False)


def _missing(p: Path) -> None:
    (p / "cells.parquet").unlink()


def _renamed(p: Path) -> None:
    _rewrite(p / "transcripts.parquet", lambda t: t.rename(columns={"feature_name": "gene"}))


def _truncated(p: Path) -> None:
    f = p / "transcripts.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _pixel(p: Path) -> None:
    f = p / "experiment.xenium"
    specs = json.loads(f.read_text())
    specs["pixel_size"] = 0.5
    f.write_text(json.dumps(specs))


def _noncontiguous(p: Path) -> None:
    def move(t: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([t.iloc[1:], t.iloc[:1]], ignore_index=True)  # a vertex of cell 0 last

    _rewrite(p / "cell_boundaries.parquet", move)


@pytest.mark.parametrize(
    ("damage", "file", "words"),
    [
        (_missing, "cells.parquet", "missing file"),
        (_renamed, "transcripts.parquet", "missing column"),
        (_truncated, "transcripts.parquet", "truncated"),
        (_pixel, "morphology_focus_0000.ome.tif", "pixel size"),
        (_noncontiguous, "cell_boundaries.parquet", "not contiguous"),
    ],
)
def test_malformed_folder_writes_nothing(
    tmp_path: Path, good: Path, damage: object, file: str, words: str
) -> None:
    import icechunk

    from spatialflow.io.ingest import ingest

    bad = _fresh(tmp_path, good)
    damage(bad)
    repo_path = tmp_path / "target.icechunk"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(repo_path)))
    before = [s.id for s in repo.ancestry(branch="main")]
    with pytest.raises(SpatialFlowError) as info:
        ingest(bad, repo_path, reader="xenium")
    assert isinstance(info.value, FormatError)
    msg = str(info.value)
    assert file in msg and words in msg, msg
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo_path)))
    assert [s.id for s in repo.ancestry(branch="main")] == before
