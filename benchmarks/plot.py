"""Benchmark: a plot of all transcripts of the synthetic Xenium-like sample at full extent.

    uv run python benchmarks/plot.py                 # 5M transcripts (--scale 0.05 of 10^8)
    uv run python benchmarks/plot.py --scale 1       # the 10^8-transcript sample

spatialflow's ``sf.plot`` (datashader aggregates per partition on Dask, summed in a tree) runs
in a fresh process on the lazy synthetic dataset, so the transcripts are generated partition by
partition inside the tasks, never all at once; the parent samples the resident memory of the
whole process tree (peak of the sum, every 50 ms; imports included, they are the floor). The
peer, in the same run, is what a matplotlib user does: gather the points into pandas and
``scatter`` them; it is skipped above ``--peer-max-points``. ``--cluster`` runs spatialflow on
a LocalCluster of 2 worker processes instead of Dask's threads. Prints one JSON line; the
target is a peak <= 3 GB at 10^8 transcripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from aggregate import run_process  # the same process-tree memory sampler

RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
engine, n, cells, genes, png, out, cluster = sys.argv[1:8]
n, cells, genes = int(n), int(cells), int(genes)
import numpy as np
import spatialflow as sf
ds = sf.datasets.xenium_like(n, cells, n_genes=genes)
client = None
if cluster == "1":
    from distributed import Client, LocalCluster
    client = Client(LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="1.2GiB"))
t0 = time.perf_counter()
if engine == "spatialflow":
    fig = sf.plot(ds, "transcripts", width=1200)
    fig.savefig(png, dpi=fig.dpi)
    img = np.asarray(fig.canvas.buffer_rgba())
else:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    df = ds.points["transcripts"].data[["x", "y"]].compute()
    fig, ax = plt.subplots(figsize=(12, 12), dpi=100)
    ax.scatter(df["x"].to_numpy(), df["y"].to_numpy(), s=0.05, linewidths=0)
    ax.invert_yaxis()
    fig.savefig(png)
    img = np.asarray(fig.canvas.buffer_rgba())
seconds = time.perf_counter() - t0
painted = float((img[..., :3].astype(int).sum(axis=-1) < 3 * 250).mean())
json.dump({"seconds": seconds, "painted_fraction": painted}, open(out, "w"))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=lambda s: int(float(s.replace("_", ""))), default=100_000_000)
    ap.add_argument("--scale", type=float, default=0.05, help="multiply --points (default 0.05)")
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--peer-max-points", type=int, default=10_000_000)
    ap.add_argument("--cluster", action="store_true", help="a LocalCluster of 2 workers")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    n = int(args.points * args.scale)
    cells = max(10, n // 100)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-plot-"))

    def engine(name: str) -> dict:
        out = workdir / f"{name}.json"
        argv = [name, str(n), str(cells), str(args.genes), str(workdir / f"{name}.png")]
        res = run_process(RUNNER, [*argv, str(out), "1" if args.cluster else "0"], out)
        if "error" in res:
            return {"error": res["error"][-500:]}
        return {
            "seconds": round(res["seconds"], 2),
            "wall_seconds": round(res["wall_seconds"], 2),
            "peak_rss_gb": round(res["peak_rss_gb"], 3),
            "painted_fraction": round(res["painted_fraction"], 3),
        }

    result: dict = {
        "benchmark": "plot all transcripts at full extent (1200 px)",
        "points": n,
        "cells": cells,
        "cores": os.cpu_count(),
        "scheduler": "LocalCluster(2 workers)" if args.cluster else "threads",
    }
    ours = engine("spatialflow")
    result["spatialflow"] = ours
    if "peak_rss_gb" in ours:
        result["spatialflow_within_3gb"] = ours["peak_rss_gb"] <= 3.0
        result["points_per_second"] = round(n / ours["seconds"])
    if n > args.peer_max_points:
        result["matplotlib_scatter"] = {
            "skipped": f"{n:,} points exceed --peer-max-points {args.peer_max_points:,}"
        }
    else:
        theirs = engine("matplotlib")
        result["matplotlib_scatter"] = theirs
        if "seconds" in ours and "seconds" in theirs:
            result["speedup"] = round(theirs["seconds"] / ours["seconds"], 2)
            result["peak_memory_ratio"] = round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
