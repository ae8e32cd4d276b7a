"""Row moves and orders of the points-index shuffle: routing rows to ranges, stable radix
sorts, and gathers and in-place permutations of columns unit by unit.

Decisions:

* Rows are routed to their range by a lookup table of at most 2**16 cells over the key's
  high bits, then a step over the few range starts inside a cell (``route_rows``: a binary
  search per row cost ten times more), grouped by range in a stable counting sort.
* A range joined unit by unit sorts each unit alone (``sort_units``: in cache, half the
  cost of sorting the range): a stable LSD radix sort over the bits in which the unit's
  keys differ (about twice numpy's stable sort), ties broken by the content hash, then
  input order; then it permutes its columns in place, unit by unit (``permute_units``: no
  second array of the range).
* Columns move through ``gather`` and ``gather_units`` (``np.take`` holds the GIL); a unit
  gather indexes each unit through slices that start at 0 (indexing by a signed sum, which
  numba cannot prove non-negative, was 2.6x slower).

Pure numpy/numba: no Dask, no I/O.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "gather",
    "gather_units",
    "level_order",
    "permute_units",
    "route_rows",
    "sort_units",
    "unit_bounds",
    "unit_destinations",
    "unit_positions",
]


@numba.njit(cache=True, nogil=True)
def _route(key, shift, starts, lut, t, a, b):  # type: ignore[no-untyped-def]
    n_groups = b - a
    n = key.size
    ids = np.empty(n, dtype=np.int32)
    counts = np.zeros(n_groups + 1, dtype=np.int64)
    sh, tt = np.uint64(shift), np.uint64(t)
    last = lut.size - 1
    for i in range(n):
        k = key[i] >> sh
        g = lut[min(np.int64(k >> tt), last)]  # the last start <= the table cell's first key
        while g + 1 < starts.size and starts[g + 1] <= k:
            g += 1
        g -= a
        if 0 <= g < n_groups:
            ids[i] = g
            counts[g + 1] += 1
        else:
            ids[i] = -1  # a range of another batch
    for g in range(n_groups):
        counts[g + 1] += counts[g]
    pos = counts[:-1].copy()
    perm = np.empty(counts[n_groups], dtype=np.int32)  # a partition has < 2**31 rows
    for i in range(n):
        g = ids[i]
        if g >= 0:
            perm[pos[g]] = i
            pos[g] += 1
    return perm, counts


def route_rows(
    key: np.ndarray, shift: int, starts: np.ndarray, a: int, b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by range ``a..b-1`` (a range is the last of ``starts`` <= key >> shift),
    as a stable counting sort gives them: positions (int32), and where each range's rows
    start; rows of other ranges are left out. The range of a key is looked up in a table
    of at most 2**16 cells, then stepped over the few starts inside its cell (a binary
    search per row costs ten times more)."""
    starts = np.ascontiguousarray(starts, dtype=np.uint64)
    top = int(key.max() >> np.uint64(shift)) if key.size else 0
    top = max(top, int(starts[-1]) if starts.size else 0)
    t = max(0, top.bit_length() - 16)
    cells = np.arange((top >> t) + 1, dtype=np.uint64) << np.uint64(t)
    lut = (np.searchsorted(starts, cells, side="right") - 1).astype(np.int64)
    return _route(key, int(shift), starts, lut, t, int(a), int(b))


@numba.njit(cache=True, nogil=True)
def _ties(order, sorted_key, h):  # type: ignore[no-untyped-def]
    n = order.size
    i = 0
    while i < n:
        j = i + 1
        while j < n and sorted_key[j] == sorted_key[i]:
            j += 1
        if j - i > 64:  # a long run of equal keys (duplicate points): a stable sort by hash
            seg = order[i:j].copy()
            sub = np.argsort(h[seg], kind="mergesort")
            order[i:j] = seg[sub]
        elif j - i > 1:  # a short run: stable insertion sort by hash
            for a in range(i + 1, j):
                cur = order[a]
                b = a - 1
                while b >= i and h[order[b]] > h[cur]:
                    order[b + 1] = order[b]
                    b -= 1
                order[b + 1] = cur
        i = j
    return order


