"""Building the multiscale points index on Dask: level statistics, then a spatial shuffle.

Decisions (the algorithm itself is described in kernels/morton.py):

* **Statistics first, eagerly.** The probability of level ``l`` depends on the counts left by
  levels ``< l``, so the levels are decided one after the other, each by one small reduction
  (sparse per-cell counts of the pool, gathered and summed on the client: their size is the
  number of occupied cells, never the number of points). Like dask's ``sort_values``, which
  computes its divisions when the graph is built, ``build_index`` runs these reductions and
  returns a Points element whose rows are still lazy. The inputs are first reduced to a
  persisted slim state of 10 bytes a point (quantized x and y, a 32-bit content hash, the
  feature code), so each level's pass costs a scan of that state, not a re-read of the data.
* **One shuffle, two orders.** A last pass counts points per (level, coarse Z-cell of 2**10 by
  2**10) and per (level, feature); these histograms give the output partitions: spatial-first
  ones (one level each, cut between coarse cells at about ``row_group_rows`` rows) and
  feature-first ones (cut at feature changes once a partition holds ``row_group_rows // 8``
  rows, and between levels of a feature that would pass ``row_group_rows``). Each input
  partition is re-read once and split into pieces for both orders; each output partition
  concatenates its pieces and sorts them. The output does not depend on the input
  partitioning: the draws hash each point's content, the cuts come from global histograms,
  and ties in the sort key are broken by the content hash, then by input order.
* A coarse cell holding more than ``row_group_rows`` points of one level yields a partition
  that large (a very dense spot); it is never split inside.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.elements.points_index import INDEX_VERSION, LEVEL, IndexCopy, PointsIndex
from spatialflow.errors import PlanError
from spatialflow.kernels.morton import (
    BITS,
    MAX_LEVELS,
    assign_levels,
    cell_counts,
    grid_levels,
    level_keys,
    quantize,
    seeded_hash,
    sort_keys,
)

__all__ = ["build_index"]

log = logging.getLogger(__name__)
COARSE_SHIFT = 12  # coarse cells: the Z-code without its last 6 bits per axis (2**10 a side)


# --- per-partition kernels (run on the workers) -------------------------------------------
def _content_hash(df: pd.DataFrame, feature_key: str | None, seed: int) -> np.ndarray:
    """A 32-bit hash of each point's index, coordinates and feature, mixed with the seed."""
    cols = ["x", "y"] + ([feature_key] if feature_key else [])
    h = pd.util.hash_pandas_object(df[cols], index=True).to_numpy(dtype=np.uint64)
    return (seeded_hash(h, seed) >> np.uint64(32)).astype(np.uint32)


def _codes(df: pd.DataFrame, feature_key: str | None) -> np.ndarray:
    if not feature_key:
        return np.zeros(len(df), dtype=np.int32)
    return np.asarray(df[feature_key].cat.codes, dtype=np.int32)


def _slim(df: pd.DataFrame, lo: tuple, hi: tuple, seed: int, fk: str | None) -> tuple:
    ix, iy = quantize(df["x"].to_numpy(), df["y"].to_numpy(), lo, hi)
    code_t = np.int16 if fk is None or len(df[fk].cat.categories) < 2**15 else np.int32
    return (
        ix.astype(np.uint16),
        iy.astype(np.uint16),
        _content_hash(df, fk, seed),
        _codes(df, fk).astype(code_t),
    )


def _pool_counts(state: tuple, probs: np.ndarray, splits: tuple[int, int]) -> tuple:
    ix, iy, h, _ = state
    pool = assign_levels(h, probs) < 0
    keys = level_keys(ix[pool].astype(np.uint32), iy[pool].astype(np.uint32), splits)
    return cell_counts(keys)


def _final_counts(state: tuple, probs: np.ndarray, n_codes: int) -> tuple:
    ix, iy, h, codes = state
    lv = assign_levels(h, probs).astype(np.int64)
    coarse = sort_keys(lv, ix.astype(np.uint32), iy.astype(np.uint32)) >> np.uint64(COARSE_SHIFT)
    bins, counts = cell_counts(coarse)
    by_feature = np.bincount(
        lv * n_codes + codes.astype(np.int64), minlength=len(probs) * n_codes
    ).reshape(len(probs), n_codes)
    return bins, counts, by_feature


