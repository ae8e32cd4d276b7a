"""Benchmark: tile stitching (register + fuse), spatialflow vs multiview-stitcher, same mosaic,
same run.

    uv run python benchmarks/stitch.py                       # 4x4 tiles of 512^2 + 32x32 of 96^2
    uv run python benchmarks/stitch.py --scale               # 8x8 tiles of 2048^2 uint16, 2 ch

A synthetic mosaic (``sf.datasets.tiled_mosaic``: sub-pixel true positions, noisy stage, image
noise) is written once as a SpatialData store; each engine then runs in its own fresh process
(Dask's threaded scheduler for both), reads the tiles from that store, registers them
(translation, channel 0), fuses both channels onto the union grid and writes the fused scale 0
to a local zarr array. The parent samples the resident memory of the whole process tree (every
50 ms; imports are included for both). Position error = |registered - true| tile origin (px),
after removing the mean offset (the absolute placement is a gauge choice), over all tiles, and
again over the tiles spatialflow registered (``registered_subset_*``: its unregistered tiles keep
their stage position by design). ``--timeout`` limits each engine run (default 1 h).
Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from aggregate import PeakMemory


def run_process(code: str, argv: list[str], out: Path, timeout: float | None) -> dict:
    """Run ``code`` in a fresh interpreter with a time limit; its JSON result plus wall time and
    the peak resident memory of its whole process tree (aggregate.PeakMemory)."""
    import signal
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the whole tree
    )
    with PeakMemory(proc.pid) as mem:
        t0 = time.perf_counter()
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {
                "error": f"timed out after {timeout:.0f} s",
                "wall_seconds": time.perf_counter() - t0,
                "peak_rss_gb": mem.peak / 1e9,
            }
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": stderr[-2000:], "wall_seconds": wall, "peak_rss_gb": mem.peak / 1e9}
    res = json.loads(out.read_text())
    res["wall_seconds"] = wall
    res["peak_rss_gb"] = mem.peak / 1e9
    return res


RUNNER = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, zarr
engine, store, out, fused_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
t0 = time.perf_counter()
if engine == "spatialflow":
    import spatialflow as sf
    ds = sf.read(store)
    names = sorted(ds.images)
    res = sf.stitch(ds, "tile_*").compute()
    t_reg = time.perf_counter() - t0
    pos = {n: res.registration.matrices[n][:2, 2].tolist() for n in names}
    kept = list(res.registration.unregistered)
    res.image.scale(0).data.to_zarr(fused_path, overwrite=True)
else:
    kept = []
    import dask.array as da
    from multiview_stitcher import fusion, msi_utils, registration
    from multiview_stitcher import spatial_image_utils as si_utils
    root = zarr.open_group(store, mode="r")
    stage = json.load(open(store + "/../stage.json"))
    names = sorted(stage)
    msims = []
    for n in names:
        arr = da.from_zarr(root["images"][n]["s0"])
        y, x = stage[n]
        sim = si_utils.get_sim_from_array(
            arr, dims=("c", "y", "x"), translation={"y": y + 0.5, "x": x + 0.5},
            transform_key="stage", c_coords=["ch0", "ch1"][: arr.shape[0]])
        msims.append(msi_utils.get_msim_from_sim(sim, scale_factors=[]))
    params = registration.register(
        msims, transform_key="stage", new_transform_key="registered", reg_channel_index=0)
    t_reg = time.perf_counter() - t0
    pos = {}
    for n, p in zip(names, params):
        m = np.asarray(p.squeeze())
        y, x = stage[n]
        pos[n] = (m @ np.array([y + 0.5, x + 0.5, 1.0]))[:2].tolist()
        pos[n] = [pos[n][0] - 0.5, pos[n][1] - 0.5]
    sims = [msi_utils.get_sim_from_msim(m) for m in msims]
    fused = fusion.fuse(sims, transform_key="registered")
    fused.data.to_zarr(fused_path, overwrite=True)
seconds = time.perf_counter() - t0
json.dump(
    {"seconds": seconds, "register_seconds": t_reg, "positions": pos, "unregistered": kept},
    open(out, "w"),
)
"""


