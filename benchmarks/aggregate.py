"""Benchmark: transcripts -> cells aggregation, spatialflow vs spatialdata 0.8 on the same store.

    uv run python benchmarks/aggregate.py --points 10_000_000 --cells 100_000
    uv run python benchmarks/aggregate.py --points 100_000_000 --cells 1_000_000

A synthetic Xenium-like dataset is written once in the SpatialData 0.8 layout; then each engine
runs in its own fresh process reading that store, and the parent samples the resident memory of
the whole process tree (peak of the sum, every 50 ms). spatialdata loads every point into one
process, so it is skipped above ``--spatialdata-max-points`` (said so in the output). When both
run, their count matrices are compared exactly. Prints one JSON line.
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
t0 = time.perf_counter()
if engine == "spatialflow":
    import spatialflow as sf
    ds = sf.read(store)
    lazy = sf.aggregate(ds, "transcripts", "cells", value_key="gene")
    info = lazy.explain(print_=False)
    adata = lazy.compute()
else:
    import spatialdata as sd
    sdata = sd.read_zarr(store)
    adata = sd.aggregate(values="transcripts", by="cells", values_sdata=sdata, by_sdata=sdata,
                         value_key="gene", agg_func="count")["table"]
    info = ""
seconds = time.perf_counter() - t0
import numpy as np, scipy.sparse as sp
x = sp.csr_matrix(adata.X)
sp.save_npz(out + ".npz", x)
json.dump({"seconds": seconds, "obs": list(map(str, adata.obs_names)),
           "var": list(map(str, adata.var_names)), "explain": info}, open(out, "w"))
"""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_process(code: str, argv: list[str], out: Path) -> dict:
    """Run ``code`` in a fresh interpreter; its JSON result plus wall time and the peak
    resident memory of its whole process tree (sampled every 50 ms)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ps = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, _tree_rss(ps))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if proc.returncode != 0:
        return {"error": stderr[-2000:], "wall_seconds": wall}
    res = json.loads(out.read_text())
    res["wall_seconds"] = wall
    res["peak_rss_gb"] = peak / 1e9
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
    result["spatialflow"] = _summary(ours, n_points)
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
            result["speedup"] = round(theirs["seconds"] / ours["seconds"], 1)
            result["peak_memory_ratio"] = round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 3)
            result["results_equal"] = _equal(workdir, ours, theirs)
    print(json.dumps(result))


def _summary(res: dict, n: int) -> dict:
    if "error" in res:
        return {"error": res["error"]}
    return {
        "seconds": round(res["seconds"], 2),
        "wall_seconds": round(res["wall_seconds"], 2),
        "peak_rss_gb": round(res["peak_rss_gb"], 2),
        "throughput_points_per_s": round(n / res["seconds"]),
    }


def _equal(workdir: Path, ours: dict, theirs: dict) -> bool:
    import numpy as np
    import scipy.sparse as sp

    a = sp.load_npz(workdir / "spatialflow.json.npz")
    b = sp.load_npz(workdir / "spatialdata.json.npz")
    if ours["var"] != theirs["var"]:
        return False
    pos = {k: i for i, k in enumerate(theirs["obs"])}
    order = np.array([pos[k] for k in ours["obs"]])
    return bool((a != b[order]).nnz == 0)


if __name__ == "__main__":
    main()
