"""The multiscale spatial index a Points element may carry (built by ``sf.index_points``).

An indexed element's own rows are the *spatial-first* copy: ordered by (level, Morton code),
each partition one level only and at most about ``row_group_rows`` rows (one parquet row
group, or one native partition, once written). A *feature-first* copy of the same rows,
serves gene queries: its partitions are runs of whole (feature code, level) cells in that
order, cut at feature changes; a partition's rows are in the input's order (one row group
each, so an order inside it would change none of its statistics and cost a sort).
For each copy the index keeps one row per partition ("unit"): level range, feature-code range,
rows and a bounding box (a conservative box before writing, the stored statistics after).

``description`` is the JSON stored in the element's attributes: the levels (grid shape, cell
size, probability, count), limit, seed, extent, and the per-(level, feature) counts, which
are the (level, gene) map a query uses to estimate its size. Nothing here reads data.

A freshly built index also carries its build plan: each copy's *ranges* (runs of consecutive
units, each one lazy sorted frame: one sort task, one parquet file) and the *batches* of ranges
a writer materializes together (ranges of one batch share the tasks that split the input, and
a batch's rows bound the memory of a write). An index read back from storage has neither.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["INDEX_VERSION", "LEVEL", "IndexCopy", "PointsIndex", "pack_ints", "unpack_ints"]

INDEX_VERSION = 2  # 2: integer tables packed (``pack_ints``); 1 (lists) is still read


def pack_ints(values: Any) -> dict[str, Any]:
    """An integer table as compact JSON: its little-endian int32 (or int64) bytes in base64
    and its shape. A JSON list of thousands of numbers costs ~10x more to encode (the
    indented encoder visits every number) and ~3x the bytes."""
    a = np.asarray(values, dtype=np.int64)
    small = a.size == 0 or (a.min() >= -(2**31) and a.max() < 2**31)
    dtype = "<i4" if small else "<i8"
    data = base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")
    return {"dtype": "int32" if small else "int64", "shape": list(a.shape), "base64": data}


def unpack_ints(value: Any) -> np.ndarray:
    """The int64 array of ``pack_ints``' JSON, or of a plain (nested) list."""
    if isinstance(value, dict):
        dtype = {"int32": "<i4", "int64": "<i8"}[value["dtype"]]
        raw = np.frombuffer(base64.b64decode(value["base64"]), dtype=dtype)
        return raw.astype(np.int64).reshape(value["shape"])
    return np.asarray(value, dtype=np.int64)


LEVEL = "level"  # the column holding each row's level


@dataclass
class IndexCopy:
    """One ordering of the indexed rows: a dask DataFrame and a table of its partitions."""

    data: Any  # dask DataFrame; partition i is unit i
    levels: np.ndarray  # (n, 2) int: min, max level of each unit
    codes: np.ndarray  # (n, 2) int: min, max feature code (0, -1 when there is no feature)
    rows: np.ndarray  # (n,) int
    bounds: np.ndarray  # (n, 4) float: x0, y0, x1, y1 (a superset of the unit's points)
    reader: Callable[[int], pd.DataFrame] | None = None  # reads unit i without Dask
    ranges: list[Any] | None = None  # lazy sorted frames (Dask delayed), one per range
    range_units: np.ndarray | None = None  # (n_ranges + 1,) first unit of each range, end
    # reads several units at once, filtered before pandas: (units, RowFilter) -> frame
    read_many: Callable[..., pd.DataFrame] | None = None

    def table(self) -> dict[str, Any]:
        """The JSON form (bounds excluded: the layouts store those as statistics)."""
        return {
            "levels": pack_ints(self.levels),
            "codes": pack_ints(self.codes),
            "rows": pack_ints(self.rows),
        }

    def read(self, i: int) -> pd.DataFrame:
        if self.reader is not None:
            return self.reader(i)
        import dask

        (out,) = dask.compute(self.data.partitions[i], scheduler="threads")
        return out


@dataclass
class PointsIndex:
    """The index of a Points element: its description and its two copies."""

    description: dict[str, Any]
    spatial: IndexCopy
    by_feature: IndexCopy | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # ranges written together: ("spatial" | "by_feature", range number); None once stored
    batches: list[list[tuple[str, int]]] | None = None

    @property
    def n_levels(self) -> int:
        return len(self.description["levels"])

    @property
    def level_counts(self) -> np.ndarray:
        return np.array([lv["count"] for lv in self.description["levels"]], dtype=np.int64)

    @property
    def feature_counts(self) -> np.ndarray | None:
        """(n_levels, n_features) points per level and feature code, or None."""
        fc = self.description.get("feature_counts")
        return None if fc is None else np.asarray(fc, dtype=np.int64)

    def attrs(self) -> dict[str, Any]:
        """The JSON stored with the element (both layouts)."""
        out = dict(self.description)
        if out.get("feature_counts") is not None:
            out["feature_counts"] = pack_ints(out["feature_counts"])
        out["spatial_units"] = self.spatial.table()
        if self.by_feature is not None:
            out["feature_units"] = self.by_feature.table()
        return out