def _split(
    df: pd.DataFrame,
    lo: tuple,
    hi: tuple,
    seed: int,
    fk: str | None,
    probs: np.ndarray,
    s_starts: np.ndarray,
    f_starts: np.ndarray | None,
) -> dict[tuple[str, int], pd.DataFrame]:
    """Split one input partition into pieces of the output partitions of both orders."""
    ix, iy = quantize(df["x"].to_numpy(), df["y"].to_numpy(), lo, hi)
    h = _content_hash(df, fk, seed)
    lv = assign_levels(h, probs)
    key = sort_keys(lv, ix, iy)
    df = df.assign(**{LEVEL: lv.astype(np.uint8)})
    df["__key"], df["__hash"] = key, h
    out: dict[tuple[str, int], pd.DataFrame] = {}
    which = np.searchsorted(s_starts, key >> np.uint64(COARSE_SHIFT), side="right") - 1
    _pieces(df, which, "s", out)
    if f_starts is not None:
        fkey = _codes(df, fk).astype(np.int64) * MAX_LEVELS + lv
        which = np.searchsorted(f_starts, fkey, side="right") - 1
        df["__fkey"] = fkey
        _pieces(df, which, "f", out)
    return out


def _pieces(df: pd.DataFrame, which: np.ndarray, order: str, out: dict) -> None:
    """Rows of ``df`` grouped by output partition (one stable sort, then slices)."""
    perm = np.argsort(which, kind="stable")
    sorted_which = which[perm]
    uniq, first = np.unique(sorted_which, return_index=True)
    ends = np.append(first[1:], len(perm))
    for j, a, b in zip(uniq, first, ends, strict=True):
        out[(order, int(j))] = df.iloc[perm[a:b]]


def _assemble(order: str, meta: pd.DataFrame, *pieces: pd.DataFrame) -> pd.DataFrame:
    """One output partition: its pieces in input order, sorted (stable) by the order's key."""
    if not pieces:
        return meta
    df = pd.concat(pieces) if len(pieces) > 1 else pieces[0]
    keys = [df["__hash"].to_numpy(), df["__key"].to_numpy()]
    if order == "f":
        keys.append(df["__fkey"].to_numpy())
    # the last key is the primary one; lexsort is stable, and pieces come in input order
    idx = np.lexsort(keys)
    df = df.iloc[idx]
    return df[list(meta.columns)]


def _piece(split: dict, key: tuple[str, int]) -> pd.DataFrame | None:
    return split.get(key)


def _assemble_from(order: str, meta: pd.DataFrame, *pieces: pd.DataFrame | None) -> pd.DataFrame:
    return _assemble(order, meta, *[p for p in pieces if p is not None])


# --- planning on the client -----------------------------------------------------------------
def _merge_sparse(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inv, weights=counts, minlength=len(uniq)).astype(np.int64)


def _levels(
    states: list[Any], width: float, height: float, limit: int
) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
    """Decide each level's probability (one reduction per level)."""
    grid = grid_levels(width, height)
    probs: list[float] = []
    max_counts: list[int] = []
    for lv, splits in enumerate(grid):
        p_so_far = np.array(probs, dtype=np.float64)
        tasks = [dask.delayed(_pool_counts)(s, p_so_far, splits) for s in states]
        _, counts = _merge_sparse(list(dask.compute(*tasks)))
        if counts.size == 0:
            break  # the pool is empty: the previous level was the finest
        max_count = int(counts.max())
        last = lv == len(grid) - 1
        probs.append(1.0 if last else min(1.0, limit / max_count))
        max_counts.append(max_count)
        log.debug("level %d: grid %s, max count %d, p=%.4g", lv, splits, max_count, probs[-1])
        if probs[-1] >= 1.0:
            break
    return np.array(probs), grid[: len(probs)], max_counts


