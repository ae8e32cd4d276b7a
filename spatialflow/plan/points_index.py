"""Building the multiscale points index on Dask: level statistics, then a spatial shuffle.

Decisions (the algorithm itself is described in kernels/morton.py):

* **Statistics first, eagerly.** The probability of level ``l`` depends on the counts left by
  levels ``< l``, so the levels are decided one after the other, each by one small reduction
  (per-cell counts of the pool, dense when the grid is small, gathered and summed on the
  client: their size is the number of occupied cells, never the number of points). Like
  dask's ``sort_values``, which computes its divisions when the graph is built,
  ``build_index`` runs these reductions and returns a Points element whose rows are still
  lazy. The inputs are first reduced to a persisted slim state of 11 bytes a point (quantized
  x and y, a 32-bit content hash, the feature code, and the levels drawn so far, ``_Levels``),
  so each level's pass is one numba loop over that state drawing only the new level; partial
  histograms are summed in a tree of tasks.
* **Cuts from histograms.** A last pass counts points per (level, Z-cell; a level's cells are
  only as fine as its units need, at most 2**10 a side, see plan/index_cuts.py) and per (level,
  feature), straight from the state into one dense histogram per partition (summed; sorted
  sparse histograms only past ``DENSE_BINS`` bins); these give the output units (row
  groups): spatial-first ones (one level each, cut along the quadtree between those cells at
  about ``row_group_rows`` rows) and feature-first ones (cut at feature changes once a unit
  holds ``row_group_rows // 8`` rows, and between levels of a feature that would pass
  ``row_group_rows``). The row count of every unit is known before any row moves.
* **Read once when it fits in memory.** When the input's row count is known (a stored
  element) and its columns, state and split keys take at most ``KEEP_FRACTION`` of the
  memory (the workers' limits, or this machine's available memory: ``_keeps_input``), the
  first pass keeps each partition's columns next to its state (read from parquet row groups
  straight into numpy, ``index_columns.read_state``), and every batch splits those: the
  input is read once. Otherwise each batch reads the input again (at 10^8 points with 5
  batches, reading again cost ~25 s of a ~52 s build).
* **The shuffle** (plan/index_shuffle.py): consecutive units grouped into ranges, each
  input split once per batch, each range assembled and written as one parquet file.
* The output does not depend on the input partitioning: the draws hash each point's
  content, the cuts come from global histograms, and pieces are concatenated in input order.
* A histogram cell holding more than ``row_group_rows`` points of one level yields a unit that
  large (a very dense spot); it is never split inside.
* Profile at 10^7 points, 1,000 genes (2 cores, shared): the first design split every input
  into a pandas piece per output row group and wrote each through its own pandas -> Arrow
  conversion (~16x spatialdata's write); the pandas shuffle of ranges was ~4.6x (8.6 CPU s).
  Then (at e9556f1) the build took ~4.7 CPU s (~2.7 s wall, ~3.8x spatialdata's 0.7 s
  write of the same points, median of 3 runs): assembling the ranges ~1.9 s (gathers from the kept input
  ~1.0, unit sorts ~0.3, the second gather ~0.2), parquet encoding and writing of the two
  copies ~1.0-1.3 s, reading and the first pass ~0.7 s, the split ~0.45 s, the level passes
  and the histogram ~0.35 s; memory never touched before costs ~2 ms a MB on this VM
  (~0.3 ms when reused), which is why the shuffle copies rows as few times as it can
  (scattering columns straight to their sorted places instead of gathering them twice was
  tried: slower, 1.50 -> 1.84 s). Arrow's default (mimalloc) pool in threaded parquet reads was ~0.7 s of
  that system time where jemalloc takes ~0.2 s (reads are now single-threaded per task
  and take the system allocator through their own reader, io/columns.py).
* Where a 10^7-point build's CPU went at 2^21 (task busy times). It was ~3.5 CPU s (~1.9 s
  wall, ~3.9x spatialdata's 0.5 s write): ~1.3 s assembling ranges, the feature-first
  gathers ~0.45 of it (``gather_units`` indexed by a signed sum numba cannot prove
  non-negative: 2.6x slower than a plain gather) and the spatial-first second gather into
  new arrays ~0.15 plus their fresh pages. With slice-indexed unit gathers, units sorted and
  permuted in place, the stored int16 codes hashed as they are and vectorised cuts, it is
  ~2.9 CPU s (~1.65 s wall, 2.8-3.3x a 0.5-0.58 s write): ~0.87 s assembling, ~0.84 s
  encoding and writing (pyarrow's floor for these columns: ~70 ms a 2M-row file), ~0.4 s
  reading and the first pass, ~0.23 s level passes, ~0.16 s split, ~0.09 s final histogram,
  and ~0.2 s of wall with no task running (cuts ~30 ms, removing the previous output ~60 ms,
  graphs ~30 ms). Zeroing fresh pages is still a large share of the system time (numpy's
  huge pages help: without them the build was ~10% slower); a full (gen-2) garbage
  collection, ~0.15 s in this process, lands in about one build in three (the per-unit
  ``Delayed`` objects survive longest; ``dd.from_graph`` would make fewer but tokenizes its
  layer, ~80 ms); the glibc mmap/trim thresholds and the Arrow pool (jemalloc, system)
  changed nothing measurable, set for the whole process.
* Then the system time itself (0.4-1.3 s a build, the largest source of variance) was
  traced to memory that was fresh in some builds and reused in others: the input read
  through Arrow's default pool (mimalloc, which returns freed memory to the OS soon after;
  the reads now take the system allocator, io/columns.py) and the ranges' columns (now
  reused from ranges already written, ``RangeBuffers``). The level draws were vectorised
  (``extend_levels``: 16x faster), and spatial-first ranges of a parquet input compute their
  keys and hashes again from their columns (``rekey_of``) instead of gathering them. The build
  is ~2.4 CPU s (~1.3-1.4 s wall, 2.6x a 0.53 s write): ~0.83 s encoding and writing,
  ~0.63 s assembling, ~0.29 s reading and the first pass, ~0.19 s split, ~0.10 s level
  passes, ~0.06 s final histogram, with ~0.17 s of wall with no task running (cuts and
  graphs ~70 ms between the statistics and the shuffle, removing the previous output ~60 ms
  after it) and ~0.14 s with one.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import dask
import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.elements.points_index import INDEX_VERSION, LEVEL, IndexCopy, PointsIndex
from spatialflow.errors import PlanError
from spatialflow.kernels.morton import (
    BITS,
    bin_offsets,
    coarse_counts,
    coarse_histogram,
    extend_levels,
    grid_levels,
    pool_counts,
    sparse_bins,
    split_keys,
)
from spatialflow.plan.index_columns import (
    Layout,
    read_state,
    row_group_source,
)
from spatialflow.plan.index_cuts import coarse_bits, feature_cuts, spatial_cuts
from spatialflow.plan.index_shuffle import rekey_of, shuffle, slim_state

__all__ = ["build_index"]

log = logging.getLogger(__name__)
DENSE_BINS = 1 << 23  # coarse histograms up to this many bins are dense arrays, else sparse
KEEP_FRACTION = 0.5  # of the memory (``_memory_bytes``) the kept input may take
STATE_BYTES = 11  # a point's slim state: quantized x, y, content hash, feature code, level
SPLIT_KEY_BYTES = 17  # a point's level and two sort keys while a batch is split


# --- per-partition kernels (run on the workers) -------------------------------------------
class _Levels:
    """The levels drawn so far for one partition's points (int8, -1: still in the pool), kept
    next to its persisted state and extended in place as the levels are decided, so each pass
    draws only the new level (kernels/morton.py ``extend_levels``). A call whose
    probabilities do not extend those already applied (a retried task, another build) starts
    over, so no result depends on the calls before it; a lock keeps concurrent tasks on one
    partition apart. Pickled (a state moved to another worker), it carries its levels."""

    def __init__(self) -> None:
        self._lv: np.ndarray | None = None
        self._probs = np.empty(0)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"lv": self._lv, "probs": self._probs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lv, self._probs = state["lv"], state["probs"]
        self._lock = threading.Lock()

    def __sizeof__(self) -> int:
        return 64 + (0 if self._lv is None else self._lv.nbytes)

    def run(self, h: np.ndarray, probs: np.ndarray, fn: Any) -> Any:
        """``fn(levels)`` for the levels under ``probs`` (the lock held: ``fn`` reads them)."""
        probs = np.asarray(probs, dtype=np.float64)
        with self._lock:
            k = len(self._probs)
            if self._lv is None or k > len(probs) or not np.array_equal(self._probs, probs[:k]):
                self._lv, k = np.full(len(h), -1, dtype=np.int8), 0
            if len(probs) > k:
                extend_levels(h, self._lv, probs, k)
                self._probs = probs.copy()
            return fn(self._lv)


def _slim(
    df: pd.DataFrame, lo: tuple, hi: tuple, seed: int, fk: str | None, layout: Layout | None
) -> tuple:
    """The slim state of a partition, and with ``layout`` its columns too (kept for the
    shuffle, which then does not read the input again), and its levels (``_Levels``)."""
    ix, iy, h, codes = slim_state(df, lo, hi, seed, fk)
    codes = codes.astype(np.int16 if codes.size == 0 or codes.max() < 2**15 else np.int32)
    return ix, iy, h, codes, None if layout is None else layout.columns(df), _Levels()


def _read_state(*args: Any) -> tuple:
    """``read_state`` (the state and columns of a stored partition) and its levels."""
    return (*read_state(*args), _Levels())


def _pool_counts(state: tuple, probs: np.ndarray, splits: tuple[int, int]) -> tuple:
    ix, iy, h = state[:3]
    return state[5].run(h, probs, lambda lv: pool_counts(ix, iy, lv, splits))


def _final_counts(state: tuple, probs: np.ndarray, n_codes: int, bits: np.ndarray) -> tuple:
    ix, iy, h, codes = state[:4]
    if bin_offsets(bits)[-1] <= DENSE_BINS:
        return state[5].run(h, probs, lambda lv: coarse_histogram(ix, iy, lv, codes, bits, n_codes))
    _, skey, fkey = state[5].run(h, probs, lambda lv: split_keys(ix, iy, lv, codes))
    return coarse_counts(skey, fkey, len(probs), n_codes, bits)


# --- planning on the client -----------------------------------------------------------------
def _merge_sparse(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts])
    top = int(keys.max()) + 1 if keys.size else 0
    if top <= max(1 << 16, 4 * keys.size):  # a key space not much larger: a dense sum
        # (a dense array far larger than the keys costs more in fresh pages than sorting)
        dense = np.bincount(keys, weights=counts, minlength=top)
        uniq = np.flatnonzero(dense)
        return uniq.astype(np.int64), dense[uniq].astype(np.int64)
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inv, weights=counts, minlength=len(uniq)).astype(np.int64)


def _merge_pairs(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return _merge_sparse(list(parts))


def _merge_final(*parts: tuple) -> tuple:
    if len(parts[0]) == 2:  # dense histograms (``coarse_histogram``): sums
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    bins, counts = _merge_sparse([(p[0], p[1]) for p in parts])
    return bins, counts, sum(p[2] for p in parts)


def _tree(tasks: list[Any], combine: Any, width: int = 8) -> Any:
    """One lazy result of ``combine`` over ``tasks`` in a tree of fan-in ``width`` (the
    client never holds every partition's histogram at once)."""
    while len(tasks) > 1:
        tasks = [dask.delayed(combine)(*tasks[i : i + width]) for i in range(0, len(tasks), width)]
    return tasks[0]


def _levels(
    states: list[Any], width: float, height: float, limit: int
) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
    """Decide each level's probability (one reduction per level)."""
    grid = grid_levels(width, height)
    probs: list[float] = []
    max_counts: list[int] = []
    totals: list[int] = []
    for lv, splits in enumerate(grid):
        p_so_far = np.array(probs, dtype=np.float64)
        tasks = [dask.delayed(_pool_counts)(s, p_so_far, splits) for s in states]
        ((_, counts),) = dask.compute(_tree(tasks, _merge_pairs))
        if counts.size == 0:
            break  # the pool is empty: the previous level was the finest
        max_count = int(counts.max())
        last = lv == len(grid) - 1
        probs.append(1.0 if last else min(1.0, limit / max_count))
        max_counts.append(max_count)
        totals.append(int(counts.sum()))
        log.debug("level %d: grid %s, max count %d, p=%.4g", lv, splits, max_count, probs[-1])
        if probs[-1] >= 1.0:
            break
    return np.array(probs), grid[: len(probs)], max_counts, totals


def _memory_bytes() -> int:
    """Memory the build may plan with: the workers' memory limits summed when a distributed
    client runs the graph, else what this machine has available."""
    import psutil

    client = getattr(dask.base.get_scheduler(), "__self__", None)
    if client is not None and hasattr(client, "scheduler_info"):
        try:  # every worker (some releases list only the first few by default)
            info = client.scheduler_info(n_workers=-1)
        except TypeError:  # releases without the argument list them all
            info = client.scheduler_info()
        limits = [w.get("memory_limit") or 0 for w in info["workers"].values()]
        if limits and all(limits):
            return int(sum(limits))
    return int(psutil.virtual_memory().available)


def _keeps_input(el: Points, layout: Layout) -> bool:
    """Whether the first pass keeps the input's columns for the shuffle (then the input is
    read once, however many batches): its rows are known without reading it, and its
    columns, state and split keys fit ``KEEP_FRACTION`` of the memory (``_memory_bytes``)."""
    source = el.column_source
    if source is None:
        return False
    rows = [source.rows(k) for k in range(el.npartitions)]
    if any(r is None for r in rows):
        return False
    width = sum(8 if d is None else np.dtype(d).itemsize for d in layout.dtypes)
    per_row = width + STATE_BYTES + SPLIT_KEY_BYTES
    return sum(rows) * per_row <= KEEP_FRACTION * _memory_bytes()


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
    meta = el.data._meta.assign(**{LEVEL: np.array([], dtype=np.uint8)})
    layout = Layout.of(meta)
    keep = _keeps_input(el, layout)  # then the shuffle takes the columns the first pass kept
    source = row_group_source(el, layout) if keep else None
    if source is not None:
        tasks = [
            dask.delayed(_read_state)(source, k, lo, hi, seed, fk, layout)
            for k in range(el.npartitions)
        ]
    else:
        tasks = [dask.delayed(_slim)(p, lo, hi, seed, fk, layout if keep else None) for p in parts]
    states = list(dask.persist(*tasks))
    probs, grid, max_counts, totals = _levels(states, hi[0] - lo[0], hi[1] - lo[1], limit)
    bits = coarse_bits(grid, probs, totals, limit, row_group_rows)
    (total,) = dask.compute(
        _tree([dask.delayed(_final_counts)(s, probs, n_codes, bits) for s in states], _merge_final)
    )
    if len(total) == 2:
        bins, counts = sparse_bins(total[0], bits)
        by_feature = total[1]
    else:
        bins, counts, by_feature = total
    if keep:
        parts = states
    del states
    bins = bins.astype(np.uint64)
    s_starts, s_levels, s_rows, s_boxes = spatial_cuts(bins, counts, row_group_rows, lo, hi, bits)
    copies = {"s": (s_starts.astype(np.uint64), s_rows)}
    if fk:
        f_starts, f_info = feature_cuts(by_feature, row_group_rows)
        info = np.array(f_info, dtype=np.int64).reshape(-1, 5)
        copies["f"] = (f_starts.astype(np.uint64), info[:, 4])
    rekey = rekey_of(layout, fk, lo, hi, seed) if source is not None else None
    built = shuffle(parts, copies, meta, layout, (lo, hi, seed, fk, probs), rekey)
    data, s_ranges, s_range_units = built["s"]
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
        ranges=s_ranges,
        range_units=s_range_units,
    )
    by_feat = None
    if fk:
        f_data, f_ranges, f_range_units = built["f"]
        by_feat = IndexCopy(
            data=f_data,
            levels=info[:, 2:4],
            codes=info[:, 0:2],
            rows=info[:, 4],
            bounds=np.tile([lo[0], lo[1], hi[0], hi[1]], (len(info), 1)),
            ranges=f_ranges,
            range_units=f_range_units,
        )
    index = PointsIndex(description, spatial, by_feat, batches=built["batches"])
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
