"""Benchmark: element-table joins, spatialflow vs spatialdata 0.8 on the same data, same run.

    uv run python benchmarks/links.py --scale 1      # 100k shapes, 100k table rows
    uv run python benchmarks/links.py --scale 10

Builds shapes (polygons) and a table annotating 2/3 of them in random row order, converts the
Dataset to a SpatialData object (the same rows, the same order), then times an inner join with
``match_rows="table"``, a left join with ``match_rows="element"`` and ``get_values`` of one
variable in each engine (spatialflow's elements are materialized with ``.compute()`` so both
sides deliver the same objects). Results are compared exactly. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely


def build(n: int, seed: int = 0):
    import spatialflow as sf
    from spatialflow.elements.shapes import Shapes
    from spatialflow.elements.table import Table

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 10_000, (n, 2))
    cells = gpd.GeoDataFrame(geometry=shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + 5, xy[:, 1] + 5))
    ids = rng.choice(n, 2 * n // 3, replace=False)
    obs = pd.DataFrame(
        {"region": pd.Categorical(["cells"] * len(ids)), "cell": ids.astype(np.int64)},
        index=[f"r{i}" for i in range(len(ids))],
    )
    adata = ad.AnnData(X=rng.poisson(1.0, (len(ids), 20)).astype(np.float32), obs=obs)
    ds = sf.Dataset(
        shapes={"cells": Shapes(cells, spatial_sort=False, rows_per_partition=n)},
        tables={"table": Table(adata, region="cells", region_key="region", instance_key="cell")},
    )
    return ds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    n = int(100_000 * args.scale)
    warnings.filterwarnings("ignore")
    import spatialdata as sd

    import spatialflow as sf

    ds = build(n)
    sdata = ds.to_spatialdata()
    out: dict = {"benchmark": "links", "shapes": n, "rows": ds.tables["table"].data.n_obs}
    cases = [("inner", "table", "right"), ("left", "element", "left")]
    for how, match, sd_match in cases:
        t0 = time.perf_counter()
        els, table = sf.join(ds, "cells", "table", how=how, match_rows=match)
        shapes = els["cells"].data.compute()
        t_sf = time.perf_counter() - t0
        t0 = time.perf_counter()
        sd_els, sd_table = sd.join_spatialelement_table(
            sdata=sdata,
            spatial_element_names="cells",
            table_name="table",
            how=how,
            match_rows=sd_match,
        )
        t_sd = time.perf_counter() - t0
        assert list(table.obs_names) == list(sd_table.obs_names)
        assert list(shapes.index) == list(sd_els["cells"].index)
        out[f"{how}_{match}"] = {
            "spatialflow_s": round(t_sf, 3),
            "spatialdata_s": round(t_sd, 3),
            "ratio": round(t_sd / t_sf, 2),
        }
    t0 = time.perf_counter()
    got = sf.get_values(ds, "cells", "1", table_name="table")
    t_sf = time.perf_counter() - t0
    t0 = time.perf_counter()
    exp = sd.get_values("1", sdata=sdata, element_name="cells", table_name="table")
    t_sd = time.perf_counter() - t0
    pd.testing.assert_frame_equal(got, exp, check_dtype=False)
    out["get_values"] = {
        "spatialflow_s": round(t_sf, 3),
        "spatialdata_s": round(t_sd, 3),
        "ratio": round(t_sd / t_sf, 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
