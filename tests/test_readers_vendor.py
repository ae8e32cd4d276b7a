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

import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import xarray as xr
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
    """Strings as pandas' default str dtype (dask computes them as string[pyarrow] with NA;
    an all-missing text column is object in geopandas, string in dask)."""
    frame = frame.copy()
    for c in frame.columns:
        s = frame[c]
        if isinstance(s.dtype, pd.StringDtype) or (s.dtype == object and s.isna().all()):
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
        b = type(b)(_str_dtypes(b), geometry="geometry", crs=b.crs)
        b.attrs.update(ref.shapes[name].attrs)
        _assert_shapes_equal(a, b, f"shapes/{name}")
    for name in ref.points:
        a, b = ours.points[name], ref.points[name]
        feature = b.attrs["spatialdata_attrs"]["feature_key"]
        fa, fb = a.compute(), b.compute()
        cats_a, cats_b = set(fa[feature].cat.categories), set(fb[feature].cat.categories)
        assert cats_b <= cats_a if panel_categories else cats_a == cats_b, name
        fa, fb = _str_dtypes(fa[list(fb.columns)]), _str_dtypes(fb)
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


@pytest.fixture
def sdio_anndata_013(monkeypatch: pytest.MonkeyPatch) -> None:
    """spatialdata-io 0.7.1's cosmx() and merscope() call ``AnnData(X, dtype=...)``, a keyword
    anndata 0.13 removed: the oracle runs with X cast to that dtype first, nothing else changed."""
    import types

    import anndata
    import spatialdata_io.readers.cosmx as cosmx_mod
    import spatialdata_io.readers.merscope as merscope_mod

    def make(x: object = None, *args: object, dtype: object = None, **kw: object) -> object:
        return anndata.AnnData(x.astype(dtype) if dtype is not None else x, *args, **kw)

    monkeypatch.setattr(cosmx_mod, "AnnData", make)
    monkeypatch.setattr(merscope_mod, "anndata", types.SimpleNamespace(AnnData=make))


@pytest.fixture(scope="module")
def merscope_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("merscope")
    return sf.datasets.write_vendor_sample("merscope", path, n_transcripts=N_TX, n_cells=N_CELLS)


@pytest.fixture(scope="module")
def cosmx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cosmx")
    return sf.datasets.write_vendor_sample("cosmx", path, n_transcripts=N_TX, n_cells=N_CELLS)


@pytest.fixture(scope="module")
def visium_hd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("visium_hd")
    return sf.datasets.write_vendor_sample("visium_hd", path, n_transcripts=N_TX, n_cells=N_CELLS)


def test_merscope_matches_spatialdata_io(merscope_folder: Path, sdio_anndata_013: None) -> None:
    ds = sf.read(merscope_folder)  # guessed from detected_transcripts.csv + images/
    name = next(iter(ds.points))
    assert name.endswith("_transcripts") and isinstance(
        ds.points[name].transforms["microns"], Identity
    )
    ref = _oracle("merscope", merscope_folder)
    # stains: ours sorted, spatialdata-io's in set order (varies by run): compare in its order
    for name, img in ref.images.items():
        order = list(img["scale0"]["image"].coords["c"].values)
        el = ds.images[name]
        assert list(el.channel_names) == sorted(order)
        el.data = xr.DataTree.from_dict(
            {k: el.data[k].to_dataset().sel(c=order) for k in el.data.children}
        )
    _compare(ds, ref)


