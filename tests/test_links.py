"""Element-table links (ds.links, sf.annotate), joins and get_values against spatialdata 0.8, and
lazy links to external files (sf.link) through both storage layouts."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import anndata as ad
import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata
from dask.callbacks import Callback
from spatialdata import get_values as sd_get_values
from spatialdata import join_spatialelement_table

import spatialflow as sf
from spatialflow.elements.linked import is_linked, is_materialized
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.ops.links import link_rows
from spatialflow.transforms.base import Scale

HOWS = ["left", "left_exclusive", "inner", "right", "right_exclusive"]
SD_MATCH = {"no": "no", "element": "left", "table": "right"}


# --- random data ------------------------------------------------------------------------------
def random_ds(seed: int, n_shapes: int = 30) -> sf.Dataset:
    """Labels, shapes (ids 0..n-1) and one table annotating both, rows shuffled; some table ids
    are absent from the labels, some instances of both have no row."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((96, 96), dtype=np.int32)
    lab_ids = rng.choice(np.arange(1, 40), 14, replace=False)
    for i in lab_ids[:10]:  # 4 ids of the table are not drawn
        y, x = rng.integers(0, 88, 2)
        lab[y : y + 8, x : x + 8] = i
    lab[0:4, 0:4] = 77  # an instance no row annotates
    boxes = [shapely.box(x, y, x + 4, y + 3) for x, y in rng.uniform(0, 90, (n_shapes, 2))]
    gdf = gpd.GeoDataFrame({"area_": [b.area for b in boxes]}, geometry=boxes)
    sh_ids = rng.choice(np.arange(n_shapes), n_shapes * 2 // 3, replace=False)
    n_rows = len(lab_ids) + len(sh_ids)
    obs = pd.DataFrame(
        {
            "region": pd.Categorical(
                ["cell_labels"] * len(lab_ids) + ["cell_shapes"] * len(sh_ids)
            ),
            "instance": np.r_[lab_ids, sh_ids].astype(np.int64),
            "score": rng.normal(size=n_rows),
            "kind": pd.Categorical(rng.choice(["a", "b", "c"], n_rows)),
        }
    )
    obs = obs.iloc[rng.permutation(n_rows)]
    obs.index = [f"row{i}" for i in range(n_rows)]
    adata = ad.AnnData(
        X=rng.poisson(2.0, (n_rows, 5)).astype(np.float32),
        obs=obs,
        var=pd.DataFrame(index=[f"gene{i}" for i in range(5)]),
        obsm={"spatial": rng.normal(size=(n_rows, 2))},
        layers={"raw": rng.poisson(3.0, (n_rows, 5)).astype(np.float32)},
    )
    return sf.Dataset(
        labels={"cell_labels": Labels(lab, chunks=(48, 48))},
        shapes={"cell_shapes": Shapes(gdf, spatial_sort=False)},
        tables={
            "table": Table(
                adata,
                region=["cell_labels", "cell_shapes"],
                region_key="region",
                instance_key="instance",
            )
        },
    )


def _same_table(got, expected) -> None:
    assert (got is None) == (expected is None)
    if got is None:
        return
    assert list(got.obs_names) == list(expected.obs_names)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    np.testing.assert_array_equal(np.asarray(got.X), np.asarray(expected.X))
    assert got.uns["spatialdata_attrs"] == expected.uns["spatialdata_attrs"]


def _same_element(got, expected) -> None:
    assert (got is None) == (expected is None), (got, expected)
    if got is None:
        return
    if isinstance(got, Labels):
        exp = expected["scale0"].image.data if hasattr(expected, "children") else expected.data
        np.testing.assert_array_equal(got.scale(0).data.compute(), np.asarray(exp))
        return
    frame = got.data.compute()
    assert list(frame.index) == list(expected.index)
    if isinstance(got, Shapes):
        assert all(shapely.equals(frame.geometry.values, expected.geometry.values))


# --- joins and get_values: spatialdata 0.8 is the oracle ---------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("how", HOWS)
def test_join_equals_spatialdata(seed, how):
    ds = random_ds(seed)
    sdata = ds.to_spatialdata()
    names = ["cell_shapes", "cell_labels"]
    for match in ["no", "element", "table"]:
        for filt in [None, True] if how in ("inner", "right") else [None]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                els, table = sf.join(
                    ds, names, "table", how=how, match_rows=match, filter_label_pixels=filt
                )
                sd_els, sd_table = join_spatialelement_table(
                    sdata=sdata,
                    spatial_element_names=names,
                    table_name="table",
                    how=how,
                    match_rows=SD_MATCH[match],
                    filter_label_pixels=filt,
                )
            assert list(els) == list(sd_els)
            _same_table(table, sd_table)
            for n in names:
                _same_element(els[n], sd_els[n])
            if els["cell_shapes"] is not None and how != "left":
                assert els["cell_shapes"].data.npartitions >= 1  # still a lazy collection
                assert hasattr(els["cell_shapes"].data, "dask")


def test_join_elements_stay_lazy_and_warn_like_spatialdata():
    ds = random_ds(3)
    with pytest.warns(UserWarning, match="pixels are not filtered"):
        els, _ = sf.join(ds, ["cell_labels", "cell_shapes"], "table", how="inner")
    assert isinstance(els["cell_labels"], Labels)
    shapes = els["cell_shapes"]
    assert isinstance(shapes, Shapes) and not isinstance(shapes.data, gpd.GeoDataFrame)


@pytest.mark.parametrize("seed", [0, 2])
def test_get_values_equals_spatialdata(seed):
    ds = random_ds(seed)
    sdata = ds.to_spatialdata()
    cases = [
        ("cell_shapes", "score", "table", {}),
        ("cell_labels", "score", "table", {}),
        ("cell_shapes", ["gene1", "gene3"], "table", {}),
        ("cell_labels", ["gene0", "gene4"], "table", {"table_layer": "raw"}),
        ("cell_shapes", "spatial", "table", {}),
        ("cell_labels", "kind", "table", {}),
        ("cell_shapes", "area_", None, {}),
    ]
    for element, key, table, kw in cases:
        got = sf.get_values(ds, element, key, table_name=table, **kw)
        expected = sd_get_values(key, sdata=sdata, element_name=element, table_name=table, **kw)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    raw = sf.get_values(ds, "cell_shapes", "spatial", table_name="table", return_obsm_as_is=True)
    exp = sd_get_values(
        "spatial",
        sdata=sdata,
        element_name="cell_shapes",
        table_name="table",
        return_obsm_as_is=True,
    )
    np.testing.assert_array_equal(raw, exp)


def test_links_both_ways_and_annotate_methods():
    ds = random_ds(4)
    rng = np.random.default_rng(4)
    pts = pd.DataFrame({"x": rng.uniform(0, 90, 500), "y": rng.uniform(0, 90, 500)})
    pts["cell"] = rng.integers(0, 30, 500)
    ds.points["spots"] = Points(pts, rows_per_partition=100)
    other = ad.AnnData(
        obs=pd.DataFrame(
            {"cell": np.arange(30), "label": np.arange(30) % 7}, index=[f"c{i}" for i in range(30)]
        )
    )
    ds.tables["cell_meta"] = Table(other)
    assert ds.links.tables_of("cell_shapes") == ["table"]
    sf.annotate(ds, "cell_shapes", "cell_meta", method="index", table_key="cell")
    sf.annotate(ds, "spots", "cell_meta", method="cell")  # a column on both sides
    assert ds.links.tables_of("cell_shapes") == ["table", "cell_meta"]
    assert ds.links.elements_of("table") == ["cell_labels", "cell_shapes"]
    assert ds.links.elements_of("cell_meta") == ["cell_shapes", "spots"]
    assert ds.links.get("cell_meta", "spots").method == "column"
    assert "annotate" in repr(ds.links) or "cell_meta -> spots" in repr(ds)
    # one table row annotates instances of two elements (a shape by index, spots by column);
    # matched to the element, the table has one row per spot, aligned with the spots
    els, table = sf.join(ds, ["spots"], "cell_meta", how="inner", match_rows="element")
    spots = els["spots"].data.compute()
    assert len(spots) == 500 and table.n_obs == 500
    np.testing.assert_array_equal(table.obs["cell"].to_numpy(), spots["cell"].to_numpy())
    _, table = sf.join(ds, ["spots"], "cell_meta", how="inner")
    assert list(table.obs_names) == [f"c{i}" for i in range(30) if i in set(pts["cell"])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, left = sf.join(ds, ["cell_shapes"], "cell_meta", how="left", match_rows="element")
    shape_ids = ds.shapes["cell_shapes"].data.compute().index
    assert list(left.obs["cell"]) == [i for i in shape_ids if i < 30]


# --- sjoin links ------------------------------------------------------------------------------
def test_sjoin_link_pairs_equal_geopandas(tmp_path, cluster_client):
    """The spots are a lazily linked Parquet file read by the worker processes."""
    rng = np.random.default_rng(7)
    n_spots = 3000
    spots = pd.DataFrame({"x": rng.uniform(0, 200, n_spots), "y": rng.uniform(0, 200, n_spots)})
    polys = [
        shapely.Point(x, y).buffer(r, quad_segs=4)
        for (x, y), r in zip(rng.uniform(0, 100, (60, 2)), rng.uniform(2, 8, 60), strict=True)
    ]
    cells = gpd.GeoDataFrame({"n": np.arange(60)}, geometry=polys)
    cells.index = cells.index + 1000
    spots_table = ad.AnnData(
        obs=pd.DataFrame(
            {"region": pd.Categorical(["spots"] * n_spots), "spot": np.arange(n_spots)},
            index=[f"s{i}" for i in range(n_spots)],
        )
    )
    spots.to_parquet(tmp_path / "spots.parquet", row_group_size=500)
    ds = sf.Dataset(
        shapes={
            "cells": Shapes(cells, rows_per_partition=16, transforms={"global": Scale([2.0, 2.0])})
        }
    )
    spots_el = sf.link(
        ds,
        "spots",
        tmp_path / "spots.parquet",
        kind="points",
    )
    ds.tables["spots_table"] = Table(
        spots_table, region="spots", region_key="region", instance_key="spot"
    )
    lk = sf.annotate(ds, "cells", "spots_table", method="sjoin", predicate="within")
    assert lk.via == "spots" and ds.links.tables_of("cells") == ["spots_table"]
    lr = link_rows(ds, lk)
    got = set(zip(spots_table.obs["spot"].to_numpy()[lr.rows], lr.keys.to_numpy(), strict=True))
    scaled = cells.copy()
    scaled.geometry = cells.geometry.scale(2.0, 2.0, origin=(0, 0))
    spots_gdf = gpd.GeoDataFrame(geometry=gpd.points_from_xy(spots.x, spots.y))
    oracle = gpd.sjoin(spots_gdf, scaled, predicate="within")
    expected = set(zip(oracle.index, oracle["index_right"], strict=True))
    assert got == expected and len(got) > 100
    assert spots_el.npartitions == 6  # one partition per row group, joined in parallel
    assert len(ds.links._cache) == 1  # evaluated once, cached
    np.testing.assert_array_equal(link_rows(ds, lk).rows, lr.rows)
    assert len(ds.links._cache) == 1
    _, table = sf.join(ds, "cells", "spots_table", how="inner")
    assert table.n_obs == len(expected)


# --- stores: spatialdata 0.8 reads them, spatialflow reads links back --------------------------
def _external_files(tmp: Path, n_points: int = 2000) -> dict[str, Path]:
    import tifffile

    rng = np.random.default_rng(11)
    files = {}
    pts = pd.DataFrame(
        {
            "gx": rng.uniform(0, 100, n_points),
            "gy": rng.uniform(0, 100, n_points),
            "gene": rng.choice(["A", "B", "C", "D"], n_points),
        }
    )
    files["csv"] = tmp / "transcripts.csv"
    pts.to_csv(files["csv"], index=False)
    files["parquet"] = tmp / "transcripts.parquet"
    pts.rename(columns={"gx": "x", "gy": "y"}).to_parquet(files["parquet"])
    cells = gpd.GeoDataFrame(
        {"n": np.arange(25)},
        geometry=[shapely.box(x, y, x + 9, y + 9) for x, y in rng.uniform(0, 90, (25, 2))],
    )
    files["geoparquet"] = tmp / "cells.parquet"
    cells.to_parquet(files["geoparquet"])
    files["tiff"] = tmp / "image.ome.tif"
    image = rng.integers(0, 4000, (2, 200, 160), dtype=np.uint16)
    tifffile.imwrite(files["tiff"], image, ome=True, metadata={"axes": "CYX"}, tile=(64, 64))
    table = ad.AnnData(
        X=rng.poisson(1.0, (25, 3)).astype(np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["cells"] * 25), "cell": np.arange(25)},
            index=[f"c{i}" for i in range(25)],
        ),
    )
    files["h5ad"] = tmp / "cells.h5ad"
    table.write_h5ad(files["h5ad"])
    return files | {"_pts": pts, "_cells": cells, "_image": image, "_table": table}  # type: ignore[dict-item]


