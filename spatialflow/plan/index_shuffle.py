"""The shuffle of the points-index build: the input's rows into ranges of sorted units.

Decisions:

* **A shuffle of few, large tasks, no pandas.** Consecutive units are grouped into *ranges*
  of about ``RANGE_ROWS`` rows. Each input partition is split once per *batch* (ranges of
  both copies holding at most ``BATCH_ROWS`` rows: one batch below ~25M points) by one
  counting sort into pieces grouped by unit (plan/index_columns.py ``Piece``: rows of the
  kept input by reference; a frame read for the batch copies its rows). A spatial-first
  range gathers its pieces' rows unit by unit (``concat_units``) and sorts each unit alone
  (``sort_units``: a stable radix sort of the 64-bit key within a unit, ties by the content
  hash, then input order; half the cost of sorting the range), then permutes each column in
  place, unit by unit (``permute_units``: no second array of the range, which cost a gather
  and as much fresh memory again), and wraps the columns as an Arrow table. A feature-first
  range gathers each column once, unit by unit, in input order (``concat_units``: no keys; a
  unit is one row group, so an order inside it would change none of its statistics: ~0.3 CPU
  s less at 10^7 than sorting, and a file 3% smaller, its index delta-encoded in input
  order); only a unit holding several levels of its features is then ordered by level,
  stably (``level_order``: a query of one feature reads its rows in level order and sorts
  nothing, ~1 ms at 10^8 points; ~12% of the rows at 10^7, ~0.03 CPU s). Columns move as
  numpy arrays through GIL-free numba gathers (pandas takes and concats held the GIL and
  cost twice as much). The pieces and ranges are one hand-written graph layer per batch, and
  the units another (``dask.delayed`` costs ~80 us a call; 10^8 points make ~20,000 pieces).
  A unit's partition is a slice of its range. Writers take the ranges directly (one parquet
  file each, io/points_index.py), batch after batch, so memory stays bounded by a batch.
* ``RANGE_ROWS`` is 2^21: the input is in no spatial or gene order, so every range's gathers
  touch nearly every cache line of the kept input, and fewer, larger ranges cut that traffic.
  At 10^7 points the assembling took ~1.2 CPU s with 2^20 rows a range, ~1.0 with 2^21 and
  ~0.95 with 2^22 (the whole build ~3.3 -> ~3.0 CPU s at 2^21); 2^23 was no better, and
  larger ranges hold more memory per task and leave a longer tail of the last write.
* A range's numeric columns take the memory of ranges already written
  (plan/index_columns.py ``RangeBuffers``), and a spatial-first range of an input read
  straight from parquet computes its keys and hashes again from its own columns
  (``rekey_of``, kernels/morton.py ``range_keys``) rather than gathering them with the rows.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa

from spatialflow.elements.points_index import LEVEL
from spatialflow.kernels.morton import (
    COARSE_SHIFT,
    assign_levels,
    point_state,
    range_keys,
    split_keys,
)
from spatialflow.kernels.rows import (
    gather,
    level_order,
    permute_units,
    route_rows,
    sort_units,
    unit_bounds,
    unit_positions,
)
from spatialflow.plan.index_columns import (
    Layout,
    Piece,
    RangeBuffers,
    concat_take,
    concat_units,
    table_frame,
    take,
)

__all__ = ["BATCH_ROWS", "RANGE_ROWS", "rekey_of", "shuffle", "slim_state"]

RANGE_ROWS = 1 << 21  # rows of one range: one sort task, one parquet file
BATCH_ROWS = 48 << 20  # rows (both copies) split from the input at once


def _index_values(index: pd.Index) -> np.ndarray:
    """The index as uint64 for hashing: integer values as they are, anything else hashed."""
    if pd.api.types.is_integer_dtype(index.dtype):
        return np.asarray(index, dtype=np.int64).view(np.uint64)
    return pd.util.hash_pandas_object(index, index=False).to_numpy(dtype=np.uint64)


def _codes(df: pd.DataFrame, feature_key: str | None) -> np.ndarray:
    if not feature_key:
        return np.zeros(len(df), dtype=np.int32)
    return np.asarray(df[feature_key].cat.codes, dtype=np.int32)


def slim_state(df: pd.DataFrame, lo: tuple, hi: tuple, seed: int, fk: str | None) -> tuple:
    """Quantized x and y, content hash and feature codes of a partition read as a frame."""
    codes = _codes(df, fk)
    ix, iy, h = point_state(
        df["x"].to_numpy(), df["y"].to_numpy(), codes, _index_values(df.index), lo, hi, seed
    )
    return ix, iy, h, codes


def _split(
    src: pd.DataFrame | tuple,
    lo: tuple,
    hi: tuple,
    seed: int,
    fk: str | None,
    probs: np.ndarray,
    layout: Layout,
    wanted: dict[str, tuple[np.ndarray, np.ndarray, int]],
) -> dict[tuple[str, int], tuple]:
    """Split one input partition (a frame, or its kept state and columns) into pieces
    (columns, key, hash, unit offsets) of the ranges of a batch, each piece grouped by unit.
    ``wanted``: per copy, the start keys of the batch's units and of the next unit, the first
    unit of each of its ranges (and the end), and its first range number. Pieces of kept
    columns reference them (the input stays in memory anyway); pieces of a frame read for
    this batch copy their rows, so a batch holds only its own rows of every input."""
    kept = isinstance(src, tuple)
    if kept:
        ix, iy, h, codes, cols, levels = src
        lv, skey, fkey = levels.run(h, probs, lambda lv: split_keys(ix, iy, lv, codes))
    else:
        ix, iy, h, codes = slim_state(src, lo, hi, seed, fk)
        cols = layout.columns(src)
        lv, skey, fkey = split_keys(ix, iy, assign_levels(h, probs), codes)
    cols = list(cols)
    cols[layout.names.index(LEVEL)] = lv
    out: dict[tuple[str, int], tuple] = {}
    for order, (starts, firsts, a) in wanted.items():
        key = skey if order == "s" else fkey
        firsts = firsts - firsts[0]
        perm, offsets = route_rows(key, _SHIFT[order], starts, 0, int(firsts[-1]))
        if perm.size == 0:
            continue
        if kept:
            pcols, pkey, ph, rows = cols, key, h, perm
        else:  # this batch's rows of the frame, copied (the frame is then released)
            pcols, pkey, ph = concat_take([cols], perm), gather(key, perm), gather(h, perm)
            rows = np.arange(perm.size, dtype=np.int32)
        for j in range(len(firsts) - 1):
            units = offsets[firsts[j] : firsts[j + 1] + 1]
            s, e = int(units[0]), int(units[-1])
            if e > s:
                out[(order, a + j)] = Piece(pcols, rows[s:e], pkey, ph, units - s)
    return out


_SHIFT = {"s": COARSE_SHIFT, "f": 32}  # unit start keys: coarse bins, (code, level) words


def _piece(split: dict, order: str, r: int) -> Piece | None:
    return split.get((order, r))


def _assemble(
    layout: Layout, order: str, buffers: RangeBuffers, rekey: tuple | None, *pieces: Piece | None
) -> pa.Table:
    try:
        return _assembled(layout, order, buffers, rekey, [p for p in pieces if p is not None])
    finally:
        buffers.done()


def rekey_of(layout: Layout, fk: str | None, lo: tuple, hi: tuple, seed: int) -> tuple | None:
    """How a spatial-first range computes its rows' keys and hashes again from its own
    columns (``range_keys``), or None when they could differ from those of the first pass:
    only for input read straight from parquet (``read_state``, whose feature codes are the
    column's own), with float coordinates and an integer index."""
    names, kinds, dtypes = layout.names, layout.kinds, layout.dtypes
    at = {n: i for i, n in enumerate(names[:-1])}
    if "x" not in at or "y" not in at or (fk and (fk not in at or kinds[at[fk]] != "cat")):
        return None
    if any(kinds[at[c]] != "num" or dtypes[at[c]].kind != "f" for c in ("x", "y")):
        return None
    if kinds[-1] != "num" or dtypes[-1].kind not in "iu":
        return None
    return (at["x"], at["y"], at[LEVEL], at[fk] if fk else -1, lo, hi, seed)


def _assembled(
    layout: Layout, order: str, buffers: RangeBuffers, rekey: tuple | None, got: list[Piece]
) -> pa.Table:
    """One range of copy ``order``, as Arrow: its pieces' rows joined unit by unit
    (``concat_units``: each unit's rows in input order, one gather straight from the inputs).
    Feature-first: a unit holding several levels of its features ordered by level, stably
    (``level_order``: a unit is one row group of whole (feature, level) cells, so no other
    order would change its statistics, and a query of one feature then reads its rows in
    level order and sorts nothing). Spatial-first: each unit sorted alone (``sort_units``:
    stable, by key, then hash). Columns are permuted in place. Numeric columns are written
    into ``buffers`` (memory of ranges already written); with ``rekey`` (``rekey_of``) the
    sort keys and hashes are computed again from the joined columns rather than gathered
    with them."""
    if not got:
        return layout.schema.empty_table()
    bounds = unit_bounds(np.stack([p.units for p in got]))
    if order == "f":
        cols = concat_units(got, buffers)
        perm = buffers.take(len(cols[0]), np.int32)
        moved = level_order(cols[layout.names.index(LEVEL)], bounds, perm)
        return layout.table(_permuted(cols, perm, bounds, moved) if moved.size else cols)
    if rekey is None:  # the sort keys and hashes joined as two more columns
        *cols, key, h = concat_units(
            [Piece([*p.cols, p.key, p.h], p.rows, p.key, p.h, p.units) for p in got], buffers
        )
    else:
        cols = concat_units(got, buffers)
        x, y, lv, code, lo, hi, seed = rekey
        n = len(cols[x])
        key, h = buffers.take(n, np.uint64), buffers.take(n, np.uint32)
        codes = cols[code] if code >= 0 else np.zeros(n, np.int16)
        range_keys(cols[x], cols[y], cols[lv], codes, cols[-1], lo, hi, seed, key, h)
    perm = sort_units(bounds, key, h)
    del key, h
    return layout.table(_permuted(cols, perm, bounds))


def _permuted(
    cols: list[Any], perm: np.ndarray, bounds: np.ndarray, units: np.ndarray | None = None
) -> list[Any]:
    """The columns with each unit's rows (only ``units``' when given) in the order ``perm``:
    numeric ones in place, Arrow ones taken."""
    positions = None
    for j, col in enumerate(cols):
        if isinstance(col, np.ndarray) and col.dtype.kind in "biuf":
            permute_units(col, perm, bounds, units)
        else:  # an Arrow column: taken in the new order
            if positions is None:
                positions = unit_positions(perm, bounds, units)
            cols[j] = take(col, positions)
    return cols


def _unit(table: pa.Table, a: int, b: int) -> pd.DataFrame:
    return table_frame(table.slice(a, b - a))


def _ranges(rows: np.ndarray) -> np.ndarray:
    """First unit of each range (consecutive units of about RANGE_ROWS rows), then the end."""
    firsts = [0]
    cur = 0
    for i, n in enumerate(rows):
        if cur and cur + int(n) > RANGE_ROWS:
            firsts.append(i)
            cur = 0
        cur += int(n)
    return np.array([*firsts, len(rows)], dtype=np.int64)


def shuffle(
    parts: list[Any],
    copies: dict[str, tuple],
    meta: pd.DataFrame,
    layout: Layout,
    args: tuple,
    rekey: tuple | None = None,
) -> dict[str, Any]:
    """The lazy ranges and unit partitions of each copy, and the batches of ranges
    (``rekey``: see ``rekey_of``)."""
    order_name = {"s": "spatial", "f": "by_feature"}
    plans = {}
    for order, (starts, rows) in copies.items():
        firsts = _ranges(rows)
        sizes = np.add.reduceat(rows, firsts[:-1]) if len(rows) else np.zeros(0, np.int64)
        plans[order] = (starts, firsts, sizes)
    # batches: consecutive ranges (spatial, then feature-first) up to BATCH_ROWS rows
    batches: list[list[tuple[str, int]]] = []
    cur = 0
    for order, (_, _, sizes) in plans.items():
        for r, n in enumerate(sizes):
            if not batches or (cur and cur + int(n) > BATCH_ROWS):
                batches.append([])
                cur = 0
            batches[-1].append((order, r))
            cur += int(n)
    ranges: dict[str, list[Any]] = {o: [None] * len(p[2]) for o, p in plans.items()}
    buffers = RangeBuffers(sum(len(b) for b in batches))
    for batch in batches:
        wanted = {}
        for order in plans:
            rs = [r for o, r in batch if o == order]
            if rs:
                starts, firsts, _ = plans[order]
                a, b = rs[0], rs[-1] + 1
                # the batch's units, and the next unit's start (rows from there are left out)
                wanted[order] = (starts[firsts[a] : firsts[b] + 1], firsts[a : b + 1], a)
        splits = [dask.delayed(_split)(p, *args[:5], layout, wanted) for p in parts]
        for (order, r), assembled in zip(
            batch, _assemble_layer(splits, batch, layout, buffers, rekey), strict=True
        ):
            ranges[order][r] = assembled
    out: dict[str, Any] = {"batches": [[(order_name[o], r) for o, r in batch] for batch in batches]}
    for order, (_, firsts, _) in plans.items():
        data = _units(ranges[order], firsts, copies[order][1], meta, order)
        out[order] = (data, ranges[order], firsts)
    return out


def _assemble_layer(
    splits: list[Any],
    batch: list[tuple[str, int]],
    layout: Layout,
    buffers: RangeBuffers,
    rekey: tuple | None,
) -> list[Any]:
    """The lazy range frames of a batch: one piece task per (input, range), one assemble
    task per range, written as one graph layer (``dask.delayed`` costs ~80 us a call, and
    10^8 points make ~20,000 pieces)."""
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    name = f"points-index-range-{dask.base.tokenize(*[s.key for s in splits], batch)}"
    layer: dict[Any, Any] = {}
    for order, r in batch:
        pieces = []
        for i, split in enumerate(splits):
            key = (f"{name}-piece", order, r, i)
            layer[key] = (_piece, split.key, order, r)
            pieces.append(key)
        layer[(name, order, r)] = (_assemble, layout, order, buffers, rekey, *pieces)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=splits)
    return [Delayed((name, order, r), graph, layer=name) for order, r in batch]


def _units(ranges: list[Any], firsts: np.ndarray, rows: np.ndarray, meta: Any, order: str) -> Any:
    """The dask DataFrame whose partition ``u`` is unit ``u``: a slice of its range. One
    graph layer written directly (thousands of ``dask.delayed`` calls cost seconds)."""
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    name = f"points-index-unit-{order}-{dask.base.tokenize(*[r.key for r in ranges])}"
    offsets = np.concatenate([[0], np.cumsum(rows)])
    layer: dict[Any, Any] = {}
    for r in range(len(firsts) - 1):
        base = offsets[firsts[r]]
        for u in range(firsts[r], firsts[r + 1]):
            a, b = int(offsets[u] - base), int(offsets[u + 1] - base)
            layer[(name, u)] = (_unit, ranges[r].key, a, b)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=ranges)
    units = [Delayed((name, u), graph, layer=name) for u in range(len(rows))]
    return dd.from_delayed(units, meta=meta, verify_meta=False)