def test_merscope_csv_blocks(merscope_folder: Path) -> None:
    """Transcripts cut into many byte blocks read back as the same rows, in order."""
    one = sf.read(merscope_folder, reader="merscope")
    many = sf.read(merscope_folder, reader="merscope", blocksize=4096)
    name = next(iter(one.points))
    assert many.points[name].npartitions > 10
    a = one.points[name].data.compute()
    b = many.points[name].data.compute()
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_cosmx_matches_spatialdata_io(cosmx_folder: Path, sdio_anndata_013: None) -> None:
    """Differences by design, normalised here: the FOV affines are fitted by least squares
    (spatialdata-io: scikit-image), equal to 1e-9 px; points keep cell_ID as int64 (theirs: a
    categorical); the table's region list is sorted (theirs: set order); target categories are
    the panel (theirs: the values present in each FOV)."""
    from spatialdata.transformations import get_transformation

    from spatialflow.transforms.base import Affine

    ds = sf.read(cosmx_folder)  # guessed from *_tx_file.csv + *_fov_positions_file.csv
    ref = _oracle("cosmx", cosmx_folder)
    assert sorted(ds.points) == ["1_points", "2_points", "3_points", "4_points"]
    for name, el in ds.items():
        if name == "table":
            continue
        mic = el.transforms["microns"].matrix
        np.testing.assert_allclose(mic[:2, :2], np.eye(2) * 0.120280945, atol=1e-9)
        for cs, t in get_transformation(ref[name], get_all=True).items():
            if type(t).__name__ == "Affine":
                m = t.to_affine_matrix(("x", "y"), ("x", "y"))
                np.testing.assert_allclose(el.transforms[cs].matrix, m, rtol=0, atol=1e-9)
                el.transforms[cs] = Affine(m, ("x", "y"), ("x", "y"))
    attrs = ref.tables["table"].uns["spatialdata_attrs"]
    attrs["region"] = sorted(attrs["region"])
    for name in ref.points:
        ref.points[name]["cell_ID"] = ref.points[name]["cell_ID"].astype("int64")
    _compare(ds, ref, panel_categories=True)


def test_cosmx_points_across_blocks(cosmx_folder: Path) -> None:
    """Small CSV blocks: each FOV reads only the blocks that hold it, and gets all its rows."""
    from spatialflow.io.readers._vendor import csv_blocks, csv_header

    ds = sf.read(cosmx_folder, reader="cosmx", blocksize=2048)
    file = next(cosmx_folder.glob("*_tx_file.csv"))
    n_blocks = len(csv_blocks(file, csv_header(file), 2048))
    tx = pd.read_csv(file)
    parts = [ds.points[f"{fov}_points"].npartitions for fov in (1, 2, 3, 4)]
    assert n_blocks > 8 and sum(parts) <= n_blocks + 3  # a block is read for its FOVs only
    for fov in (1, 2, 3, 4):
        pts = ds.points[f"{fov}_points"]
        got = pts.data.compute()
        want = tx[tx["fov"] == fov]
        np.testing.assert_array_equal(got["x"].to_numpy(), want["x_local_px"].to_numpy())
        assert list(got["target"].astype(str)) == list(want["target"])


def test_visium_hd_matches_spatialdata_io(visium_hd_folder: Path) -> None:
    ds = sf.read(visium_hd_folder)  # guessed from binned_outputs/square_*um/
    assert "synthetic_visium_hd_cell_segmentations" in ds.shapes  # segmented_outputs
    shapes = ds.shapes["synthetic_visium_hd_square_008um"]
    assert isinstance(shapes.transforms["microns"], Scale)
    assert shapes.partition_bounds is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import spatialdata_io

        ref = spatialdata_io.visium_hd(visium_hd_folder, load_segmentations_only=False)
    _compare(ds, ref)


def test_visium_hd_circles_and_partitions(visium_hd_folder: Path) -> None:
    ds = sf.read(
        visium_hd_folder,
        reader="visium_hd",
        bins_as_squares=False,
        bins_per_partition=100,
        bin_size=2,
    )
    assert sorted(ds.tables) == ["cell_segmentations", "square_002um"]
    circles = ds.shapes["synthetic_visium_hd_square_002um"]
    assert circles.npartitions > 5
    got = circles.data.compute()
    table = ds.tables["square_002um"].data
    np.testing.assert_array_equal(got.index.to_numpy(), np.arange(table.n_obs))
    np.testing.assert_array_equal(
        shapely.get_coordinates(got.geometry.values), table.obsm["spatial"]
    )
    assert np.allclose(got["radius"], 1.0 / 0.2737)


