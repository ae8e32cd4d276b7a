"""Kernels of the multiscale points index: grids, Morton keys, stable draws, level assignment.

The index follows neuroglancer's spatial index of precomputed annotations: level 0 is one
cell over the extent; each next level halves the cells along every axis whose cell is not
already at most half as long as another axis' cell (so cells stay close to square); at level
``l`` every point still in the pool is kept with the same probability ``p_l = min(1, limit /
max_count_l)`` (``max_count_l``: the most pool points in one cell of level ``l``), kept points
leave the pool, and the finest level keeps the rest.

Decisions:

* Coordinates are quantized once to ``BITS`` = 16 bits per axis over the extent (``ix``,
  ``iy``); a level's cell is ``(ix >> (BITS - bx), iy >> (BITS - by))``, with ``bx``/``by`` its
  splits per axis, so every level is computed from the same two small integers.
* A point's content hash mixes (splitmix64) its index value, the bits of x and y, its feature
  code and the seed (``point_state``); the draw of the point at level ``l`` is
  ``splitmix64(hash + (l + 1) * golden)`` scaled to [0, 1): a pure function of the point's
  content and the seed, independent of how the points are partitioned or ordered, and
  independent across levels (a point that failed at level ``l`` is re-drawn at ``l + 1`` with
  a fresh number, as the algorithm requires). The levels drawn so far are kept, one int8 a
  point (-1: still in the pool), and each pass draws only the new level for the pool
  (``extend_levels``): re-drawing every earlier level in every pass cost ~35 draws a point
  (~0.4 CPU s at 10^7 points) where ~6 are needed. A pass draws level by level over every
  point with the pool test as a mask, so the loop vectorises (16x faster than a branch and
  an early exit per point, though placed points are drawn too).
* The spatial sort key of a point is ``level << 32 | morton(ix, iy)``: rows ordered by it are
  ordered by level, then along a Z-curve at full resolution (which, for square cells, also
  orders by the cell of every coarser level). The feature-first key is
  ``(code * MAX_LEVELS + level) << 32 | morton(ix, iy)``. Ties are broken by the content hash,
  then by input order (kernels/rows.py ``sort_units``).
* Every per-point kernel is one numba loop over numpy arrays that releases the GIL (``nogil``),
  so a threaded scheduler runs them on all cores; counts are dense arrays when the grid is
  small (at most 2**22 cells) and sorted sparse keys otherwise. A range can compute its
  rows' keys and hashes again from their columns (``range_keys``: the quantization and the
  hash are the same inline helpers ``point_state`` uses) rather than gather them.

Pure numpy/numba: no Dask, no I/O.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "BITS",
    "MAX_LEVELS",
    "assign_levels",
    "bin_offsets",
    "coarse_counts",
    "coarse_histogram",
    "extend_levels",
    "grid_levels",
    "point_state",
    "pool_counts",
    "range_keys",
    "sparse_bins",
    "split_keys",
]

BITS = 16
MAX_LEVELS = 2 * BITS + 1
COARSE_SHIFT = 12  # coarse cells: the Z-code without its last 6 bits per axis (2**10 a side)
DENSE_CELLS = 1 << 22
_GOLDEN = 0x9E3779B97F4A7C15


def grid_levels(width: float, height: float, max_bits: int = BITS) -> list[tuple[int, int]]:
    """Splits per axis ``(bx, by)`` of every possible level, coarse to fine (level 0 = (0, 0)),
    by the isotropy rule: an axis is halved unless its cell is at most half another's."""
    w = float(width) if width > 0 else 0.0
    h = float(height) if height > 0 else 0.0
    if w == 0 and h == 0:
        w = h = 1.0
    w = w or h
    h = h or w
    out = [(0, 0)]
    bx = by = 0
    while bx < max_bits or by < max_bits:
        cw, ch = w / 2**bx, h / 2**by
        sx = bx < max_bits and not cw <= ch / 2
        sy = by < max_bits and not ch <= cw / 2
        if not (sx or sy):  # one axis is done, the other still halves
            sx, sy = bx < max_bits, by < max_bits
        bx, by = bx + int(sx), by + int(sy)
        out.append((bx, by))
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _draw(h: np.uint64, level: int) -> float:
    z = _mix(h + np.uint64(level + 1) * np.uint64(_GOLDEN))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, nogil=True, inline="always")
def _spread16(v: np.uint64) -> np.uint64:
    x = v & np.uint64(0xFFFF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x00FF00FF)
    x = (x | (x << np.uint64(4))) & np.uint64(0x0F0F0F0F)
    x = (x | (x << np.uint64(2))) & np.uint64(0x33333333)
    return (x | (x << np.uint64(1))) & np.uint64(0x55555555)


