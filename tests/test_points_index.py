"""The multiscale points index (sf.index_points) and viewport queries (sf.viewport_query):
levels as neuroglancer's spatial index builds them, queries equal to brute force, independence
of the input partitioning, storage in both layouts (spatialdata 0.8 as the oracle), the job
step on a real LocalCluster committed to Icechunk, and the errors."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import spatialflow as sf
from spatialflow.errors import SpatialFlowError
from spatialflow.kernels.morton import assign_levels, extend_levels, grid_levels

LIMIT = 400
N = 40_000
GENES = [f"g{i:02d}" for i in range(30)]


def _frame(n: int = N, seed: int = 1) -> pd.DataFrame:
    """Clustered points (a dense blob over a uniform background) on a 2:1 extent."""
    rng = np.random.default_rng(seed)
    k = n // 3
    x = np.concatenate([rng.uniform(0, 2000, n - k), rng.normal(1400, 120, k).clip(0, 2000)])
    y = np.concatenate([rng.uniform(0, 1000, n - k), rng.normal(300, 80, k).clip(0, 1000)])
    genes = pd.Categorical(rng.choice(GENES, n, p=np.linspace(1, 3, len(GENES)) / 60), GENES)
    return pd.DataFrame({"x": x, "y": y, "gene": genes, "cell_id": rng.integers(0, 500, n)})


def _dataset(df: pd.DataFrame, parts: int) -> sf.Dataset:
    ds = sf.Dataset()
    ds.points["tx"] = sf.Points(
        df, feature_key="gene", instance_key="cell_id", rows_per_partition=-(-len(df) // parts)
    )
    return ds


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    return _frame()


@pytest.fixture(scope="module")
def indexed(source):
    ds = _dataset(source, 7)
    el = sf.index_points(ds, "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
    out = sf.Dataset()
    out.points["tx"] = el
    return out, el.data.compute()


def _cells(df: pd.DataFrame, level: dict, desc: dict) -> np.ndarray:
    lo, size = desc["lower_bound"], level["cell_size"]
    gx, gy = level["grid_shape"]
    cx = np.clip(((df["x"] - lo[0]) // size[0]).astype(int), 0, gx - 1)
    cy = np.clip(((df["y"] - lo[1]) // size[1]).astype(int), 0, gy - 1)
    return (cy * gx + cx).to_numpy()


def test_every_point_once_and_levels_like_neuroglancer(source, indexed):
    ds, table = indexed
    idx = ds.points["tx"].index
    desc = idx.description
    # every input row exactly once, unchanged, with one level
    assert len(table) == len(source) and table.index.is_unique
    back = table.sort_index()
    pd.testing.assert_frame_equal(back[source.columns], source, check_categorical=True)
    counts = table["level"].value_counts().sort_index()
    assert counts.to_dict() == {lv["level"]: lv["count"] for lv in desc["levels"]}
    assert sum(lv["count"] for lv in desc["levels"]) == N
    # grids halve from one cell, isotropically on the 2:1 extent; the finest keeps the rest
    shapes = [tuple(lv["grid_shape"]) for lv in desc["levels"]]
    assert shapes[0] == (1, 1)
    for prev, cur, lv in zip(shapes, shapes[1:], desc["levels"][1:], strict=False):
        assert cur in ((2 * prev[0], prev[1]), (prev[0], 2 * prev[1]), (2 * prev[0], 2 * prev[1]))
        w, h = lv["cell_size"]
        assert 0.5 <= w / h <= 2.0  # cells stay close to square
    assert [(2**a, 2**b) for a, b in grid_levels(2000, 1000)[:3]] == [(1, 1), (2, 1), (4, 2)]
    assert desc["levels"][-1]["probability"] == 1.0
    assert all(lv["probability"] < 1.0 for lv in desc["levels"][:-1])
    # row order: (level, Morton) -> levels never decrease; each partition holds one level
    assert (np.diff(table["level"].to_numpy().astype(int)) >= 0).all()
    assert (idx.spatial.levels[:, 0] == idx.spatial.levels[:, 1]).all()


def test_kept_fraction_is_the_same_in_every_cell(source, indexed):
    ds, table = indexed
    desc = ds.points["tx"].index.description
    pool = np.ones(len(table), dtype=bool)
    lv_col = table["level"].to_numpy()
    for level in desc["levels"][:-1]:
        p = level["probability"]
        cells = _cells(table, level, desc)
        n_c = np.bincount(cells[pool])
        k_c = np.bincount(cells[lv_col == level["level"]], minlength=len(n_c))
        big = n_c >= 30
        assert big.sum() >= 1
        # chi-square: kept ~ Binomial(n_c, p) in every cell, with one p for the level
        chi2 = ((k_c[big] - n_c[big] * p) ** 2 / (n_c[big] * p * (1 - p))).sum()
        p_value = stats.chi2.sf(chi2, df=int(big.sum()))
        assert p_value > 1e-3, (level, chi2, big.sum())
        # the fullest cell keeps about `limit` points, no cell keeps much more
        assert abs(k_c[np.argmax(n_c)] - LIMIT) <= 5 * np.sqrt(LIMIT)
        assert k_c.max() <= LIMIT + 5 * np.sqrt(LIMIT)
        pool &= lv_col != level["level"]
    # the kernel agrees: the level of a point is its first successful draw
    probs = np.array([lv["probability"] for lv in desc["levels"]])
    h = np.random.default_rng(5).integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32)
    lv = assign_levels(h, probs)
    assert (lv >= 0).all() and (lv < len(probs)).all()

    # ... as drawn here in plain numpy: splitmix64 of (hash + (level + 1) * golden), top 53
    # bits as a fraction, compared with the level's probability; the finest keeps the rest
    def mix(z: np.ndarray) -> np.ndarray:
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    want = np.full(h.size, len(probs) - 1, dtype=np.int8)
    for level in range(len(probs) - 2, -1, -1):  # the first success wins
        z = mix(h.astype(np.uint64) + np.uint64((level + 1) * 0x9E3779B97F4A7C15 % 2**64))
        draw = (z >> np.uint64(11)).astype(np.float64) / 2.0**53
        want[draw < probs[level]] = level
    np.testing.assert_array_equal(lv, want)
    # drawn one level at a time (as the build's passes do), the levels are the same
    step = np.full(h.size, -1, dtype=np.int8)
    for k in range(1, len(probs) + 1):
        extend_levels(h, step, probs[:k], k - 1)
        np.testing.assert_array_equal(step, assign_levels(h, probs[:k]))
    assert len(np.unique(step)) == len(probs)


def test_same_output_for_one_and_seven_partitions(source, indexed):
    _, table7 = indexed
    el1 = sf.index_points(_dataset(source, 1), "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
    ds7 = indexed[0]
    pd.testing.assert_frame_equal(el1.data.compute(), table7)
    assert el1.index.description == ds7.points["tx"].index.description
    np.testing.assert_array_equal(el1.index.spatial.rows, ds7.points["tx"].index.spatial.rows)
    # the feature-first copy too: each unit (whole (feature, level) cells) in level order,
    # then input order
    f1 = el1.index.by_feature.data.to_delayed()
    f7 = ds7.points["tx"].index.by_feature.data.to_delayed()
    assert len(f1) == len(f7) > 1
    rows = _dataset(source, 1).points["tx"].data.compute().index  # the element's row order
    position = pd.Series(np.arange(len(rows)), index=rows)
    for u1, u7 in zip(dask.compute(*f1), dask.compute(*f7), strict=True):
        pd.testing.assert_frame_equal(u1, u7)
        order = pd.DataFrame({"level": u1["level"].to_numpy(), "at": position[u1.index]})
        assert len(u1) and order.equals(order.sort_values(["level", "at"]))
    assert any(f["level"].nunique() > 1 for f in dask.compute(*f1))  # some hold several
    # another seed draws other levels
    el2 = sf.index_points(_dataset(source, 3), "tx", limit=LIMIT, seed=4, row_group_rows=2_000)
    assert not el2.data.compute()["level"].sort_index().equals(table7["level"].sort_index())


def test_ranges_and_batches_do_not_change_the_output(source, indexed, tmp_path, monkeypatch):
    """Small ranges and batches (as at 10^8 points), and sparse histograms: the same rows,
    written batch by batch."""
    import spatialflow.plan.index_shuffle as shuffle
    import spatialflow.plan.points_index as build

    monkeypatch.setattr(shuffle, "RANGE_ROWS", 3_000)
    monkeypatch.setattr(shuffle, "BATCH_ROWS", 20_000)
    monkeypatch.setattr(build, "DENSE_BINS", 0)  # the sorted sparse histograms instead
    el = sf.index_points(_dataset(source, 3), "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
    assert len(el.index.batches) >= 4 and len(el.index.spatial.ranges) >= 10
    ds = sf.Dataset()
    ds.points["tx"] = el
    ds.write(tmp_path / "b.zarr")
    back = sf.read(tmp_path / "b.zarr").points["tx"]
    pd.testing.assert_frame_equal(back.data.compute(), indexed[1])
    files = list((tmp_path / "b.zarr/points/tx/points.parquet").glob("*.parquet"))
    assert len(files) == len(el.index.spatial.ranges)


def test_stored_input_read_once_gives_the_same_output(source, indexed, tmp_path):
    """An input read from a SpatialData store (rows known, one batch): its partitions are read
    once, straight into columns, and the index is the one built from memory."""
    import spatialflow.plan.points_index as build
    from spatialflow.plan.index_columns import Layout, row_group_source

    _dataset(source, 4).write(tmp_path / "in.zarr")
    stored = sf.read(tmp_path / "in.zarr")
    el = stored.points["tx"]
    layout = Layout.of(el.data._meta.assign(level=np.array([], dtype=np.uint8)))
    assert build._keeps_input(el, layout) and row_group_source(el, layout) is not None
    got = sf.index_points(stored, "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
    pd.testing.assert_frame_equal(got.data.compute(), indexed[1])
    assert got.index.description == indexed[0].points["tx"].index.description


def test_kept_input_in_many_batches_and_input_read_again(source, indexed, tmp_path, monkeypatch):
    """A stored input kept in memory is split batch after batch from the kept columns; one
    too large for the memory budget is read again for every batch: the same rows either way."""
    import spatialflow.plan.index_columns as columns
    import spatialflow.plan.index_shuffle as shuffle
    import spatialflow.plan.points_index as build

    _dataset(source, 4).write(tmp_path / "in.zarr")
    monkeypatch.setattr(shuffle, "BATCH_ROWS", 20_000)
    reads = []
    read_state = columns.read_state
    monkeypatch.setattr(build, "read_state", lambda *a: reads.append(a[1]) or read_state(*a))
    for fraction, kept in ((0.5, True), (0.0, False)):
        monkeypatch.setattr(build, "KEEP_FRACTION", fraction)
        stored = sf.read(tmp_path / "in.zarr")
        reads.clear()
        got = sf.index_points(stored, "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
        assert len(got.index.batches) >= 2
        assert sorted(reads) == (list(range(stored.points["tx"].npartitions)) if kept else [])
        pd.testing.assert_frame_equal(got.data.compute(), indexed[1])


def test_missing_float_values_stay_missing(source, tmp_path):
    """A float column with NaN keeps them as nulls in the written index (as pandas writes
    them) and reads back as NaN; columns without NaN are wrapped without a null bitmap."""
    import pyarrow.parquet as pq

    df = source.assign(qv=np.where(np.arange(len(source)) % 7 == 0, np.nan, 1.5))
    el = sf.index_points(_dataset(df, 3), "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
    out = sf.Dataset()
    out.points["tx"] = el
    out.write(tmp_path / "nan.zarr")
    files = sorted((tmp_path / "nan.zarr/points/tx/points.parquet").glob("*.parquet"))
    table = pq.ParquetDataset(files).read()
    assert table.column("qv").null_count == int(df["qv"].isna().sum()) > 0
    assert table.column("x").null_count == 0 and table.column("level").null_count == 0
    back = sf.read(tmp_path / "nan.zarr").points["tx"].data.compute().sort_index()
    pd.testing.assert_series_equal(back["qv"], df["qv"].sort_index(), check_names=False)
    pd.testing.assert_series_equal(back["x"], df["x"].sort_index(), check_names=False)


def _brute(table, box, max_level, genes):
    sel = table[
        (table["x"] >= box[0])
        & (table["x"] <= box[2])
        & (table["y"] >= box[1])
        & (table["y"] <= box[3])
        & (table["level"] <= max_level)
    ]
    return sel if genes is None else sel[sel["gene"].isin(genes)]


def _check_queries(ds, table, rng, n=12):
    n_levels = ds.points["tx"].index.n_levels
    for _ in range(n):
        x0, y0 = rng.uniform(-100, 1900), rng.uniform(-100, 900)
        box = (x0, y0, x0 + rng.uniform(5, 900), y0 + rng.uniform(5, 500))
        max_level = int(rng.integers(0, n_levels))
        genes = [None, list(rng.choice(GENES, 1)), list(rng.choice(GENES, 6))][rng.integers(3)]
        got = sf.viewport_query(
            ds,
            "tx",
            min_coordinate=box[:2],
            max_coordinate=box[2:],
            target_coordinate_system="global",
            max_level=max_level,
            genes=genes,
        ).compute()
        want = _brute(table, box, max_level, genes)
        assert "level" in got.columns
        pd.testing.assert_frame_equal(got.sort_index(), want.sort_index())


def test_viewport_query_equals_brute_force(indexed):
    ds, table = indexed
    _check_queries(ds, table, np.random.default_rng(0))
    # a small box reads few units, directly; a gene panel picks the feature-first copy
    small = sf.viewport_query(
        ds,
        "tx",
        min_coordinate=[10, 10],
        max_coordinate=[60, 60],
        target_coordinate_system="global",
    )
    assert small.plan.direct and small.plan.rows < N / 4
    panel = sf.viewport_query(
        ds,
        "tx",
        min_coordinate=[0, 0],
        max_coordinate=[2000, 1000],
        target_coordinate_system="global",
        genes=["g05"],
    )
    assert panel.plan.copy == "by_feature" and len(panel.plan.units) <= 3
    # max_points: the finest levels whose expected count fits
    capped = sf.viewport_query(
        ds,
        "tx",
        min_coordinate=[0, 0],
        max_coordinate=[2000, 1000],
        target_coordinate_system="global",
        max_points=4 * LIMIT,
    )
    got = capped.compute()
    assert 0 < len(got) <= 4 * LIMIT * 1.2 and capped.plan.max_level >= 1
    assert capped.plan.max_level < ds.points["tx"].index.n_levels - 1


def test_transformed_coordinate_system(source):
    ds = _dataset(source.iloc[:5000], 2)
    el = ds.points["tx"]
    el.transforms["um"] = sf.Scale([0.5, 0.25], axes=("x", "y"))
    idx = sf.Dataset()
    idx.points["tx"] = sf.index_points(ds, "tx", limit=200, row_group_rows=500)
    table = idx.points["tx"].data.compute()
    got = sf.viewport_query(
        idx,
        "tx",
        min_coordinate=[100, 50],
        max_coordinate=[400, 150],
        target_coordinate_system="um",
    ).compute()
    want = table[table.x.between(200, 800) & table.y.between(200, 600)]
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index())


def test_exact_plans_skip_the_row_filter(source, tmp_path):
    """A query holding whole units (a whole gene, the whole extent) reads them without the row
    filter and still returns what a brute-force filter does (points on the closed box's edge
    kept); a box a little smaller is filtered row by row; a transformed one is exact within a
    margin."""
    gene = "g07"
    ds = _dataset(source, 3)
    ds.points["tx"].transforms["um"] = sf.Scale([0.5, 0.25], axes=("x", "y"))
    out = sf.Dataset()
    out.points["tx"] = sf.index_points(ds, "tx", limit=LIMIT, seed=3, row_group_rows=2_000)
    out.write(tmp_path / "exact.zarr")
    back = sf.read(tmp_path / "exact.zarr")
    table = back.points["tx"].data.compute()
    lo = (float(table["x"].min()), float(table["y"].min()))
    hi = (float(table["x"].max()), float(table["y"].max()))
    cases = [
        ("global", lo, hi, [gene], True),  # the data's own bounds: the edge points count
        ("global", lo, hi, None, True),
        ("global", (1000.0, lo[1]), hi, [gene], False),  # cuts through the units
        ("um", (-1, -1), (1001, 251), [gene], True),
    ]
    for cs, a, b, genes, exact in cases:
        q = sf.viewport_query(
            back, "tx", min_coordinate=a, max_coordinate=b, target_coordinate_system=cs, genes=genes
        )
        assert q.plan.exact is exact and ("filter: none" in q.explain(print_=False)) is exact
        got = q.compute()
        if cs == "um":
            a, b = (a[0] * 2, a[1] * 4), (b[0] * 2, b[1] * 4)
        want = _brute(table, (*a, *b), q.plan.max_level, genes)
        assert len(want)
        pd.testing.assert_frame_equal(got.sort_index(), want.sort_index())


def test_spatialdata_layout_round_trip_and_spatialdata_reads_it(indexed, tmp_path, source):
    import spatialdata as sd

    ds, table = indexed
    ds.write(tmp_path / "s.zarr")
    # spatialdata 0.8 reads the indexed element as ordinary points with the same rows
    sdata = sd.read_zarr(tmp_path / "s.zarr")
    theirs = sdata.points["tx"].compute().sort_index()
    assert len(theirs) == N
    np.testing.assert_array_equal(theirs[["x", "y"]].to_numpy(), source[["x", "y"]].to_numpy())
    assert (theirs["gene"].astype(str).to_numpy() == source["gene"].astype(str).to_numpy()).all()
    # spatialflow reads the index back: one row group a unit, never mixing levels
    back = sf.read(tmp_path / "s.zarr")
    el = back.points["tx"]
    assert el.index is not None and el.index.by_feature is not None
    assert el.index.description == ds.points["tx"].index.description
    pd.testing.assert_frame_equal(el.data.compute(), table)
    import pyarrow.parquet as pq

    files = sorted((tmp_path / "s.zarr/points/tx/points.parquet").glob("*.parquet"))
    for f in files:
        md = pq.ParquetFile(f).metadata
        level_col = md.schema.names.index("level")
        for rg in range(md.num_row_groups):
            st = md.row_group(rg).column(level_col).statistics
            assert st.has_min_max and st.min == st.max
    _check_queries(back, table, np.random.default_rng(1), n=8)


def test_native_layout_round_trip(indexed, tmp_path):
    ds, table = indexed
    ds.write(tmp_path / "r.icechunk", format="icechunk")
    back = sf.read(tmp_path / "r.icechunk")
    el = back.points["tx"]
    assert el.index is not None and el.index.by_feature is not None
    assert el.index.description == ds.points["tx"].index.description
    pd.testing.assert_frame_equal(el.data.compute(), table)
    _check_queries(back, table, np.random.default_rng(2), n=8)


def test_job_step_builds_on_a_cluster_and_commits(source, tmp_path, cluster_client):
    from spatialflow.jobs.config import parse_config
    from spatialflow.jobs.runner import run_job

    ds = _dataset(source.iloc[:12_000], 4)
    ds.write(tmp_path / "in.icechunk", format="icechunk")
    cfg = parse_config(
        {
            "repository": str(tmp_path / "out.icechunk"),
            "inputs": {"s": {"url": str(tmp_path / "in.icechunk")}},
            "steps": [
                {"index_points": {"input": "s", "element": "tx", "limit": 300, "output": "ix"}}
            ],
        }
    )
    res = run_job(cfg, scheduler=cluster_client.scheduler.address)
    assert res.status == "committed"
    out = sf.read(tmp_path / "out.icechunk").points["ix"]
    assert out.index is not None and out.index.description["limit"] == 300
    direct = sf.index_points(ds, "tx", limit=300).data.compute()
    pd.testing.assert_frame_equal(out.data.compute(), direct)
    # on a cluster, whether to keep the input is planned with the workers' memory limits
    import spatialflow.plan.points_index as build

    workers = cluster_client.scheduler_info()["workers"].values()
    assert build._memory_bytes() == sum(w["memory_limit"] for w in workers) > 0


def test_unindexed_fallback_and_errors(indexed, source):
    ds, _ = indexed
    plain = _dataset(source, 5)
    with pytest.warns(UserWarning, match="no index"):
        q = sf.viewport_query(
            plain,
            "tx",
            min_coordinate=[0, 0],
            max_coordinate=[300, 300],
            target_coordinate_system="global",
            genes=["g01"],
        )
    got = q.compute()
    want = source[source.x.between(0, 300) & source.y.between(0, 300) & (source.gene == "g01")]
    pd.testing.assert_frame_equal(got.drop(columns="level").sort_index(), want)
    assert (got["level"] == 0).all() and len(q.plan.units) < plain.points["tx"].npartitions
    kw = dict(min_coordinate=[0, 0], max_coordinate=[10, 10], target_coordinate_system="global")
    n = ds.points["tx"].index.n_levels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bad in (n, -1):
            with pytest.raises(SpatialFlowError, match="out of range"):
                sf.viewport_query(ds, "tx", max_level=bad, **kw)
        with pytest.raises(SpatialFlowError, match="unknown gene"):
            sf.viewport_query(ds, "tx", genes=["nope"], **kw)
        with pytest.raises(SpatialFlowError, match="coordinate system"):
            sf.viewport_query(ds, "tx", **{**kw, "target_coordinate_system": "nowhere"})
        with pytest.raises(SpatialFlowError, match="no points element"):
            sf.viewport_query(ds, "missing", **kw)
        with pytest.raises(SpatialFlowError, match="limit"):
            sf.index_points(ds, "tx", limit=0)


def test_feature_first_join_keeps_input_order_for_every_column_kind():
    """``concat_units``: unit by unit, piece by piece, each piece's rows as given; numeric
    columns by the GIL-free gathers, Arrow (string) columns by one take."""
    import pyarrow as pa

    from spatialflow.plan.index_columns import Piece, concat_units

    rng = np.random.default_rng(0)
    pieces, expected = [], {u: [] for u in range(4)}
    for p in range(3):
        n = 50
        x = rng.normal(size=n)
        s = pa.array([f"p{p}r{i}" for i in range(n)])
        lens = rng.integers(0, 6, 4)
        rows = rng.choice(n, int(lens.sum()), replace=False).astype(np.int32)
        units = np.concatenate([[0], np.cumsum(lens)])
        pieces.append(Piece([x, s], rows, np.zeros(n, np.uint64), np.zeros(n, np.uint32), units))
        for u in range(4):
            expected[u] += [(x[r], f"p{p}r{r}") for r in rows[units[u] : units[u + 1]]]
    got_x, got_s = concat_units(pieces)
    want = [row for u in range(4) for row in expected[u]]
    np.testing.assert_array_equal(got_x, [w[0] for w in want])
    assert got_s.to_pylist() == [w[1] for w in want]


def _range_layout():
    """The layout of a range with a numeric, an Arrow (string) and the level column."""
    import pyarrow as pa

    from spatialflow.plan.index_columns import Layout

    meta = pd.DataFrame(
        {"x": np.array([], float), "name": pd.Series([], dtype=pd.ArrowDtype(pa.string()))}
    )
    return Layout.of(meta.assign(level=np.array([], np.uint8)))


def test_spatial_first_range_sorts_each_unit_by_key_hash_then_input_order():
    """``_assemble`` of a spatial-first range: rows joined unit by unit, then each unit
    ordered by (key, hash, input position) whatever its size (runs of equal keys longer and
    shorter than the insertion-sort cut), numeric columns permuted in place and Arrow
    columns taken in the same order."""
    import gc

    import pyarrow as pa

    from spatialflow.plan.index_columns import Piece, RangeBuffers
    from spatialflow.plan.index_shuffle import _assemble

    rng = np.random.default_rng(1)
    layout = _range_layout()
    n_units, pieces, expected = 4, [], {u: [] for u in range(4)}
    for p in range(4):
        n = 400
        unit = np.arange(n) // 100  # units partition the keys in order
        spread = np.where(unit < 2, 2, 9)  # few distinct keys (long runs), then many
        key = (unit * 10 + rng.integers(0, spread)).astype(np.uint64)
        h = rng.integers(0, 4, n).astype(np.uint64)
        x = rng.normal(size=n)
        name = pa.array([f"p{p}r{i}" for i in range(n)])
        lv = rng.integers(0, 5, n).astype(np.uint8)
        index = np.arange(n, dtype=np.int64) + 1000 * p
        rows = np.sort(rng.permutation(n)[:300]).astype(np.int32)
        rows = np.concatenate([rng.permutation(rows[unit[rows] == u]) for u in range(n_units)])
        units = np.searchsorted(unit[rows], np.arange(n_units + 1))
        pieces.append(Piece([x, name, lv, index], rows, key, h, units))
        for u in range(n_units):
            for r in rows[units[u] : units[u + 1]]:
                row = (int(key[r]), int(h[r]), len(expected[u]), x[r], f"p{p}r{r}", lv[r], index[r])
                expected[u].append(row)
    runs = np.unique([w[0] for u in expected for w in expected[u]], return_counts=True)[1]
    assert runs.max() > 64 and ((runs > 1) & (runs <= 64)).any()  # both sorts of ties
    want = [row for u in range(n_units) for row in sorted(expected[u], key=lambda t: t[:3])]
    assert any(len(expected[u]) > 64 for u in range(n_units))  # long runs of equal keys too

    def check(table: pa.Table) -> None:
        np.testing.assert_array_equal(table.column("x").to_numpy(), [w[3] for w in want])
        assert table.column("name").to_pylist() == [w[4] for w in want]
        np.testing.assert_array_equal(table.column("level").to_numpy(), [w[5] for w in want])
        np.testing.assert_array_equal(
            table.column("__null_dask_index__").to_numpy(), [w[6] for w in want]
        )

    # three rounds through one pool: the second while the first table is alive (its
    # buffers are not handed out), the third after it is gone (they are, holding the first
    # table's rows, which the permutation in place must not mix in)
    check(_assemble(layout, "s", RangeBuffers(0), None, *pieces))  # compiled, no pool
    buffers = RangeBuffers(3)
    first = _assemble(layout, "s", buffers, None, *pieces)
    address = first.column("x").chunk(0).buffers()[1].address
    second = _assemble(layout, "s", buffers, None, *pieces)
    assert second.column("x").chunk(0).buffers()[1].address != address
    check(first)
    del first
    gc.collect()  # nothing but the pool may hold the first table's buffers now
    third = _assemble(layout, "s", buffers, None, *pieces)
    assert third.column("x").chunk(0).buffers()[1].address == address
    check(second)
    check(third)


def test_feature_first_range_orders_units_of_several_levels_by_level():
    """``_assemble`` of a feature-first range: each unit's rows joined piece by piece in
    input order, then a unit holding several levels ordered by level, stably (numeric
    columns permuted in place, Arrow ones taken), units of one level left as joined."""
    import pyarrow as pa

    from spatialflow.plan.index_columns import Piece, RangeBuffers
    from spatialflow.plan.index_shuffle import _assemble

    rng = np.random.default_rng(2)
    layout = _range_layout()
    n_units, pieces, expected = 3, [], {u: [] for u in range(3)}
    for p in range(3):
        n = 300
        unit = np.arange(n) // 100
        lv = np.where(unit == 1, 4, rng.integers(0, 4, n)).astype(np.uint8)  # unit 1: one level
        x = rng.normal(size=n)
        name = pa.array([f"p{p}r{i}" for i in range(n)])
        index = np.arange(n, dtype=np.int64) + 1000 * p
        rows = rng.permutation(n)[:200].astype(np.int32)
        rows = np.concatenate([np.sort(rows[unit[rows] == u]) for u in range(n_units)])
        units = np.searchsorted(unit[rows], np.arange(n_units + 1))
        pieces.append(Piece([x, name, lv, index], rows, np.zeros(n, np.uint64), index, units))
        for u in range(n_units):
            for r in rows[units[u] : units[u + 1]]:
                expected[u].append((int(lv[r]), len(expected[u]), x[r], f"p{p}r{r}", index[r]))
    table = _assemble(layout, "f", RangeBuffers(1), None, *pieces)
    want = [row for u in range(n_units) for row in sorted(expected[u], key=lambda t: t[:2])]
    np.testing.assert_array_equal(table.column("level").to_numpy(), [w[0] for w in want])
    np.testing.assert_array_equal(table.column("x").to_numpy(), [w[2] for w in want])
    assert table.column("name").to_pylist() == [w[3] for w in want]
    np.testing.assert_array_equal(
        table.column("__null_dask_index__").to_numpy(), [w[4] for w in want]
    )
    assert [w[1] for w in want[len(expected[0]) :][: len(expected[1])]] == list(
        range(len(expected[1]))
    )  # the one-level unit as joined


def test_range_buffers_are_reused_only_when_nothing_holds_them():
    """``RangeBuffers`` hands a buffer out again only once no view, Arrow array or pandas
    frame made from it is alive, lets every buffer go after its round of ranges, and keeps
    nothing when pickled (another process)."""
    import pickle
    import weakref

    import pyarrow as pa

    from spatialflow.plan.index_columns import RangeBuffers

    def at(view: np.ndarray) -> int:  # the buffer a view lies in (holding no reference)
        return view.__array_interface__["data"][0]

    buffers = RangeBuffers(4)
    a = buffers.take(1000, np.float64)
    first = at(a)
    arrow = pa.array(a[10:20])
    frame = pd.DataFrame({"x": a}, copy=False)
    del a
    held = []  # what is handed out while the first buffer is in use (kept, so never free)
    for holder in ("arrow", "frame"):
        held.append(buffers.take(1000, np.float64))
        assert at(held[-1]) != first
        if holder == "arrow":
            del arrow
        else:
            del frame
    b = buffers.take(900, np.float64)  # a smaller request served by the freed buffer
    assert at(b) == first and b.size == 900
    assert at(buffers.take(900, np.int64)) != first  # another dtype
    del b
    big = buffers.take(200_000, np.float64)
    big_at = at(big)
    del big
    assert at(buffers.take(1000, np.float64)) == first  # the first that fits
    assert at(buffers.take(150_000, np.float64)) == big_at
    assert at(buffers.take(50_000, np.float64)) != big_at  # a far smaller one: a new one
    v = buffers.take(1000, np.float64)
    gone = weakref.ref(v.base)
    del v
    for _ in range(4):
        buffers.done()
    assert gone() is None  # the round is over: the buffers were let go
    clone = pickle.loads(pickle.dumps(buffers))
    assert clone.take(1000, np.float64).base is None  # a plain array: nothing kept
    del held


def test_range_keys_equal_the_first_pass_keys_and_hashes():
    """A spatial-first range computes its rows' keys and hashes again from their columns
    (``range_keys``): they must be the first pass's (``point_state``, ``split_keys``) for
    float64 and float32 coordinates, values on and past the extent's edges or NaN, an
    extent of zero height, and int64 and int32 indexes."""
    from spatialflow.kernels.morton import point_state, range_keys, split_keys

    rng = np.random.default_rng(4)
    n = 5000
    for dtype, lo, hi in (
        (np.float64, (-3.0, -2.0), (5.0, 7.0)),
        (np.float32, (0.0, 1.5), (9.0, 1.5)),
    ):
        x = rng.uniform(lo[0] - 1, hi[0] + 1, n).astype(dtype)
        y = rng.uniform(lo[1] - 1, hi[1] + 1, n).astype(dtype)
        x[:10], y[:10] = lo[0], hi[1]  # on the edges
        codes = rng.integers(-1, 900, n).astype(np.int16)
        x[10:20] = np.nan  # no cell of its own: cell 0, in both
        lv = rng.integers(0, 9, n).astype(np.int8)
        for idx in (  # any integer index, as read_state hashes it (int64 bits)
            rng.integers(0, 2**40, n).astype(np.int64),
            rng.integers(-(2**31), 2**31, n - 1).astype(np.int32),  # odd length, 4 bytes
        ):
            m = len(idx)
            key64 = idx.astype(np.int64).view(np.uint64)
            ix, iy, h = point_state(x[:m], y[:m], codes[:m], key64, lo, hi, 11)
            lv8, skey, _ = split_keys(ix, iy, lv[:m], codes[:m])
            key, h2 = np.empty(m, np.uint64), np.empty(m, np.uint32)
            range_keys(x[:m], y[:m], lv8, codes[:m], idx, lo, hi, 11, key, h2)
            np.testing.assert_array_equal(key, skey)
            np.testing.assert_array_equal(h2, h)


def test_point_state_hash_does_not_depend_on_the_codes_dtype():
    """Categorical codes reach ``point_state`` as they are stored (int16 for up to 32k
    categories, int32 from a frame): the draws, and so the levels, must not change."""
    from spatialflow.kernels.morton import point_state

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=1000), rng.normal(size=1000)
    codes = rng.integers(-1, 32767, 1000).astype(np.int16)  # -1: a missing category
    idx = np.arange(1000, dtype=np.uint64)
    lo, hi = (-5.0, -5.0), (5.0, 5.0)
    ref = point_state(x, y, codes.astype(np.int64), idx, lo, hi, 7)
    for dtype in (np.int16, np.int32):
        got = point_state(x, y, codes.astype(dtype), idx, lo, hi, 7)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_array_equal(a, b)