def _linked_ds(files: dict) -> sf.Dataset:
    ds = random_ds(5)
    sf.link(
        ds,
        "transcripts",
        files["csv"],
        kind="points",
        x="gx",
        y="gy",
        feature_key="gene",
        blocksize=20_000,
    )
    sf.link(ds, "transcripts_pq", files["parquet"], kind="points")
    sf.link(
        ds, "cells", files["geoparquet"], kind="shapes", transforms={"global": Scale([0.5, 0.5])}
    )
    sf.link(ds, "image", files["tiff"], kind="image", chunks=(1, 64, 64))
    sf.link(
        ds,
        "cells_table",
        files["h5ad"],
        kind="table",
        region="cells",
        region_key="region",
        instance_key="cell",
    )
    sf.annotate(ds, "transcripts_pq", "cells_table", method="sjoin", via="cells")
    with pytest.raises(sf.ValidationError, match="CSV file, whose rows have no global index"):
        sf.annotate(ds, "transcripts", "cells_table", method="sjoin", via="cells")
    sf.annotate(ds, "cell_shapes", "cells_table", method="index", table_key="cell")
    return ds


def _check_linked_data(ds: sf.Dataset, files: dict) -> None:
    pts = ds.points["transcripts"].data.compute()
    np.testing.assert_allclose(pts["x"].to_numpy(), files["_pts"]["gx"].to_numpy())
    assert list(pts["gene"].cat.categories) == ["A", "B", "C", "D"]
    assert ds.points["transcripts"].npartitions > 1
    cells = ds.shapes["cells"].data.compute()
    assert all(shapely.equals(cells.geometry.values, files["_cells"].geometry.values))
    assert ds.shapes["cells"].transforms["global"] == Scale([0.5, 0.5])
    np.testing.assert_array_equal(ds.images["image"].scale(0).data.compute(), files["_image"])
    table = ds.tables["cells_table"]
    np.testing.assert_array_equal(table.data.X, files["_table"].X)
    assert table.region == ["cells"] and table.instance_key == "cell"


