"""Benchmark: writing and reading a Xenium-like dataset, spatialflow's native Icechunk layout vs
spatialdata 0.8's own writer and reader, on the same data in the same run.

    uv run python benchmarks/io.py                       # 10M transcripts, 100k cells
    uv run python benchmarks/io.py --transcripts 1e6 --cells 1e4
    uv run python benchmarks/io.py --scale 0.1           # both sizes times 0.1

Every phase runs in its own fresh interpreter, and this process samples the resident memory of
that whole process tree (the peak of the sum, every 50 ms):

- ``generate``: the synthetic dataset's points computed and dropped (what both writes also pay
  to produce the data; the writers' own cost is the difference);
- ``spatialflow.write``: ``sf.datasets.xenium_like(...).write(repo, format="icechunk")``: all
  elements, one commit;
- ``spatialdata.write``: the same Dataset, ``.to_spatialdata()`` then spatialdata's
  ``SpatialData.write`` (SpatialData 0.8 zarr layout);
- ``spatialflow.read`` / ``spatialdata.read``: ``sf.read`` / ``spatialdata.read_zarr`` of
  what was written, then every point computed into one pandas frame.

Times exclude interpreter start-up and imports; with ``--repeat R`` the phases run R times,
interleaved, and the fastest time (with the highest peak memory) of each is reported. Both reads must give the same points (row count, coordinate and cell-id sums, gene counts);
``same_points`` says so. Bytes on disk are the sizes of all files of each store. Dask runs on its
default (threaded) scheduler with all cores. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from aggregate import run_process

RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
phase, target, n, m, genes, out = sys.argv[1:7]
n, m, genes = int(n), int(m), int(genes)


def digest(df, feature):
    counts = df[feature].astype(str).value_counts().sort_index()
    return {
        "rows": int(len(df)),
        "sum_x": float(df["x"].astype("float64").sum()),
        "sum_cell_id": int(df["cell_id"].sum()),
        "genes": {str(k): int(v) for k, v in counts.items()},
    }


# imports are not what is measured: load up front what either engine loads lazily
import anndata, dask.dataframe, distributed, geopandas, icechunk, xarray, zarr
import spatialflow as sf
import spatialflow.io.repository, spatialflow.io.sdwriter, spatialflow.io.icechunk_writer
if phase.startswith("spatialdata"):
    import spatialdata as sd
t0 = time.perf_counter()
extra = {}
if phase in ("generate", "spatialflow.write", "spatialdata.write"):
    ds = sf.datasets.xenium_like(n, m, n_genes=genes)
    if phase == "generate":
        pts = ds.points["transcripts"].data
        extra["rows"] = int(pts.map_partitions(len).sum().compute())
    elif phase == "spatialflow.write":
        extra["snapshot"] = ds.write(target, format="icechunk", message="benchmark")
    else:
        ds.to_spatialdata().write(target)
elif phase == "spatialflow.read":
    pts = sf.read(target).points["transcripts"]
    extra["partitions"] = pts.npartitions
    extra["digest"] = digest(pts.data.compute(), pts.feature_key)
else:
    pts = sd.read_zarr(target).points["transcripts"]
    extra["partitions"] = pts.npartitions
    extra["digest"] = digest(pts.compute(), pts.attrs["spatialdata_attrs"]["feature_key"])
extra["seconds"] = time.perf_counter() - t0
json.dump(extra, open(out, "w"))
"""


def run_phase(phase: str, target: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one phase in a fresh interpreter; its result plus the peak RSS of its process tree."""
    out = workdir / f"{phase}.json"
    argv = [phase, str(target), str(args.n), str(args.m), str(args.genes), str(out)]
    res = run_process(RUNNER, argv, out)
    res.pop("wall_seconds", None)
    return res


PHASES = (
    "generate",
    "spatialflow.write",
    "spatialdata.write",
    "spatialflow.read",
    "spatialdata.read",
)


def _best(runs: list[dict]) -> dict:
    """The fastest run, with the highest peak memory of all runs (an error if any failed)."""
    for r in runs:
        if "error" in r:
            return r
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    return best


def bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _count(text: str) -> int:
    return int(float(text.replace("_", "")))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="spatialflow (native Icechunk) vs spatialdata 0.8: write and read times, "
        "bytes on disk, peak memory; one JSON line."
    )
    ap.add_argument("--transcripts", type=_count, default=10_000_000)
    ap.add_argument("--cells", type=_count, default=100_000)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply transcripts and cells")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run every phase this many times; report the fastest"
    )
    ap.add_argument("--keep", action="store_true", help="keep the written stores")
    args = ap.parse_args(argv)
    args.n = max(1, int(args.transcripts * args.scale))
    args.m = max(1, int(args.cells * args.scale))
    return args


def _engine(write: dict, read: dict, store: Path) -> dict:
    out: dict = {}
    for what, res in (("write", write), ("read", read)):
        if "error" in res:
            out[f"{what}_error"] = res["error"]
            continue
        out[f"{what}_seconds"] = round(res["seconds"], 2)
        out[f"{what}_peak_rss_gb"] = round(res["peak_rss_gb"], 2)
    if "partitions" in read:
        out["points_partitions"] = read["partitions"]
    out["bytes_on_disk"] = bytes_on_disk(store) if store.exists() else None
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-io-"))
    workdir.mkdir(parents=True, exist_ok=True)
    repo, store = workdir / "native.icechunk", workdir / "spatialdata.zarr"
    try:
        runs: dict[str, list[dict]] = {p: [] for p in PHASES}
        for _ in range(args.repeat):  # phases interleaved, so load spikes hit both engines
            for phase in PHASES:
                target = {"spatialflow": repo, "spatialdata": store}.get(phase.split(".")[0])
                if phase.endswith(".write"):
                    shutil.rmtree(target, ignore_errors=True)
                runs[phase].append(run_phase(phase, target or workdir, args, workdir))
        gen, sf_write, sd_write, sf_read, sd_read = (_best(runs[p]) for p in PHASES)
        result: dict = {
            "benchmark": "io: write + read a Xenium-like dataset",
            "repeat": args.repeat,
            "transcripts": args.n,
            "cells": args.m,
            "genes": args.genes,
            "cores": os.cpu_count(),
            "generate_points_seconds": round(gen.get("seconds", float("nan")), 2),
            "spatialflow": _engine(sf_write, sf_read, repo),
            "spatialdata": _engine(sd_write, sd_read, store),
        }
        ours, theirs = result["spatialflow"], result["spatialdata"]
        if all(f"{w}_seconds" in e for e in (ours, theirs) for w in ("write", "read")):
            result["ratio_spatialdata_over_spatialflow"] = {
                "write_seconds": round(theirs["write_seconds"] / ours["write_seconds"], 2),
                "read_seconds": round(theirs["read_seconds"] / ours["read_seconds"], 2),
                "bytes_on_disk": round(theirs["bytes_on_disk"] / ours["bytes_on_disk"], 3),
                "read_peak_rss": round(
                    theirs["read_peak_rss_gb"] / max(ours["read_peak_rss_gb"], 1e-9), 2
                ),
            }
            result["same_points"] = sf_read["digest"] == sd_read["digest"]
            result["points_read"] = sf_read["digest"]["rows"]
        result["peak_rss_gb"] = round(
            max(r.get("peak_rss_gb", 0.0) for r in (gen, sf_write, sd_write, sf_read, sd_read)),
            2,
        )
        print(json.dumps(result))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
