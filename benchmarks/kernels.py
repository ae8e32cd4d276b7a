"""Benchmark: the point-in-polygon join kernel alone, against shapely's STRtree, same data.

    uv run python benchmarks/kernels.py                 # 2M points, 20k cells
    uv run python benchmarks/kernels.py --scale 5       # 10M points, 100k cells

The data are the synthetic Xenium-like sample's cells (Voronoi polygons of ~20 vertices) and
transcripts, in the order the engine stores them (partitions in space-filling-curve order of
their tiles, so consecutive points are near each other), then the same points shuffled. Reported
per core: the kernel runs on one thread (``points_in_polygons``), shapely's
``STRtree.query(points, predicate="within")`` too, on a sample of the points (it is slow) scaled
to the whole. Both must find the same pairs (checked on the sample, away from boundaries, where
the two libraries' boundary conventions cannot differ). The index build (grid and each
polygon's inner box; numba compiled or loaded beforehand) is timed apart. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=lambda s: int(float(s)), default=2_000_000)
    ap.add_argument("--cells", type=lambda s: int(float(s)), default=20_000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--shapely-sample", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n_points, n_cells = int(args.points * args.scale), int(args.cells * args.scale)

    import dask
    import shapely

    import spatialflow as sf
    from spatialflow.kernels.pip import build_grid_index, points_in_polygons
    from spatialflow.kernels.polygons import flatten_polygons

    ds = sf.datasets.xenium_like(n_points, n_cells, n_genes=50)
    with dask.config.set(scheduler="threads"):
        pts = ds.points["transcripts"].data[["x", "y"]].compute()
        cells = ds.shapes["cells"].data.compute()
    x = pts["x"].to_numpy(np.float64)
    y = pts["y"].to_numpy(np.float64)
    geoms = np.asarray(cells.geometry.values)

    tiny = flatten_polygons(geoms[:10])
    points_in_polygons(x[:1000], y[:1000], tiny, build_grid_index(tiny.bounds))  # compile/load
    t0 = time.perf_counter()
    polys = flatten_polygons(geoms)
    flatten_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grid = build_grid_index(polys.bounds)
    polys.inner_boxes  # noqa: B018 - the index includes each polygon's inner box
    grid_s = time.perf_counter() - t0

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    perm = np.random.default_rng(0).permutation(len(x))
    xs, ys = x[perm], y[perm]
    sorted_s = best(lambda: points_in_polygons(x, y, polys, grid))
    shuffled_s = best(lambda: points_in_polygons(xs, ys, polys, grid))

    m = min(args.shapely_sample, len(x))
    t0 = time.perf_counter()
    tree = shapely.STRtree(geoms)
    tree_s = time.perf_counter() - t0
    sample = shapely.points(x[:m], y[:m])
    t0 = time.perf_counter()
    si, sg = tree.query(sample, predicate="within")
    shapely_s = (time.perf_counter() - t0) * len(x) / m

    pi, gi = points_in_polygons(x[:m], y[:m], polys, grid)
    ours = set(zip(pi.tolist(), gi.tolist(), strict=True))
    theirs = set(zip(si.tolist(), sg.tolist(), strict=True))
    # boundary points may differ by convention only (shapely excludes boundaries)
    differ = ours ^ theirs
    on_edge = sum(
        1
        for p, g in differ
        if shapely.distance(geoms[g].boundary, shapely.Point(x[p], y[p])) < 1e-9
    )
    n = len(x)
    print(
        json.dumps(
            {
                "benchmark": "point-in-polygon join kernel, one core",
                "points": n,
                "polygons": len(geoms),
                "cores": os.cpu_count(),
                "flatten_seconds": round(flatten_s, 3),
                "grid_index_seconds": round(grid_s, 3),
                "sorted": {
                    "seconds": round(sorted_s, 3),
                    "points_per_s_per_core": round(n / sorted_s),
                },
                "shuffled": {
                    "seconds": round(shuffled_s, 3),
                    "points_per_s_per_core": round(n / shuffled_s),
                },
                "shapely_strtree": {
                    "build_seconds": round(tree_s, 3),
                    "seconds_scaled": round(shapely_s, 2),
                    "points_per_s_per_core": round(n / shapely_s),
                    "sample": m,
                },
                "speedup_vs_shapely_sorted": round(shapely_s / sorted_s, 1),
                "pairs_equal_off_boundary": len(differ) == on_edge,
            }
        )
    )


if __name__ == "__main__":
    main()