def _scale_of(a: float, b: float) -> float:
    """Cells per unit of length along an axis from ``a`` to ``b`` (0: an empty extent, every
    value in cell 0)."""
    span = float(b - a)
    return float(1 << BITS) / span if span > 0 else 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(v: float, a: float, scale: float) -> np.uint16:
    q = np.floor((v - a) * scale)
    if scale == 0.0 or not q >= 0.0:  # an empty extent, below it, or NaN: cell 0
        return np.uint16(0)
    return np.uint16(min(q, float((1 << BITS) - 1)))


@numba.njit(cache=True, nogil=True, inline="always")
def _content(
    idx: np.uint64, xb: np.uint64, yb: np.uint64, code: np.int64, s: np.uint64
) -> np.uint32:
    z = _mix(idx ^ np.uint64(0x2545F4914F6CDD1D))
    z = _mix(z ^ xb)
    z = _mix(z ^ yb)
    z = _mix(z ^ np.uint64(code + 1))
    return np.uint32(_mix(z ^ s) >> np.uint64(32))


@numba.njit(cache=True, nogil=True)
def _quantize(v: np.ndarray, a: float, scale: float) -> np.ndarray:
    out = np.empty(v.size, dtype=np.uint16)
    for i in range(v.size):
        out[i] = _cell(v[i], a, scale)
    return out


@numba.njit(cache=True, nogil=True)
def _hash(
    x: np.ndarray, y: np.ndarray, codes: np.ndarray, idx: np.ndarray, seed: np.uint64
) -> np.ndarray:
    s = _mix(seed + np.uint64(_GOLDEN))
    xb, yb = x.view(np.uint64), y.view(np.uint64)
    out = np.empty(x.size, dtype=np.uint32)
    for i in range(x.size):
        out[i] = _content(idx[i], xb[i], yb[i], np.int64(codes[i]), s)
    return out


@numba.njit(cache=True, nogil=True)
def _range_keys(x, y, lv, codes, idx, ax, sx, ay, sy, seed, key, h):  # type: ignore[no-untyped-def]
    s = _mix(seed + np.uint64(_GOLDEN))
    xb, yb = x.view(np.uint64), y.view(np.uint64)
    for i in range(x.size):
        m = _spread16(np.uint64(_cell(x[i], ax, sx))) | (
            _spread16(np.uint64(_cell(y[i], ay, sy))) << np.uint64(1)
        )
        key[i] = (np.uint64(lv[i]) << np.uint64(32)) | m
        h[i] = _content(idx[i], xb[i], yb[i], np.int64(codes[i]), s)


def range_keys(
    x: np.ndarray,
    y: np.ndarray,
    lv: np.ndarray,
    codes: np.ndarray,
    idx: np.ndarray,
    lo: tuple[float, float],
    hi: tuple[float, float],
    seed: int,
    key: np.ndarray,
    h: np.ndarray,
) -> None:
    """The spatial keys and content hashes of rows, computed again from their columns into
    ``key`` (uint64) and ``h`` (uint32): what ``point_state`` and ``split_keys`` gave the
    same points (one pass over a range's own rows, in cache, where gathering the keys and
    hashes with the rows costs two more random reads a row)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    _range_keys(
        x,
        y,
        np.ascontiguousarray(lv),
        np.ascontiguousarray(codes),
        np.ascontiguousarray(idx).astype(np.int64, copy=False).view(np.uint64),
        float(lo[0]),
        _scale_of(lo[0], hi[0]),
        float(lo[1]),
        _scale_of(lo[1], hi[1]),
        np.uint64(seed & (2**64 - 1)),
        key,
        h,
    )


def point_state(
    x: np.ndarray,
    y: np.ndarray,
    codes: np.ndarray,
    idx: np.ndarray,
    lo: tuple[float, float],
    hi: tuple[float, float],
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantized coordinates (uint16 each, over the extent ``lo``..``hi``) and the 32-bit
    content hash of every point (``idx``: its index value or index hash, as uint64)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    ix = _quantize(x, float(lo[0]), _scale_of(lo[0], hi[0]))
    iy = _quantize(y, float(lo[1]), _scale_of(lo[1], hi[1]))
    codes = np.ascontiguousarray(codes)
    h = _hash(
        x,
        y,
        codes if codes.dtype.kind == "i" else codes.astype(np.int64),  # int16 codes: no copy
        np.ascontiguousarray(idx, dtype=np.uint64),
        np.uint64(seed & (2**64 - 1)),
    )
    return ix, iy, h


@numba.njit(cache=True, nogil=True)
def _extend(h, lv, probs, start):  # type: ignore[no-untyped-def]
    # level by level over every point, the pool test a mask rather than a branch: the loop
    # vectorizes (SIMD 64-bit multiplies), ~16x faster than drawing point by point with
    # early exits, though points already placed are drawn too (most stay in the pool
    # until the finest levels anyway)
    for level in range(start, probs.size):
        p = probs[level]
        placed = np.int8(level)
        if p >= 1.0:  # the finest level keeps the rest
            for i in range(h.size):
                if lv[i] < 0:
                    lv[i] = placed
            return
        for i in range(h.size):
            keep = (lv[i] < 0) & (_draw(np.uint64(h[i]), level) < p)
            lv[i] = placed if keep else lv[i]


def extend_levels(h: np.ndarray, lv: np.ndarray, probs: np.ndarray, start: int) -> None:
    """Draw, in place, levels ``start`` and on for the points of ``lv`` still in the pool
    (-1): ``lv`` holds the levels under ``probs[:start]``, and afterwards those under
    ``probs``, as drawing every level again would give. The levels are decided one at a
    time, so each pass draws only the new level (about 6 draws a point in all, not ~35)."""
    if lv.dtype != np.int8:
        raise TypeError(f"levels are int8, not {lv.dtype}")
    _extend(np.ascontiguousarray(h), lv, np.ascontiguousarray(probs, dtype=np.float64), int(start))


def assign_levels(h: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The level of each point given the per-level probabilities so far; -1: still in the pool."""
    lv = np.full(h.size, -1, dtype=np.int8)
    extend_levels(h, lv, probs, 0)
    return lv


