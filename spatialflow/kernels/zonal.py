"""Per-label zonal statistics over a labels block, and an associative merge of partial results.

Conventions
-----------
* ``labels`` is an integer array, (H, W) or (Z, H, W); 0 is background and ignored, every other
  value (negative ones too) is a label id. Ids must fit in int64.
* ``values`` is (C, H, W) or (C, Z, H, W) (one image per channel, same spatial shape as
  ``labels``), any real dtype, or ``None`` for counts only (C = 0).
* The result, :class:`ZonalStats`, lists the ids present in ascending order with their pixel
  ``count`` (int64) and per channel ``sum``, ``min``, ``max`` as (C, K) float64 (float64 holds
  every value of the usual image dtypes exactly). NaN values propagate to the sum, min and max of
  their label, as ``np.sum``/``np.min``/``np.max`` would.

Algorithm (sort-free, memory bounded)
-------------------------------------
1. One pass finds the smallest and largest non-zero id.
2. When the id span ``max - min + 1`` is small enough (at most ``max(2 * pixels, 2**22,
   n_labels_hint)``), a lookup table of that span maps ids to dense local codes: one pass marks
   the ids present, a scan of the table numbers them in ascending order (so ``ids`` come out
   sorted without sorting), one pass counts pixels. For a 2048 x 2048 block that is at most a
   32 MiB int32 table, usually far less since the ids of one block are close together.
   Otherwise (a few huge, scattered ids) ``np.unique`` first renumbers the ids densely (O(n log n),
   an int64 inverse per pixel), and the table path runs on the dense ids.
3. One pass per channel accumulates sum/min/max through the table: ``values`` is read once, in
   memory order, and labels plus table are read once per channel.

:func:`combine_zonal` merges two partial results (ids union; counts and sums add; min/max
combine). It is commutative and associative (up to floating-point rounding of sums), and the
empty result (:meth:`ZonalStats.empty`) is its identity, so it can drive a Dask tree reduction;
:func:`combine_zonal_many` merges any number at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["ZonalStats", "combine_zonal", "combine_zonal_many", "zonal_stats"]

_MIN_TABLE = 2**22


@dataclass(frozen=True, eq=False)
class ZonalStats:
    """Per-label statistics: ``ids`` (K,), ``count`` (K,), ``sum``/``min``/``max`` (C, K)."""

    ids: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.size)

    @property
    def n_channels(self) -> int:
        return int(self.sum.shape[0])

    @property
    def mean(self) -> np.ndarray:
        """(C, K) mean value per channel and label."""
        return self.sum / self.count

    @classmethod
    def empty(cls, n_channels: int) -> ZonalStats:
        """No labels: the identity of :func:`combine_zonal`."""
        z = np.zeros((n_channels, 0), dtype=np.float64)
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), z, z.copy(), z.copy())


# ---------------------------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, nogil=True)
def _id_range(flat):
    """(min, max, number of non-zero pixels) over the non-zero ids."""
    lo = np.iinfo(np.int64).max
    hi = np.iinfo(np.int64).min
    n = 0
    for i in range(flat.size):
        v = np.int64(flat[i])
        if v != 0:
            lo = min(lo, v)
            hi = max(hi, v)
            n += 1
    return lo, hi, n


@numba.njit(cache=True, nogil=True)
def _table(flat, lo, table, count_out):
    """Fill ``table`` (span,) with dense codes (-1 absent); return ids; count into count_out."""
    table[:] = -1
    for i in range(flat.size):
        v = np.int64(flat[i])
        if v != 0:
            table[v - lo] = 0
    k = 0
    for s in range(table.size):
        if table[s] == 0:
            table[s] = k
            k += 1
    ids = np.empty(k, dtype=np.int64)
    for s in range(table.size):
        if table[s] >= 0:
            ids[table[s]] = s + lo
    count = count_out[:k]
    count[:] = 0
    for i in range(flat.size):
        v = np.int64(flat[i])
        if v != 0:
            count[table[v - lo]] += 1
    return ids


@numba.njit(cache=True, nogil=True)
def _accumulate(flat, lo, table, vals, s, mn, mx):
    for c in range(vals.shape[0]):
        row = vals[c]
        for i in range(flat.size):
            v = np.int64(flat[i])
            if v == 0:
                continue
            k = table[v - lo]
            x = np.float64(row[i])
            s[c, k] += x
            if x < mn[c, k] or x != x:
                mn[c, k] = x
            if x > mx[c, k] or x != x:
                mx[c, k] = x


# ---------------------------------------------------------------------------------------------
# public API


def _check(labels: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """Validate shapes/dtypes; return values as a (C, pixels) array numba can read."""
    if labels.ndim not in (2, 3):
        raise ValueError(f"zonal_stats: labels must be (H, W) or (Z, H, W), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"zonal_stats: labels must have an integer dtype, got {labels.dtype}")
    if values is None:
        return np.zeros((0, labels.size), dtype=np.float64)
    if values.ndim != labels.ndim + 1 or values.shape[1:] != labels.shape:
        raise ValueError(
            f"zonal_stats: values must be (C, *{labels.shape}) for labels {labels.shape}, "
            f"got {values.shape}"
        )
    if values.dtype == np.bool_:
        values = values.view(np.uint8)
    elif values.dtype == np.float16:
        values = values.astype(np.float32)
    elif not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise TypeError(f"zonal_stats: values must be real numbers, got {values.dtype}")
    return values.reshape(values.shape[0], -1)


def zonal_stats(
    labels: np.ndarray,
    values: np.ndarray | None = None,
    n_labels_hint: int | None = None,
) -> ZonalStats:
    """Count, sum, min and max of ``values`` per non-zero label id of ``labels``.

    ``n_labels_hint`` (optional): the number of label ids of the whole image, e.g. from its
    metadata; it raises the lookup-table limit so blocks of a densely numbered image never fall
    back to sorting. Results are exact per block and merge with :func:`combine_zonal`."""
    labels = np.asarray(labels)
    vals = _check(labels, None if values is None else np.asarray(values))
    n_channels = vals.shape[0]
    flat = labels.reshape(-1)
    lo, hi, n_nonzero = _id_range(flat)
    if n_nonzero == 0:
        return ZonalStats.empty(n_channels)
    span = int(hi) - int(lo) + 1
    limit = max(2 * flat.size, _MIN_TABLE, int(n_labels_hint or 0))
    if span > limit:
        # few, scattered ids: renumber densely (0 stays 0) and run the table path on that
        uniq, inverse = np.unique(flat, return_inverse=True)
        rank = np.arange(1, uniq.size + 1, dtype=np.int64)  # dense id of each unique value
        z = int(np.searchsorted(uniq, 0))
        if z < uniq.size and uniq[z] == 0:  # background keeps 0, ids above it shift down
            rank[z] = 0
            rank[z + 1 :] -= 1
        result = zonal_stats(rank[inverse.reshape(-1)].reshape(labels.shape), values)
        present = uniq[uniq != 0]
        return ZonalStats(present[result.ids - 1], result.count, result.sum, result.min, result.max)
    code_dtype = np.int32 if flat.size < 2**31 else np.int64
    table = np.empty(span, dtype=code_dtype)
    count = np.empty(min(span, n_nonzero), dtype=np.int64)
    ids = _table(flat, np.int64(lo), table, count)
    k = ids.size
    s = np.zeros((n_channels, k), dtype=np.float64)
    mn = np.full((n_channels, k), np.inf)
    mx = np.full((n_channels, k), -np.inf)
    if n_channels:
        _accumulate(flat, np.int64(lo), table, vals, s, mn, mx)
    return ZonalStats(ids, count[:k].copy(), s, mn, mx)


def _check_channels(parts: list[ZonalStats]) -> int:
    channels = {p.n_channels for p in parts}
    if len(channels) != 1:
        raise ValueError(f"combine_zonal: partial results have different channel counts {channels}")
    return channels.pop()


def combine_zonal(a: ZonalStats, b: ZonalStats) -> ZonalStats:
    """Merge two partial results: union of ids (ascending), counts and sums add, min/max combine."""
    n_channels = _check_channels([a, b])
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    ids = np.union1d(a.ids, b.ids)
    ia = np.searchsorted(ids, a.ids)
    ib = np.searchsorted(ids, b.ids)
    k = ids.size
    count = np.zeros(k, dtype=np.int64)
    count[ia] += a.count
    count[ib] += b.count
    s = np.zeros((n_channels, k), dtype=np.float64)
    s[:, ia] += a.sum
    s[:, ib] += b.sum
    mn = np.full((n_channels, k), np.inf)
    mx = np.full((n_channels, k), -np.inf)
    mn[:, ia] = a.min
    mx[:, ia] = a.max
    mn[:, ib] = np.minimum(mn[:, ib], b.min)
    mx[:, ib] = np.maximum(mx[:, ib], b.max)
    return ZonalStats(ids, count, s, mn, mx)


def combine_zonal_many(parts: Iterable[ZonalStats]) -> ZonalStats:
    """Merge any number (>= 1) of partial results at once (same result as folding
    :func:`combine_zonal`, with one ``np.unique`` over all ids instead of repeated unions)."""
    parts = list(parts)
    if not parts:
        raise ValueError("combine_zonal_many: need at least one partial result")
    n_channels = _check_channels(parts)
    parts = [p for p in parts if len(p)]
    if len(parts) <= 1:
        return parts[0] if parts else ZonalStats.empty(n_channels)
    ids, inverse = np.unique(np.concatenate([p.ids for p in parts]), return_inverse=True)
    k = ids.size
    count = np.zeros(k, dtype=np.int64)
    np.add.at(count, inverse, np.concatenate([p.count for p in parts]))
    s = np.zeros((n_channels, k), dtype=np.float64)
    mn = np.full((n_channels, k), np.inf)
    mx = np.full((n_channels, k), -np.inf)
    cols = (slice(None), inverse)
    np.add.at(s, cols, np.concatenate([p.sum for p in parts], axis=1))
    np.minimum.at(mn, cols, np.concatenate([p.min for p in parts], axis=1))
    np.maximum.at(mx, cols, np.concatenate([p.max for p in parts], axis=1))
    return ZonalStats(ids, count, s, mn, mx)
