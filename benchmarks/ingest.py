"""Benchmark: a Xenium output folder ingested into Icechunk, spatialflow vs spatialdata-io 0.7.1.

    uv run python benchmarks/ingest.py                 # 10^7 transcripts (a few minutes here)
    uv run python benchmarks/ingest.py --scale 10      # 10^8 transcripts

A synthetic Xenium (XOA 2.x layout) folder is generated once with
``sf.datasets.write_vendor_sample``; then each engine runs in its own fresh process and the
parent samples the resident memory of the whole process tree (the sum over the process and all
its children, e.g. Dask workers, every 50 ms; interpreter start and imports are excluded by
subtracting the tree's memory once the imports are done). spatialflow runs ``ingest`` (read the
folder lazily, write every element into a new Icechunk repository in one commit) on a local
cluster of ``--workers`` processes; spatialdata-io runs ``xenium()`` and ``SpatialData.write``
to a zarr store (what its users do to get a store), only up to ``--sdio-max-transcripts``
(said so in the output). Both must report the same number of transcripts. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from aggregate import PeakMemory

RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
engine, folder, target, out, workers, mem = sys.argv[1:7]
if engine == "spatialflow":
    import spatialflow as sf
    from spatialflow.io.ingest import ingest
    from distributed import Client, LocalCluster
else:
    import spatialdata_io, spatialdata
print("imported", flush=True)
sys.stdin.readline()  # the parent measures the baseline, then lets us go
t0 = time.perf_counter()
if engine == "spatialflow":
    with LocalCluster(n_workers=int(workers), threads_per_worker=1, memory_limit=mem,
                      processes=True, dashboard_address=":0") as lc, Client(lc):
        ingest(folder, target, reader="xenium")
    n = len(sf.read(target).points["transcripts"].data)
else:
    sdata = spatialdata_io.xenium(folder)
    sdata.write(target)
    n = len(sdata.points["transcripts"])
json.dump({"seconds": time.perf_counter() - t0, "transcripts": int(n)}, open(out, "w"))
"""


def run_process(argv: list[str], out: Path) -> dict:
    """Run the engine in a fresh interpreter; memory is sampled from when its imports are
    done (it prints "imported" and waits for "go")."""
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()  # "imported"
    with PeakMemory(proc.pid) as mem:
        t0 = time.perf_counter()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, stderr = proc.communicate()
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": stderr[-2000:], "wall_seconds": round(wall, 1)}
    res = json.loads(out.read_text())
    return {
        "seconds": round(res["seconds"], 1),
        "transcripts": res["transcripts"],
        "peak_rss_gb": round(mem.peak / 1e9, 3),
        "peak_rss_above_imports_gb": round((mem.peak - mem.base) / 1e9, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    num = lambda s: int(float(s.replace("_", "")))  # noqa: E731
    ap.add_argument("--transcripts", type=num, default=10_000_000)
    ap.add_argument("--cells", type=num, default=10_000)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply transcripts and cells")
    ap.add_argument("--sdio-max-transcripts", type=num, default=10_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1.5GiB", help="per Dask worker")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    n_tx = int(args.transcripts * args.scale)
    n_cells = int(args.cells * args.scale**0.5)  # keeps the rasters small enough to generate

    import spatialflow as sf

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-ingest-"))
    folder = workdir / f"xenium-{n_tx}"
    t0 = time.perf_counter()
    if not (folder / "experiment.xenium").exists():
        sf.datasets.write_vendor_sample(
            "xenium", folder, n_transcripts=n_tx, n_cells=n_cells, n_genes=300
        )
    setup = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    result: dict = {
        "benchmark": "ingest a Xenium folder (v2 layout) into a store",
        "transcripts": n_tx,
        "cells": n_cells,
        "folder_gb": round(size / 1e9, 3),
        "cores": os.cpu_count(),
        "setup_seconds": round(setup, 1),
    }
    common = [args.workers and str(args.workers), args.memory_limit]
    ours = run_process(
        [
            "spatialflow",
            str(folder),
            str(workdir / "sf.icechunk"),
            str(workdir / "sf.json"),
            *common,
        ],
        workdir / "sf.json",
    )
    result["spatialflow_icechunk"] = ours
    if n_tx > args.sdio_max_transcripts:
        result["spatialdata_io"] = {
            "skipped": f"{n_tx:,} transcripts exceed --sdio-max-transcripts "
            f"{args.sdio_max_transcripts:,} (it holds boundaries and tables in memory)"
        }
    else:
        theirs = run_process(
            [
                "spatialdata_io",
                str(folder),
                str(workdir / "sdio.zarr"),
                str(workdir / "sdio.json"),
                *common,
            ],
            workdir / "sdio.json",
        )
        result["spatialdata_io"] = theirs
        if "error" not in ours and "error" not in theirs:
            result["same_transcript_count"] = ours["transcripts"] == theirs["transcripts"] == n_tx
            result["speedup"] = round(theirs["seconds"] / ours["seconds"], 2)
            result["peak_memory_ratio"] = round(ours["peak_rss_gb"] / theirs["peak_rss_gb"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