def test_aggregate_read_xenium_equals_spatialdata(
    xenium_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transcripts read from a Xenium folder carry a column source over the parquet row
    groups (the fast path of aggregation); counts per cell equal spatialdata's aggregate on
    spatialdata-io's object (variables in panel order there, first appearance in theirs)."""
    import spatialdata as sd

    ds = sf.read(xenium_folder, reader="xenium")
    pts = ds.points["transcripts"]
    assert pts.column_source is not None and pts.column_source.npartitions == pts.npartitions
    cols = pts.column_source.read(0, ["x", "y", "feature_name"])
    part = pts.data.get_partition(0).compute()
    np.testing.assert_array_equal(cols["x"], part["x"].to_numpy())
    np.testing.assert_array_equal(cols["feature_name"], part["feature_name"].cat.codes.to_numpy())
    from spatialflow.io.columns import ParquetRowGroups

    reads: list[int] = []
    original = ParquetRowGroups.read_many

    def counted(self: ParquetRowGroups, ks: list[int], columns: list[str]) -> dict:
        reads.extend(ks)
        return original(self, ks, columns)

    monkeypatch.setattr(ParquetRowGroups, "read_many", counted)
    with dask.config.set(scheduler="threads"):
        lazy = sf.aggregate(ds, "transcripts", "cell_boundaries", value_key="feature_name")
        ours = lazy.compute()
    assert sorted(set(reads)) == list(range(pts.npartitions))  # every row group via the source
    ref = _oracle("xenium", xenium_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sd.aggregate(
            values="transcripts",
            by="cell_boundaries",
            values_sdata=ref,
            by_sdata=ref,
            value_key="feature_name",
            agg_func="count",
            target_coordinate_system="global",
        )["table"]
    assert list(ours.obs_names) == list(theirs.obs_names)
    assert set(ours.var_names) == set(theirs.var_names)
    a = ours[:, list(theirs.var_names)].X
    np.testing.assert_array_equal(np.asarray(a.todense()), np.asarray(theirs.X.todense()))
    assert int(a.sum()) > N_TX // 2  # most transcripts lie in cells


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


def _ms_truncated_csv(p: Path) -> None:
    f = p / "detected_transcripts.csv"
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])  # cut in the middle of a line


def _ms_missing(p: Path) -> None:
    (p / "cell_metadata.csv").unlink()


def _cx_renamed(p: Path) -> None:
    f = next(p.glob("*_tx_file.csv"))
    pd.read_csv(f).rename(columns={"target": "gene"}).to_csv(f, index=False)


def _cx_missing(p: Path) -> None:
    next(p.glob("*_fov_positions_file.csv")).unlink()


def _cx_pixel(p: Path) -> None:
    f = next(p.glob("*_fov_positions_file.csv"))
    t = pd.read_csv(f)
    t.loc[0, "x_global_mm"] *= 1.5
    t.to_csv(f, index=False)


def _vh_pixel(p: Path) -> None:
    f = p / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    sf_ = json.loads(f.read_text())
    sf_["microns_per_pixel"] = 0.5
    f.write_text(json.dumps(sf_))


def _vh_truncated(p: Path) -> None:
    f = p / "binned_outputs" / "square_016um" / "filtered_feature_bc_matrix.h5"
    f.write_bytes(f.read_bytes()[:1000])


def _vh_columns(p: Path) -> None:
    f = p / "binned_outputs" / "square_002um" / "spatial" / "tissue_positions.parquet"
    _rewrite(f, lambda t: t.rename(columns={"pxl_row_in_fullres": "row_px"}))


@pytest.mark.parametrize(
    ("kind", "damage", "file", "words"),
    [
        ("merscope", _ms_truncated_csv, "detected_transcripts.csv", "truncated"),
        ("merscope", _ms_missing, "cell_metadata.csv", "missing file"),
        ("cosmx", _cx_renamed, "_tx_file.csv", "missing column"),
        ("cosmx", _cx_missing, "_fov_positions_file.csv", "missing file"),
        ("cosmx", _cx_pixel, "_fov_positions_file.csv", "pixel size"),
        ("visium_hd", _vh_pixel, "scalefactors_json.json", "pixel size"),
        ("visium_hd", _vh_truncated, "filtered_feature_bc_matrix.h5", "truncated"),
        ("visium_hd", _vh_columns, "tissue_positions.parquet", "columns must be"),
    ],
)
def test_malformed_vendor_folders(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    kind: str,
    damage: object,
    file: str,
    words: str,
) -> None:
    import icechunk

    from spatialflow.io.ingest import ingest

    bad = _fresh(tmp_path, request.getfixturevalue(f"{kind}_folder"))
    damage(bad)
    repo_path = tmp_path / "target.icechunk"
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(repo_path)))
    before = [s.id for s in repo.ancestry(branch="main")]
    with pytest.raises(FormatError) as info:
        ingest(bad, repo_path, reader=kind)
    msg = str(info.value)
    assert file in msg and words in msg, msg
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(repo_path)))
    assert [s.id for s in repo.ancestry(branch="main")] == before
