"""Benchmark: ring density of N uniform points around 100 contours, spatialflow vs shapely.

    uv run python benchmarks/density.py                 # 10^7 points (a few minutes here)
    uv run python benchmarks/density.py --scale 10      # 10^8 points

Points are generated lazily (one partition = one square tile of 10^6 uniform points, seeded by
its tile number, bounding box known), so no process ever holds all of them. The 100 contours
are random star-shaped polygons (64 vertices, some with a hole) over the same square.
spatialflow runs ``sf.ring_density`` (rings of width 25 from -50 to +50) in a fresh process
on Dask's threaded scheduler; the peer is a single-process shapely reference (STRtree query of
the points within reach of each contour, ``shapely.distance`` to its boundary, ``contains``
for the sign, ``np.histogram``) on the first ``--ref-points`` points (10^6), which spatialflow
also runs on the same points: their counts must be equal. The parent samples the resident
memory of each process tree every 50 ms (imports included in the first sample, not in times).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from aggregate import run_process

COMMON = r"""
import math
import numpy as np, pandas as pd, shapely

TILE = 1_000_000          # points per tile (one partition)
DENSITY = 0.01            # points per unit area -> a tile is 10_000 x 10_000 units


def layout(n):
    tiles = max(1, math.ceil(n / TILE))
    side = math.ceil(math.sqrt(tiles))
    edge = math.sqrt(TILE / DENSITY)
    return tiles, side, edge


def tile_points(t, n, side, edge):
    rows = min(TILE, n - t * TILE)
    rng = np.random.default_rng(1000 + t)
    x0, y0 = (t % side) * edge, (t // side) * edge
    return pd.DataFrame({"x": x0 + rng.uniform(0, edge, rows), "y": y0 + rng.uniform(0, edge, rows)})


def contours(n, k=100):
    tiles, side, edge = layout(n)
    rows = math.ceil(tiles / side)
    rng = np.random.default_rng(7)
    out = []
    for i in range(k):
        c = rng.uniform([0, 0], [side * edge, rows * edge])
        a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = rng.uniform(150, 600) * (1 + 0.3 * np.sin(3 * a + rng.uniform(0, 6)))
        poly = shapely.Polygon(np.c_[c[0] + r * np.cos(a), c[1] + r * np.sin(a)])
        if i % 4 == 0:
            poly = poly.difference(shapely.Point(*c).buffer(60))
        out.append(poly)
    return out
"""

RUNNER = (
    COMMON
    + r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
engine, n, n_ref, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
EDGES = np.arange(-50, 51, 25.0)
if engine == "spatialflow":
    import dask.dataframe as dd, geopandas as gpd
    import spatialflow as sf

    def points(m):
        tiles, side, edge = layout(m)
        parts = list(range(tiles))
        meta = pd.DataFrame({"x": np.zeros(0), "y": np.zeros(0)})
        data = dd.from_map(lambda t: tile_points(t, m, side, edge), parts, meta=meta,
                           enforce_metadata=False)
        bounds = np.array([[(t % side) * edge, (t // side) * edge, (t % side + 1) * edge,
                            (t // side + 1) * edge] for t in parts])
        return sf.Points(data, partition_bounds=bounds)

    shapes = sf.Shapes(gpd.GeoDataFrame(geometry=contours(n)))
    t0 = time.perf_counter()
    ds = sf.Dataset(points={"tx": points(n)}, shapes={"tumor": shapes})
    lazy = sf.ring_density(ds, "tx", "tumor", ring_width=25, inward=50, outward=50)
    info = lazy.explain(print_=False)
    df = lazy.compute()
    seconds = time.perf_counter() - t0
    small = sf.Dataset(points={"tx": points(n_ref)}, shapes={"tumor": shapes})
    ref = sf.ring_density(small, "tx", "tumor", ring_width=25, inward=50, outward=50).compute()
    ref_counts = ref.sort_values(["contour", "ring_start"])["count"].tolist()
    res = {"seconds": seconds, "counted": int(df["count"].sum()), "explain": info,
           "ref_counts": ref_counts}
else:
    geoms = np.array(contours(n), dtype=object)
    tiles, side, edge = layout(n)
    t0 = time.perf_counter()
    frames = [tile_points(t, n_ref, side, edge) for t in range(max(1, math.ceil(n_ref / TILE)))]
    df = pd.concat(frames)
    pts = shapely.points(df["x"].to_numpy(), df["y"].to_numpy())
    tree = shapely.STRtree(pts)
    counts = []
    for g in geoms:
        idx = tree.query(g, predicate="dwithin", distance=50)
        sub = pts[idx]
        d = shapely.distance(sub, g.boundary)
        s = np.where(d == 0, 0.0, np.where(shapely.contains(g, sub), -d, d))
        k = np.searchsorted(EDGES, s, side="right") - 1
        k[s == EDGES[-1]] = len(EDGES) - 2
        counts.append(np.bincount(k[(k >= 0) & (k < len(EDGES) - 1)], minlength=len(EDGES) - 1))
    seconds = time.perf_counter() - t0
    res = {"seconds": seconds, "ref_counts": np.concatenate(counts).tolist()}
json.dump(res, open(out, "w"))
"""
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=lambda s: int(float(s.replace("_", ""))), default=10**7)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply --points")
    ap.add_argument("--ref-points", type=lambda s: int(float(s.replace("_", ""))), default=10**6)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    n = int(args.points * args.scale)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-density-"))
    result: dict = {
        "benchmark": "ring_density, 100 contours, rings [-50, 50) width 25",
        "points": n,
        "reference_points": args.ref_points,
        "cores": os.cpu_count(),
    }
    runs = {}
    for engine in ("spatialflow", "shapely"):
        out = workdir / f"{engine}.json"
        runs[engine] = run_process(RUNNER, [engine, str(n), str(args.ref_points), str(out)], out)
    ours, ref = runs["spatialflow"], runs["shapely"]
    for name, res, count in (("spatialflow", ours, n), ("shapely", ref, args.ref_points)):
        if "error" in res:
            result[name] = {"error": res["error"]}
            continue
        result[name] = {
            "points": count,
            "seconds": round(res["seconds"], 2),
            "peak_rss_gb": round(res["peak_rss_gb"], 3),
            "points_per_s": round(count / res["seconds"]),
        }
    if "error" not in ours and "error" not in ref:
        result["spatialflow"]["counted_in_rings"] = ours["counted"]
        result["throughput_ratio"] = round(
            result["spatialflow"]["points_per_s"] / result["shapely"]["points_per_s"], 1
        )
        result["counts_equal_at_reference_size"] = ours["ref_counts"] == ref["ref_counts"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