def _deinterleave(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ix, iy) of Z-codes (even bits x, odd bits y)."""
    codes = codes.astype(np.uint64)
    ix = np.zeros(codes.shape, np.uint64)
    iy = np.zeros(codes.shape, np.uint64)
    for b in range(BITS):
        ix |= ((codes >> np.uint64(2 * b)) & np.uint64(1)) << np.uint64(b)
        iy |= ((codes >> np.uint64(2 * b + 1)) & np.uint64(1)) << np.uint64(b)
    return ix, iy


def _quadtree_runs(bins: np.ndarray, cum: np.ndarray, a: int, b: int, depth: int, cap: int) -> list:
    """Runs [start, end) of bins (one level, sorted) cut along the quadtree: a node of at
    most ``cap`` points is one run; a larger one is split in its four children, and
    consecutive runs inside one node are merged back while they stay within ``cap``."""
    rows = int(cum[b] - cum[a])
    levels_left = (32 - COARSE_SHIFT) // 2 - depth
    if rows <= cap or levels_left <= 0 or b - a <= 1:
        return [(a, b, rows)]
    shift = np.uint64(2 * (levels_left - 1))
    child = (bins[a:b] >> shift) & np.uint64(3)
    edges = [a + int(np.searchsorted(child, c, side="left")) for c in range(4)] + [b]
    runs: list[tuple[int, int, int]] = []
    for c in range(4):
        if edges[c + 1] > edges[c]:
            runs.extend(_quadtree_runs(bins, cum, edges[c], edges[c + 1], depth + 1, cap))
    merged: list[tuple[int, int, int]] = []
    for run in runs:
        if merged and merged[-1][2] + run[2] <= cap:
            merged[-1] = (merged[-1][0], run[1], merged[-1][2] + run[2])
        else:
            merged.append(run)
    return merged


def _spatial_cuts(
    bins: np.ndarray, counts: np.ndarray, cap: int, lo: tuple, hi: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Output partitions of the spatial-first order: start bin, level, rows, box of each.
    Partitions follow the quadtree of each level (so each covers a compact square-ish area)
    and never mix levels."""
    level_of = (bins >> np.uint64(32 - COARSE_SHIFT)).astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(counts)])
    runs: list[tuple[int, int, int]] = []
    level_edges = np.flatnonzero(np.diff(level_of)) + 1
    for a, b in zip(
        np.concatenate([[0], level_edges]), np.concatenate([level_edges, [len(bins)]]), strict=True
    ):
        runs.extend(_quadtree_runs(bins, cum, int(a), int(b), 0, cap))
    # conservative boxes: the union of the coarse cells of each partition
    mask = np.uint64((1 << (32 - COARSE_SHIFT)) - 1)
    cx, cy = _deinterleave(bins & mask)
    side = 2 ** (COARSE_SHIFT // 2)
    span = np.array([hi[0] - lo[0], hi[1] - lo[1]], dtype=np.float64) / 2**BITS
    boxes = np.empty((len(runs), 4))
    for k, (a, b, _) in enumerate(runs):
        x0, x1 = cx[a:b].min() * side, (cx[a:b].max() + 1) * side
        y0, y1 = cy[a:b].min() * side, (cy[a:b].max() + 1) * side
        boxes[k] = [
            lo[0] + x0 * span[0],
            lo[1] + y0 * span[1],
            lo[0] + x1 * span[0],
            lo[1] + y1 * span[1],
        ]
    starts = np.array([bins[a] for a, _, _ in runs], dtype=np.uint64)
    levels = np.array([level_of[a] for a, _, _ in runs], dtype=np.int64)
    return starts, levels, np.array([r for _, _, r in runs], np.int64), boxes


def _feature_cuts(by_feature: np.ndarray, cap: int) -> tuple[np.ndarray, list[list[int]]]:
    """Output partitions of the feature-first order: start key (code * MAX_LEVELS + level) and
    [min code, max code, min level, max level, rows] of each."""
    n_levels, n_codes = by_feature.shape
    starts: list[int] = []
    info: list[list[int]] = []
    small = max(1, cap // 8)
    for c in range(n_codes):
        for lv in range(n_levels):
            n = int(by_feature[lv, c])
            if n == 0:
                continue
            new_feature = not info or info[-1][1] != c
            cur = info[-1][4] if info else 0
            if not info or (new_feature and cur >= small) or (cur and cur + n > cap):
                starts.append(c * MAX_LEVELS + lv)
                info.append([c, c, lv, lv, 0])
            last = info[-1]
            last[1] = c
            last[2], last[3] = min(last[2], lv), max(last[3], lv)
            last[4] += n
    return np.array(starts, dtype=np.int64), info


def build_index(el: Points, *, limit: int, seed: int, row_group_rows: int, name: str) -> Points:
    """The indexed copy of ``el`` (statistics computed now, rows lazy)."""
    if el.npartitions == 0:
        raise PlanError(f"index_points: points {name!r} have no partitions")
    b = el.bounds()
    if not np.all(np.isfinite(b)):
        raise PlanError(f"index_points: points {name!r} are empty; there is nothing to index")
    d = len(el.axes)
    lo, hi = (float(b[0]), float(b[1])), (float(b[d]), float(b[d + 1]))
    # the extent's upper bound is exclusive: widen it by a few ULPs so the maxima fall inside
    hi = tuple(
        h + max(1e-9, 4 * math.ulp(max(abs(h), abs(a)))) for h, a in zip(hi, lo, strict=True)
    )
    fk = el.feature_key
    cats = el.feature_categories
    n_codes = max(1, len(cats))
    parts = el.data.to_delayed()
    states = list(dask.persist(*[dask.delayed(_slim)(p, lo, hi, seed, fk) for p in parts]))
    probs, grid, max_counts = _levels(states, hi[0] - lo[0], hi[1] - lo[1], limit)
    finals = dask.compute(*[dask.delayed(_final_counts)(s, probs, n_codes) for s in states])
    del states
    bins, counts = _merge_sparse([(f[0], f[1]) for f in finals])
    by_feature = sum(f[2] for f in finals)
    s_starts, s_levels, s_rows, s_boxes = _spatial_cuts(bins, counts, row_group_rows, lo, hi)
    f_starts, f_info = _feature_cuts(by_feature, row_group_rows) if fk else (None, [])

    meta = el.data._meta.assign(**{LEVEL: np.array([], dtype=np.uint8)})
    splits = [dask.delayed(_split)(p, lo, hi, seed, fk, probs, s_starts, f_starts) for p in parts]
    # which input partitions feed each output: from the per-input histograms
    s_feed: list[list[int]] = [[] for _ in s_starts]
    f_feed: list[list[int]] = [[] for _ in f_info]
    for i, (pbins, _, pfeat) in enumerate(finals):
        for j in np.unique(np.searchsorted(s_starts, pbins, side="right") - 1):
            s_feed[int(j)].append(i)
        if fk:
            lv_i, c_i = np.nonzero(pfeat)
            fkeys = c_i.astype(np.int64) * MAX_LEVELS + lv_i
            for j in np.unique(np.searchsorted(f_starts, fkeys, side="right") - 1):
                f_feed[int(j)].append(i)

    def collection(order: str, feeds: list[list[int]]) -> dd.DataFrame:
        outs = [
            dask.delayed(_assemble_from)(
                order, meta, *[dask.delayed(_piece)(splits[i], (order, j)) for i in feed]
            )
            for j, feed in enumerate(feeds)
        ]
        return dd.from_delayed(outs, meta=meta, verify_meta=False)

    data = collection("s", s_feed)
    levels_desc = []
    total = by_feature.sum(axis=1)
    for lv, ((bx, by), p) in enumerate(zip(grid, probs, strict=True)):
        levels_desc.append(
            {
                "level": lv,
                "grid_shape": [2**bx, 2**by],
                "cell_size": [(hi[0] - lo[0]) / 2**bx, (hi[1] - lo[1]) / 2**by],
                "probability": float(p),
                "max_count": int(max_counts[lv]),
                "count": int(total[lv]),
            }
        )
    description: dict[str, Any] = {
        "version": INDEX_VERSION,
        "kind": "neuroglancer-spatial-index",
        "limit": int(limit),
        "seed": int(seed),
        "bits": BITS,
        "lower_bound": list(lo),
        "upper_bound": list(hi),
        "levels": levels_desc,
        "n_points": int(total.sum()),
        "row_group_rows": int(row_group_rows),
        "feature_key": fk,
        "feature_counts": by_feature.tolist() if fk else None,
    }
    spatial = IndexCopy(
        data=data,
        levels=np.stack([s_levels, s_levels], axis=1),
        codes=np.tile([0, n_codes - 1 if fk else -1], (len(s_levels), 1)),
        rows=s_rows,
        bounds=s_boxes,
    )
    by_feat = None
    if fk:
        info = np.array(f_info, dtype=np.int64).reshape(-1, 5)
        by_feat = IndexCopy(
            data=collection("f", f_feed),
            levels=info[:, 2:4],
            codes=info[:, 0:2],
            rows=info[:, 4],
            bounds=np.tile([lo[0], lo[1], hi[0], hi[1]], (len(info), 1)),
        )
    index = PointsIndex(description, spatial, by_feat)
    return Points(
        data,
        feature_key=fk,
        instance_key=el.instance_key,
        transforms=dict(el.transforms),
        name=el.name,
        partition_bounds=np.concatenate([s_boxes[:, :2], s_boxes[:, 2:]], axis=1)
        if d == 2
        else None,
        index=index,
    )