@numba.njit(cache=True, nogil=True)
def _radix(key, lo, n_bits):  # type: ignore[no-untyped-def]
    """Stable LSD radix argsort of ``key - lo`` (which fits in ``n_bits`` bits); the keys
    travel with the positions so every pass reads sequentially. The histograms of all digits
    come from one read, and a digit every key shares is skipped."""
    n = key.size
    passes = max(1, -(-n_bits // 12))
    digit = -(-n_bits // passes)  # equal digits of at most 12 bits (counts stay in L1)
    size = 1 << digit
    mask = np.uint64(size - 1)
    rel = key - lo
    counts = np.zeros((passes, size + 1), dtype=np.int64)
    for i in range(n):
        v = rel[i]
        for p in range(passes):
            counts[p, np.int64((v >> np.uint64(p * digit)) & mask) + 1] += 1
    order = np.arange(n)
    tmp_o = np.empty(n, dtype=np.int64)
    tmp_k = np.empty(n, dtype=np.uint64)
    for p in range(passes):
        c = counts[p]
        if c.max() == n:  # every key has the same digit: the order stands
            continue
        for d in range(size):
            c[d + 1] += c[d]
        sh = np.uint64(p * digit)
        for i in range(n):
            d = np.int64((rel[i] >> sh) & mask)
            q = c[d]
            tmp_o[q] = order[i]
            tmp_k[q] = rel[i]
            c[d] = q + 1
        order, tmp_o = tmp_o, order
        rel, tmp_k = tmp_k, rel
    return order, rel


@numba.njit(cache=True, nogil=True)
def _gather(src, order, out):  # type: ignore[no-untyped-def]
    for i in range(order.size):
        out[i] = src[order[i]]
    return out


def gather(src: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``src[order]`` for a 1-d numeric array, without the GIL (``np.take`` holds it, so
    threads taking columns run one at a time; this is also a quarter cheaper)."""
    if src.dtype.kind not in "biuf" or src.ndim != 1:
        return src.take(order)
    return _gather(src, np.ascontiguousarray(order), np.empty(order.size, src.dtype))


@numba.njit(cache=True, nogil=True)
def _gather_units(src, rows, units, dest, out):  # type: ignore[no-untyped-def]
    # each unit through slices indexed from 0: indexing by ``units[u] + i`` (a signed sum
    # numba cannot prove non-negative) made the loop ~2.6x slower, ~0.3 CPU s of 10^7 points
    for u in range(units.size - 1):
        r = rows[units[u] : units[u + 1]]
        o = out[dest[u] : dest[u] + r.size]
        for i in range(r.size):
            o[i] = src[r[i]]
    return out


def unit_bounds(offsets: np.ndarray) -> np.ndarray:
    """Where each unit starts (and the last ends) when the pieces are joined unit by unit:
    ``offsets[p, u]`` to ``offsets[p, u + 1]`` are piece ``p``'s rows of unit ``u``."""
    lens = np.diff(np.asarray(offsets, dtype=np.int64), axis=1)
    return np.concatenate([[0], np.cumsum(lens.sum(axis=0))])


def unit_destinations(offsets: np.ndarray) -> np.ndarray:
    """Where each piece's rows of each unit go when the pieces are joined unit by unit (unit
    ``u``: piece 0's rows, then piece 1's, ...): ``offsets[p, u]`` to ``offsets[p, u + 1]``
    are piece ``p``'s rows of unit ``u``; the result is (pieces, units)."""
    lens = np.diff(np.asarray(offsets, dtype=np.int64), axis=1)
    return unit_bounds(offsets)[:-1] + np.cumsum(lens, axis=0) - lens


def gather_units(
    src: np.ndarray, rows: np.ndarray, units: np.ndarray, dest: np.ndarray, out: np.ndarray
) -> None:
    """``out[dest[u] + k] = src[rows[units[u] + k]]`` for every unit ``u`` of one piece (rows
    ``units[u]`` to ``units[u + 1]`` of ``rows``), without the GIL."""
    _gather_units(
        src,
        np.ascontiguousarray(rows),
        np.ascontiguousarray(units, dtype=np.int64),
        np.ascontiguousarray(dest, dtype=np.int64),
        out,
    )


@numba.njit(cache=True, nogil=True)
def _sort_units(bounds, key, h):  # type: ignore[no-untyped-def]
    perm = np.zeros(key.size, dtype=np.int32)  # a range has < 2**31 rows
    for u in range(bounds.size - 1):
        s, e = bounds[u], bounds[u + 1]
        if e - s <= 1:
            continue
        ku = key[s:e]
        lo = ku.min()
        span = ku.max() - lo
        n_bits = 0
        while span > 0:
            n_bits += 1
            span >>= np.uint64(1)
        sub, rel = _radix(ku, lo, n_bits)
        sub = _ties(sub, rel, h[s:e])
        p = perm[s:e]
        for i in range(sub.size):
            p[i] = sub[i]
    return perm


def sort_units(bounds: np.ndarray, key: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Each unit's own order by (key, hash, position), when the rows are joined unit by unit
    (unit ``u``: rows ``bounds[u]`` to ``bounds[u + 1]``) and units partition the keys in
    order: ``perm[bounds[u] + i]`` is the position within unit ``u`` of its ``i``-th row.
    Each unit is sorted alone (a few thousand rows, in cache), about half the cost of sorting
    the whole range."""
    return _sort_units(
        np.ascontiguousarray(bounds, dtype=np.int64),
        np.ascontiguousarray(key, dtype=np.uint64),
        np.ascontiguousarray(h),
    )


@numba.njit(cache=True, nogil=True)
def _level_order(lv, bounds, perm):  # type: ignore[no-untyped-def]
    moved = np.zeros(bounds.size - 1, dtype=np.bool_)
    counts = np.zeros(257, dtype=np.int64)
    for u in range(bounds.size - 1):
        s, e = bounds[u], bounds[u + 1]
        for i in range(s + 1, e):
            if lv[i] < lv[i - 1]:
                moved[u] = True
                break
        if not moved[u]:
            continue
        counts[:] = 0  # a stable counting sort of the unit by level
        for i in range(s, e):
            counts[np.int64(lv[i]) + 1] += 1
        for k in range(1, 257):
            counts[k] += counts[k - 1]
        for i in range(s, e):
            level = np.int64(lv[i])
            perm[s + counts[level]] = i - s
            counts[level] += 1
    return np.flatnonzero(moved)


def level_order(lv: np.ndarray, bounds: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The units not already in level order (unit ``u``: rows ``bounds[u]`` to
    ``bounds[u + 1]``; ``lv`` uint8), and in ``perm`` (int32, one per row) each of their
    own orders by level, then position, as ``sort_units`` gives orders; ``perm`` is left
    as it was for the other units (a unit is only one row group's worth of rows, and most
    hold one level)."""
    return _level_order(
        np.ascontiguousarray(lv), np.ascontiguousarray(bounds, dtype=np.int64), perm
    )


@numba.njit(cache=True, nogil=True)
def _permute_units(col, perm, bounds, units, largest):  # type: ignore[no-untyped-def]
    scratch = np.empty(largest, dtype=col.dtype)
    for u in units:
        c = col[bounds[u] : bounds[u + 1]]
        p = perm[bounds[u] : bounds[u + 1]]
        m = c.size
        scratch[:m] = c
        for i in range(m):
            c[i] = scratch[p[i]]
    return col


def permute_units(
    col: np.ndarray, perm: np.ndarray, bounds: np.ndarray, units: np.ndarray | None = None
) -> np.ndarray:
    """``col`` with each unit's rows put in the order ``perm`` of ``sort_units``, in place
    (one unit at a time through a small scratch that stays in cache, where a gather into a
    new array would take as much memory again, never touched before); only ``units`` when
    given."""
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    which = np.arange(bounds.size - 1) if units is None else np.asarray(units, dtype=np.int64)
    sizes = np.diff(bounds)[which]
    largest = int(sizes.max()) if sizes.size else 0
    return _permute_units(col, np.ascontiguousarray(perm), bounds, which, largest)


def unit_positions(
    perm: np.ndarray, bounds: np.ndarray, units: np.ndarray | None = None
) -> np.ndarray:
    """The order of ``sort_units`` as positions in the whole range (for ``take``); with
    ``units``, only those units are reordered (``perm`` is not read for the others)."""
    starts = np.repeat(np.asarray(bounds[:-1], dtype=np.int64), np.diff(bounds))
    if units is None:
        return starts + perm
    positions = np.arange(starts.size, dtype=np.int64)
    rows = np.concatenate([np.arange(bounds[u], bounds[u + 1]) for u in units] or [[]])
    rows = rows.astype(np.int64)
    positions[rows] = starts[rows] + perm[rows]
    return positions