@numba.njit(cache=True, nogil=True)
def _pool_dense(ix, iy, lv, bx, by):  # type: ignore[no-untyped-def]
    counts = np.zeros(1 << (bx + by), dtype=np.int64)
    sx, sy = np.uint32(BITS - bx), np.uint32(BITS - by)
    for i in range(lv.size):
        if lv[i] < 0:
            counts[((np.uint32(iy[i]) >> sy) << np.uint32(bx)) | (np.uint32(ix[i]) >> sx)] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _pool_cells(ix, iy, lv, bx, by):  # type: ignore[no-untyped-def]
    cells = np.empty(lv.size, dtype=np.int64)
    sx, sy = np.uint32(BITS - bx), np.uint32(BITS - by)
    n = 0
    for i in range(lv.size):
        if lv[i] < 0:
            cells[n] = np.int64(((np.uint32(iy[i]) >> sy) << np.uint32(bx)) | (ix[i] >> sx))
            n += 1
    return np.sort(cells[:n])


def _sparse_sorted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if keys.size == 0:
        return keys.astype(np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(starts, keys.size))
    return keys[starts].astype(np.int64), counts.astype(np.int64)


def pool_counts(
    ix: np.ndarray, iy: np.ndarray, lv: np.ndarray, splits: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Occupied cells of the level with ``splits`` = (bx, by) and their counts of points still
    in the pool (``lv`` < 0: the levels so far, ``extend_levels``; sparse: cell id
    ``cy << bx | cx``)."""
    bx, by = int(splits[0]), int(splits[1])
    if 1 << (bx + by) <= DENSE_CELLS:
        dense = _pool_dense(ix, iy, lv, bx, by)
        cells = np.flatnonzero(dense)
        return cells.astype(np.int64), dense[cells]
    return _sparse_sorted(_pool_cells(ix, iy, lv, bx, by))


@numba.njit(cache=True, nogil=True)
def _keys(ix, iy, lv, codes):  # type: ignore[no-untyped-def]
    n = lv.size
    out = np.empty(n, dtype=np.uint8)
    skey = np.empty(n, dtype=np.uint64)
    fkey = np.empty(n, dtype=np.uint64)
    for i in range(n):
        level = lv[i]
        m = _spread16(np.uint64(ix[i])) | (_spread16(np.uint64(iy[i])) << np.uint64(1))
        out[i] = level
        skey[i] = (np.uint64(level) << np.uint64(32)) | m
        fkey[i] = (np.uint64(codes[i] * MAX_LEVELS + level) << np.uint64(32)) | m
    return out, skey, fkey


def split_keys(
    ix: np.ndarray, iy: np.ndarray, lv: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Level (uint8, a copy), spatial key and feature-first key (uint64) of every point;
    ``lv``: the levels under all the levels' probabilities (``extend_levels``)."""
    return _keys(ix, iy, lv, np.ascontiguousarray(codes, dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _by_code(fkey, n_codes):  # type: ignore[no-untyped-def]
    by_feature = np.zeros(n_codes * MAX_LEVELS, dtype=np.int64)
    for i in range(fkey.size):
        by_feature[np.int64(fkey[i] >> np.uint64(32))] += 1
    return by_feature


@numba.njit(cache=True, nogil=True)
def _bins(skey, bits):  # type: ignore[no-untyped-def]
    top = (32 - COARSE_SHIFT) // 2
    masks = np.empty(bits.size, dtype=np.uint64)
    for lv in range(bits.size):
        masks[lv] = ~np.uint64((1 << (2 * (top - bits[lv]))) - 1)
    out = np.empty(skey.size, dtype=np.int64)
    for i in range(skey.size):
        lv = np.int64(skey[i] >> np.uint64(32))
        out[i] = np.int64((skey[i] >> np.uint64(COARSE_SHIFT)) & masks[lv])
    return out


def coarse_counts(
    skey: np.ndarray, fkey: np.ndarray, n_levels: int, n_codes: int, bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occupied coarse bins with their counts, and the (n_levels, n_codes) points per level
    and feature code. A bin is ``skey >> COARSE_SHIFT`` (level, then a Z-cell of 2**10 a side)
    with the Z-bits finer than ``bits[level]`` per axis cleared, so a level's histogram has at
    most ``4 ** bits[level]`` bins. (A sort: a dense array of 2**20 bins a level costs more in
    page faults than sorting.)"""
    bins, counts = _sparse_sorted(np.sort(_bins(skey, np.asarray(bits, dtype=np.int64))))
    # the feature-first key's high word is code * MAX_LEVELS + level
    by_code = _by_code(fkey, n_codes)
    return bins, counts, by_code.reshape(n_codes, MAX_LEVELS)[:, :n_levels].T.copy()


def bin_offsets(bits: np.ndarray) -> np.ndarray:
    """Where each level's bins start in the dense histogram of ``coarse_histogram`` (and the
    end): level ``l`` has ``4 ** bits[l]`` bins."""
    return np.concatenate([[0], np.cumsum(4 ** np.asarray(bits, dtype=np.int64))])


@numba.njit(cache=True, nogil=True)
def _histogram(ix, iy, lv, codes, bits, offsets, n_codes):  # type: ignore[no-untyped-def]
    top = (32 - COARSE_SHIFT) // 2
    hist = np.zeros(offsets[-1], dtype=np.int64)
    by_code = np.zeros(n_codes * MAX_LEVELS, dtype=np.int64)
    for i in range(lv.size):
        level = np.int64(lv[i])
        m = _spread16(np.uint64(ix[i])) | (_spread16(np.uint64(iy[i])) << np.uint64(1))
        cell = np.int64(m >> np.uint64(COARSE_SHIFT + 2 * (top - bits[level])))
        hist[offsets[level] + cell] += 1
        by_code[np.int64(codes[i]) * MAX_LEVELS + level] += 1
    return hist, by_code


def coarse_histogram(
    ix: np.ndarray,
    iy: np.ndarray,
    lv: np.ndarray,
    codes: np.ndarray,
    bits: np.ndarray,
    n_codes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``coarse_counts`` as one dense histogram (all levels' bins, see ``bin_offsets``) and
    the (n_levels, n_codes) counts, straight from the state: no keys, no sort. Partial
    histograms are summed; ``sparse_bins`` turns the total into ``coarse_counts``' bins."""
    bits = np.asarray(bits, dtype=np.int64)
    hist, by_code = _histogram(
        ix,
        iy,
        lv,
        np.ascontiguousarray(codes),
        bits,
        bin_offsets(bits),
        int(n_codes),
    )
    return hist, by_code.reshape(n_codes, MAX_LEVELS)[:, : len(bits)].T.copy()


def sparse_bins(hist: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The occupied bins of a dense histogram as ``coarse_counts`` gives them (level in the
    bits above 32 - COARSE_SHIFT, the Z-cell below, finer bits cleared), with counts."""
    bits = np.asarray(bits, dtype=np.int64)
    offsets = bin_offsets(bits)
    idx = np.flatnonzero(hist)
    level = np.searchsorted(offsets, idx, side="right") - 1
    top = (32 - COARSE_SHIFT) // 2
    cell = (idx - offsets[level]) << (2 * (top - bits[level]))
    bins = (level.astype(np.int64) << (32 - COARSE_SHIFT)) | cell
    return bins.astype(np.int64), hist[idx].astype(np.int64)