def run_case(
    name: str, rows: int, tile: int, noise: float, workdir: Path, timeout: float | None
) -> dict:
    import numpy as np

    import spatialflow as sf

    case = workdir / name
    case.mkdir(parents=True, exist_ok=True)
    store = case / "tiles.zarr"
    t0 = time.perf_counter()
    ds, truth = sf.datasets.tiled_mosaic(
        rows,
        rows,
        tile,
        overlap=0.15,
        stage_noise=noise,
        channels=2,
        seed=0,
        chunks=min(tile, 1024),
    )
    if not store.exists():
        ds.write(store, format="spatialdata")
    (case / "stage.json").write_text(
        json.dumps({n: list(map(float, p)) for n, p in truth.stage.items()})
    )
    result: dict = {
        "benchmark": f"stitch {name}: register + fuse",
        "tiles": f"{rows}x{rows}",
        "tile_shape": tile,
        "channels": 2,
        "dtype": "uint16",
        "stage_noise_px": noise,
        "cores": os.cpu_count(),
        "setup_seconds": round(time.perf_counter() - t0, 1),
    }
    positions: dict[str, tuple] = {}
    kept: set[str] = set()
    for engine in ("spatialflow", "multiview-stitcher"):
        out = case / f"{engine}.json"
        res = run_process(
            RUNNER, [engine, str(store), str(out), str(case / f"{engine}-fused.zarr")], out, timeout
        )
        if "error" in res:
            result[engine] = {
                "error": res["error"][-600:],
                "wall_seconds": round(res["wall_seconds"], 1),
                "peak_rss_gb": round(res["peak_rss_gb"], 2),
            }
            continue
        names = sorted(truth.positions)
        est = np.array([res["positions"][n] for n in names])
        true = np.array([truth.positions[n] for n in names])
        err = np.abs(est - true - (est - true).mean(axis=0))
        positions[engine] = (est, true)
        result[engine] = {
            "seconds": round(res["seconds"], 1),
            "register_seconds": round(res["register_seconds"], 1),
            "wall_seconds": round(res["wall_seconds"], 1),
            "peak_rss_gb": round(res["peak_rss_gb"], 2),
            "mean_abs_error_px": round(float(err.mean()), 3),
            "max_abs_error_px": round(float(err.max()), 3),
        }
        if engine == "spatialflow":
            kept = set(res["unregistered"])
            result[engine]["unregistered_tiles"] = len(kept)
    # the same errors over the tiles spatialflow registered (its unregistered ones keep their
    # stage position, a few px off by design), for both engines alike
    subset = np.array([n not in kept for n in sorted(truth.positions)])
    for engine, (est, true) in positions.items():
        d = est[subset] - true[subset]
        e = np.abs(d - d.mean(axis=0))
        result[engine]["registered_subset_mean_px"] = round(float(e.mean()), 3)
        result[engine]["registered_subset_max_px"] = round(float(e.max()), 3)
    a, b = result.get("spatialflow", {}), result.get("multiview-stitcher", {})
    if "seconds" in a and "seconds" in b:
        result["time_ratio"] = round(a["seconds"] / b["seconds"], 3)
        result["peak_memory_ratio"] = round(a["peak_rss_gb"] / b["peak_rss_gb"], 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", action="store_true", help="the 8x8 x 2048^2 case")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--small-rows", type=int, default=32)
    ap.add_argument("--small-tile", type=int, default=96)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per engine run")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sf-bench-stitch-"))
    rows, tile = (8, 2048) if args.scale else (args.rows, args.tile)
    if rows:  # --rows 0: only the small-tiles case
        large = run_case("large-tiles", rows, tile, 15.0, workdir, args.timeout)
        print(json.dumps(large), flush=True)
    if args.small_rows:
        small = run_case(
            "small-tiles", args.small_rows, args.small_tile, 4.0, workdir, args.timeout
        )
        print(json.dumps(small), flush=True)


if __name__ == "__main__":
    main()