@pytest.mark.parametrize("layout", ["spatialdata", "icechunk"])
def test_store_with_links_round_trips(tmp_path, layout):
    files = _external_files(tmp_path)
    ds = _linked_ds(files)
    text = repr(ds)
    assert text.count("[lazy link]") == 5
    heavy = ("transcripts", "transcripts_pq", "cells", "image")
    assert not any(is_materialized(ds[n]) for n in heavy)  # nothing read (annotate checked
    assert is_materialized(ds["cells_table"])  # the table's keys, so it opened the table)
    explicit = ds.links.explicit()
    store = tmp_path / f"store.{layout}"
    ds.write(store, format=layout)
    assert not any(is_materialized(ds[n]) for n in heavy)
    if layout == "spatialdata":
        assert not (store / "points").exists() and not (store / "images").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdata = spatialdata.read_zarr(store)  # linked elements simply absent there
        assert set(sdata.tables) == {"table"} and set(sdata.shapes) == {"cell_shapes"}
        assert "spatialflow_links" in sdata.attrs
        again = tmp_path / "rewritten.zarr"
        sdata.write(again)  # spatialdata's own round trip keeps the attribute
        store = again
    back = sf.read(store)
    assert set(back.links.explicit()) == set(explicit)
    for name in ("transcripts", "transcripts_pq", "cells", "image", "cells_table"):
        assert is_linked(back[name]) and not is_materialized(back[name])
    assert back.links.tables_of("cells") == ["cells_table"]
    assert back.links.elements_of("cells_table") == ["cells", "transcripts_pq", "cell_shapes"]
    _check_linked_data(back, files)
    # the categories found on first use are recorded, so a rewrite no longer needs that pass
    assert back.points["transcripts"].source.options["categories"] == ["A", "B", "C", "D"]


