"""Benchmark: transcripts -> cells aggregation: spatialflow, spatialdata 0.8 and a plain floor,
on the same store in the same run.

    uv run python benchmarks/aggregate.py --points 10_000_000 --cells 100_000
    uv run python benchmarks/aggregate.py --scale 10          # 100M x 1M

A synthetic Xenium-like dataset is written once in the SpatialData 0.8 layout; then each engine
runs in its own fresh process reading that store, and the parent samples the resident memory of
the whole process tree (peak of the sum, every 50 ms). Every time excludes imports: it runs
from opening the store to the table in memory.

* spatialflow: run twice in one process: ``cold`` (the first run: numba's on-disk cache is
  loaded, or compiled when empty) and ``warm``.
* floor: the same work with the plainest tools and no engine: pyarrow reads x, y and the gene
  codes of every part; pyarrow + shapely read the cells' WKB and build the polygons' ragged
  arrays and grid index (spatialflow's own kernels/polygons.py and kernels/pip.py); the
  point-in-polygon kernel alone on all points, split over all cores in threads; one bincount.
* spatialdata 0.8: ``spatialdata.aggregate`` (skipped above ``--spatialdata-max-points``: it
  loads every point into one process).

When they run, the count matrices of all three are compared exactly. Prints one JSON line with
the ratios ``spatialflow_over_floor`` (warm) and ``spatialdata_over_spatialflow``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
engine, store, out = sys.argv[1], sys.argv[2], sys.argv[3]
extra = {}
if engine == "spatialflow":
    import spatialflow as sf
    import spatialflow.plan.aggregate  # imports excluded from the timings

    def run():
        ds = sf.read(store)
        lazy = sf.aggregate(ds, "transcripts", "cells", value_key="gene")
        return lazy, lazy.compute()

    t0 = time.perf_counter()
    lazy, adata = run()
    extra["cold_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lazy, adata = run()
    seconds = time.perf_counter() - t0
    extra["explain"] = lazy.explain(print_=False)
elif engine == "floor":
    import glob, os
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq, shapely, scipy.sparse as sp
    from spatialflow.kernels.pip import build_grid_index, points_in_polygons
    from spatialflow.kernels.polygons import flatten_polygons
    import anndata as ad, pandas as pd
    points_in_polygons(np.zeros(1), np.zeros(1), flatten_polygons(np.array([shapely.box(0, 0, 1, 1)])))
    t0 = time.perf_counter()
    parts = sorted(glob.glob(os.path.join(store, "points/transcripts/points.parquet/*.parquet")))
    tab = pq.read_table(parts, columns=["x", "y", "gene"])
    x = tab.column("x").to_numpy(); y = tab.column("y").to_numpy()
    gene = tab.column("gene").unify_dictionaries()
    genes = list(gene.chunk(0).dictionary.to_pylist())
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in gene.chunks])
    t1 = time.perf_counter()
    cells = pq.read_table(os.path.join(store, "shapes/cells/shapes.parquet"))
    geoms = shapely.from_wkb(cells.column("geometry").to_numpy(zero_copy_only=False))
    polys = flatten_polygons(geoms)
    grid = build_grid_index(polys.bounds)
    t2 = time.perf_counter()
    n = len(x); k = os.cpu_count() or 1
    cuts = np.linspace(0, n, k + 1).astype(int)
    with ThreadPoolExecutor(k) as pool:
        pairs = list(pool.map(lambda i: points_in_polygons(x[cuts[i]:cuts[i+1]], y[cuts[i]:cuts[i+1]], polys, grid), range(k)))
    t3 = time.perf_counter()
    pi = np.concatenate([p + cuts[i] for i, (p, _) in enumerate(pairs)])
    gi = np.concatenate([g for _, g in pairs])
    counts = np.bincount(gi * len(genes) + codes[pi], minlength=len(geoms) * len(genes))
    X = sp.csr_matrix(counts.reshape(len(geoms), len(genes)))
    seconds = time.perf_counter() - t0
    ix = (cells.schema.pandas_metadata or {}).get("index_columns", [])
    if ix and isinstance(ix[0], str):
        index = cells.column(ix[0]).to_numpy(zero_copy_only=False)
    elif ix and isinstance(ix[0], dict):
        index = np.arange(ix[0]["start"], ix[0]["stop"], ix[0]["step"])
    else:
        index = np.arange(len(geoms))
    adata = ad.AnnData(X, obs=pd.DataFrame(index=[str(v) for v in index]), var=pd.DataFrame(index=genes))
    extra = {"read_points_seconds": t1 - t0, "by_index_seconds": t2 - t1, "kernel_seconds": t3 - t2}
else:
    import spatialdata as sd
    t0 = time.perf_counter()
    sdata = sd.read_zarr(store)
    adata = sd.aggregate(values="transcripts", by="cells", values_sdata=sdata, by_sdata=sdata,
                         value_key="gene", agg_func="count")["table"]
    seconds = time.perf_counter() - t0
import numpy as np, scipy.sparse as sp
x = sp.csr_matrix(adata.X)
sp.save_npz(out + ".npz", x)
json.dump({"seconds": seconds, "obs": list(map(str, adata.obs_names)),
           "var": list(map(str, adata.var_names)), **extra}, open(out, "w"))
"""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class PeakMemory:
    """Samples the resident memory of a process tree every 50 ms while in its ``with`` block;
    ``peak`` (bytes) is the largest sum seen, ``base`` the sum when the block began."""

    def __init__(self, pid: int) -> None:
        self._ps = psutil.Process(pid)
        self.base = self.peak = _tree_rss(self._ps)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, _tree_rss(self._ps))
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def run_process(code: str, argv: list[str], out: Path) -> dict:
    """Run ``code`` in a fresh interpreter; its JSON result plus wall time and the peak
    resident memory of its whole process tree (sampled every 50 ms)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with PeakMemory(proc.pid) as mem:
        t0 = time.perf_counter()
        _, stderr = proc.communicate()
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": stderr[-2000:], "wall_seconds": wall}
    res = json.loads(out.read_text())
    res["wall_seconds"] = wall
    res["peak_rss_gb"] = mem.peak / 1e9
    return res


def run_engine(engine: str, store: Path, workdir: Path) -> dict:
    out = workdir / f"{engine}.json"
    return run_process(RUNNER, [engine, str(store), str(out)], out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=lambda s: int(float(s.replace("_", ""))), default=10_000_000)
    ap.add_argument("--cells", type=lambda s: int(float(s.replace("_", ""))), default=100_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply points and cells")
    ap.add_argument("--spatialdata-max-points", type=int, default=20_000_000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    n_points = int(args.points * args.scale)
    n_cells = int(args.cells * args.scale)

    import spatialflow as sf

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-agg-"))
    store = workdir / "store.zarr"
    t0 = time.perf_counter()
    if not store.exists():
        ds = sf.datasets.xenium_like(n_points, n_cells, n_genes=args.genes)
        keep = sf.Dataset(
            points={"transcripts": ds.points["transcripts"]}, shapes={"cells": ds.shapes["cells"]}
        )
        keep.write(store, format="spatialdata")
    setup = time.perf_counter() - t0

    result: dict = {
        "benchmark": "aggregate transcripts->cells (count by gene)",
        "points": n_points,
        "cells": n_cells,
        "genes": args.genes,
        "cores": os.cpu_count(),
        "setup_seconds": round(setup, 1),
    }
    ours = run_engine("spatialflow", store, workdir)
    floor = run_engine("floor", store, workdir)
    result["spatialflow"] = _summary(ours, n_points)
    result["floor"] = _summary(floor, n_points)
    if "error" not in ours and "error" not in floor:
        result["spatialflow_over_floor"] = round(ours["seconds"] / floor["seconds"], 2)
        result["floor_equal"] = _equal(workdir, ours, floor, "floor")
    if n_points > args.spatialdata_max_points:
        result["spatialdata"] = {
            "skipped": f"{n_points:,} points exceed what spatialdata 0.8 "
            f"can hold in memory here (limit {args.spatialdata_max_points:,};"
            " it needs ~8.7 GB per 10M)"
        }
    else:
        theirs = run_engine("spatialdata", store, workdir)
        result["spatialdata"] = _summary(theirs, n_points)
        if "error" not in ours and "error" not in theirs:
            result["spatialdata_over_spatialflow"] = round(theirs["seconds"] / ours["seconds"], 1)
            result["peak_memory_ratio"] = round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 3)
            result["results_equal"] = _equal(workdir, ours, theirs, "spatialdata")
    print(json.dumps(result))


def _summary(res: dict, n: int) -> dict:
    if "error" in res:
        return {"error": res["error"]}
    out = {
        "seconds": round(res["seconds"], 2),
        "wall_seconds": round(res["wall_seconds"], 2),
        "peak_rss_gb": round(res["peak_rss_gb"], 2),
        "throughput_points_per_s": round(n / res["seconds"]),
    }
    for key in ("cold_seconds", "read_points_seconds", "by_index_seconds", "kernel_seconds"):
        if key in res:
            out[key] = round(res[key], 2)
    return out


def _equal(workdir: Path, ours: dict, theirs: dict, other: str) -> bool:
    import numpy as np
    import scipy.sparse as sp

    a = sp.load_npz(workdir / "spatialflow.json.npz")
    b = sp.load_npz(workdir / f"{other}.json.npz")
    if ours["var"] != theirs["var"]:
        return False
    pos = {k: i for i, k in enumerate(theirs["obs"])}
    order = np.array([pos[k] for k in ours["obs"]])
    return bool((a != b[order]).nnz == 0)


if __name__ == "__main__":
    main()