def test_materialize_writes_the_data(tmp_path):
    files = _external_files(tmp_path, n_points=500)
    ds = sf.Dataset()
    sf.link(ds, "pts", files["parquet"], kind="points")
    sf.link(ds, "cells", files["geoparquet"], kind="shapes")
    store = tmp_path / "mat.zarr"
    ds.write(store, materialize=True)
    back = sf.read(store)
    assert not is_linked(back["pts"]) and not is_linked(back["cells"])
    np.testing.assert_allclose(back.points["pts"].data.compute()["x"], files["_pts"]["gx"])
    sdata = spatialdata.read_zarr(store)
    assert set(sdata.points) == {"pts"} and set(sdata.shapes) == {"cells"}


# --- the big CSV: read once, in parallel, never copied -----------------------------------------
class _CountReads(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def _pretask(self, key, dsk, state):
        name = key[0] if isinstance(key, tuple) else key
        self.counts[(str(name), key[1] if isinstance(key, tuple) else None)] += 1


def _aggregate_linked_csv(tmp_path: Path, n: int, cluster=None) -> None:
    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(12)]
    frame = pd.DataFrame(
        {
            "x": rng.uniform(0, 1000, n).round(3),
            "y": rng.uniform(0, 1000, n).round(3),
            "gene": rng.choice(genes, n),
        }
    )
    csv = tmp_path / "big.csv"
    frame.to_csv(csv, index=False)
    cells = gpd.GeoDataFrame(
        geometry=[shapely.box(x, y, x + 40, y + 40) for x, y in rng.uniform(0, 960, (80, 2))]
    )
    ds = sf.Dataset(shapes={"cells": Shapes(cells)})
    blocksize = max(os.path.getsize(csv) // 6, 1 << 16)
    el = sf.link(
        ds, "tx", csv, kind="points", feature_key="gene", categories=genes, blocksize=int(blocksize)
    )
    assert not is_materialized(el)
    lazy = sf.aggregate(ds, "tx", "cells")
    counter = _CountReads()
    if cluster is None:
        with counter, dask.config.set(scheduler="threads"):
            got = lazy.compute()
        # the tasks reading CSV blocks ("read-csv-..." or fused "read-fused-...")
        reads = {k: v for k, v in counter.counts.items() if k[0].startswith("read-")}
        assert len({k[0] for k in reads}) == 1
        assert sorted(k[1] for k in reads) == list(range(el.npartitions))  # every block ...
        assert el.npartitions > 1 and set(reads.values()) == {1}  # ... read exactly once
    else:
        got = lazy.compute()  # the read tasks run in the worker processes
    mem = sf.Dataset(shapes={"cells": Shapes(cells)})
    mem.points["tx"] = Points(
        frame.assign(gene=pd.Categorical(frame.gene, categories=genes)), feature_key="gene"
    )
    expected = sf.aggregate(mem, "tx", "cells").compute(scheduler="threads")
    assert list(got.var_names) == list(expected.var_names)
    np.testing.assert_array_equal(got.X.toarray(), expected.X.toarray())
    if cluster is not None:
        return
    store = tmp_path / "agg.icechunk"
    ds.tables["counts"] = Table(got)
    ds.write(store, format="icechunk")
    stored = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    assert stored < os.path.getsize(csv) / 10  # the CSV is never copied into the store
    assert is_linked(sf.read(store)["tx"])


def test_linked_csv_aggregate_reads_once_in_parallel(tmp_path):
    _aggregate_linked_csv(tmp_path, 100_000)


@pytest.mark.slow
def test_linked_csv_aggregate_ten_million_rows(tmp_path):
    _aggregate_linked_csv(tmp_path, 10_000_000)


# --- bad input --------------------------------------------------------------------------------
def test_bad_links_raise_clear_errors(tmp_path):
    ds = random_ds(6)
    with pytest.raises(sf.ValidationError, match="no element named 'nope'"):
        sf.annotate(ds, "nope", "table")
    with pytest.raises(sf.ValidationError, match="no table named 'nope'"):
        sf.annotate(ds, "cell_shapes", "nope")
    with pytest.raises(sf.ValidationError, match="table_key 'missing' is not an obs column"):
        sf.annotate(ds, "cell_shapes", "table", table_key="missing")
    with pytest.raises(sf.ValidationError, match="neither 'index', 'sjoin' nor a column"):
        sf.annotate(ds, "cell_shapes", "table", method="no_such_column")
    with pytest.raises(sf.ValidationError, match="duplicate instance ids"):
        sf.annotate(ds, "cell_shapes", "table", table_key="instance")  # both regions mixed
    with pytest.raises(sf.ValidationError, match="predicate"):
        sf.annotate(ds, "cell_shapes", "table", method="sjoin", predicate="near")
    with pytest.raises(sf.ValidationError, match="no element named 'ghost'"):
        sf.join(ds, ["ghost"], "table")
    with pytest.raises(sf.ValidationError, match="match_rows"):
        sf.join(ds, ["cell_shapes"], "table", match_rows="left-ish")
    with pytest.raises(sf.ValidationError, match="'nothing' is not a column"):
        sf.get_values(ds, "cell_shapes", "nothing", table_name="table")
    with pytest.raises(sf.ValidationError, match="duplicate"):
        dup = ds.tables["table"].data.obs.copy()
        Table(
            ad.AnnData(obs=dup.assign(instance=1)),
            region=["cell_labels", "cell_shapes"],
            region_key="region",
            instance_key="instance",
        )
    with pytest.raises(sf.FormatError, match=r"lazy link 'gone'.*does not exist"):
        sf.link(ds, "gone", tmp_path / "missing.csv", kind="points")
    with pytest.raises(sf.ValidationError, match="unknown kind"):
        sf.link(ds, "bad", tmp_path, kind="video")


def test_changed_and_missing_files(tmp_path):
    files = _external_files(tmp_path, n_points=300)
    ds = sf.Dataset()
    sf.link(ds, "pts", files["parquet"], kind="points")
    sf.link(ds, "cells", files["geoparquet"], kind="shapes")
    files["_pts"].iloc[:100].rename(columns={"gx": "x", "gy": "y"}).to_parquet(files["parquet"])
    os.utime(files["parquet"], (1, 1))
    with pytest.warns(UserWarning, match="lazy link 'pts'.*changed since the link was made"):
        assert len(ds.points["pts"].data.compute()) == 100
    os.remove(files["geoparquet"])
    with pytest.raises(sf.FormatError, match=r"lazy link 'cells'.*does not exist"):
        _ = ds.shapes["cells"].data


def test_links_to_removed_elements_do_not_break_a_store(tmp_path):
    ds = random_ds(8)
    other = ad.AnnData(
        obs=pd.DataFrame({"cell": np.arange(30)}, index=[f"c{i}" for i in range(30)])
    )
    ds.tables["meta"] = Table(other)
    sf.annotate(ds, "cell_shapes", "meta", table_key="cell")
    store = tmp_path / "s.zarr"
    ds.write(store)
    assert set(sf.read(store).links.explicit()) == set(ds.links.explicit())
    import zarr

    root = zarr.open_group(store, mode="r+")
    attrs = root.attrs["spatialflow_links"]
    attrs["links"][0]["element"] = "removed_by_another_tool"
    root.attrs["spatialflow_links"] = attrs
    with pytest.warns(UserWarning, match="skipped"):
        back = sf.read(store)
    assert back.links.explicit() == [] and back.links.tables_of("cell_shapes") == ["table"]
