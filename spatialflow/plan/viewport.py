"""Planning and running a viewport query on an indexed Points element.

A plan is a list of units (partitions = row groups) of one copy of the index. Both copies are
pruned with the index's unit table (levels, feature codes, bounding boxes) and the one with
fewer rows to read is chosen: the spatial-first copy for boxes, the feature-first one for gene
panels. Small plans (at most ``DIRECT_UNITS`` units) are read directly, with no Dask graph at
all: from parquet, the selected row groups of each file by one pyarrow call (files in a thread
pool), filtered in Arrow/numpy, and converted to pandas once (a per-row-group pandas conversion,
with its categorical of every gene, cost more than the reads: Q3 of the benchmark went from
~95 to ~25 ms at 10^7 points); from the native layout, each unit's partition in a thread pool.
Larger plans run as one Dask task per unit. Every unit is filtered exactly (level, features,
box in the target coordinate system; the box is closed), unless the plan is exact: every
planned unit lies inside the query by the unit table alone (``covers``: a whole gene, a
zoomed-out view of whole units), when only rows without finite coordinates are dropped
(at 10^8 points this is ~2 ms of Q1's ~8). The result is ordered by level, then in the order
of the copy it came from.

An element without an index is scanned instead: the partitions whose bounding boxes meet the
box, every row reported at level 0.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.elements.points_index import LEVEL, IndexCopy
from spatialflow.elements.sources import FrameColumns
from spatialflow.plan.nodes import boxes_meet

__all__ = ["DIRECT_UNITS", "LazyViewport", "ViewportPlan", "covers", "plan_units"]

DIRECT_UNITS = 512
_THREADS = 16


@dataclass
class ViewportPlan:
    """What a viewport query reads and how it filters."""

    name: str
    copy: str  # "spatial", "by_feature" or "scan"
    units: np.ndarray
    n_units: int
    max_level: int
    codes: np.ndarray | None  # feature codes to keep (None: all)
    local_box: tuple[float, float, float, float]  # the query's box in the element's space
    box: tuple[float, float, float, float]  # in the target coordinate system
    matrix: np.ndarray  # the element's space -> target, 3x3 affine on x, y
    rows: int  # rows the units hold
    exact: bool = False  # every row of the units matches (``covers``): no row filter

    def explain_lines(self) -> list[str]:
        return [
            f"viewport {self.name!r}: levels <= {self.max_level}, box {self.box}",
            f"features: {'all' if self.codes is None else len(self.codes)}",
            f"copy: {self.copy}, units read: {len(self.units)} of {self.n_units} "
            f"({self.rows} rows)",
            "filter: " + ("none (the units lie inside the query)" if self.exact else "per row"),
            "execution: "
            + ("direct (thread pool) if stored" if self.direct else "dask, one task a unit"),
        ]

    @property
    def direct(self) -> bool:
        return len(self.units) <= DIRECT_UNITS


def plan_units(
    copy: IndexCopy, max_level: int, codes: np.ndarray | None, box: tuple[float, ...]
) -> np.ndarray:
    """Units of ``copy`` that may hold points of levels <= max_level, ``codes``, in ``box``."""
    keep = (copy.levels[:, 0] <= max_level) & boxes_meet(copy.bounds, box)
    if codes is not None and len(copy.codes):
        lo = np.searchsorted(codes, copy.codes[:, 0], side="left")
        hi = np.searchsorted(codes, copy.codes[:, 1], side="right")
        keep &= hi > lo  # some requested code within [min code, max code]
    return np.flatnonzero(keep)


def covers(
    copy: IndexCopy,
    units: np.ndarray,
    max_level: int,
    codes: np.ndarray | None,
    box: tuple[float, ...],
    matrix: np.ndarray,
) -> bool:
    """Whether every row of ``units`` matches the query, so none needs filtering: each unit's
    levels are <= max_level, its feature codes are all requested, and its bounds (a superset
    of its points, in the element's space) map inside ``box`` of the target space (through
    any transformation but the identity, a margin of a few ULPs leaves points on an edge to
    the row filter's arithmetic)."""
    if len(units) == 0:
        return False
    if int(copy.levels[units, 1].max()) > max_level:
        return False
    if codes is not None:
        lo, hi = copy.codes[units, 0], copy.codes[units, 1]
        inside = np.searchsorted(codes, hi, side="right") - np.searchsorted(codes, lo, "left")
        if np.any(inside != hi - lo + 1):  # some code in [lo, hi] not requested
            return False
    b = copy.bounds[units]
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=0).reshape(
        -1, 2
    )
    t = corners @ matrix[:2, :2].T + matrix[:2, 2]
    if not np.isfinite(t).all():
        return False
    identity = np.array_equal(matrix[:2, :3], np.eye(2, 3))  # the filter's arithmetic is exact
    margin = 0.0 if identity else 8 * np.finfo(np.float64).eps * max(1.0, float(np.abs(box).max()))
    return bool(
        (t[:, 0] >= box[0] + margin).all()
        & (t[:, 0] <= box[2] - margin).all()
        & (t[:, 1] >= box[1] + margin).all()
        & (t[:, 1] <= box[3] - margin).all()
    )


@dataclass(frozen=True)
class _InViewport:
    """The row filter of a viewport query over a RowFilter's columns (numbers as numpy, the
    feature as int32 codes into the element's categories): levels <= max_level, the planned
    feature codes, positions inside the box (inclusive) in the query's space."""

    plan: ViewportPlan
    feature_key: str | None

    def __call__(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        plan = self.plan
        x = np.asarray(columns["x"], dtype=np.float64)
        y = np.asarray(columns["y"], dtype=np.float64)
        m, b = plan.matrix, plan.box
        tx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
        ty = m[1, 0] * x + m[1, 1] * y + m[1, 2]
        keep = (tx >= b[0]) & (tx <= b[2]) & (ty >= b[1]) & (ty <= b[3])
        if LEVEL in columns:
            keep &= columns[LEVEL] <= plan.max_level
        if plan.codes is not None and self.feature_key is not None:
            keep &= np.isin(columns[self.feature_key], plan.codes)
        return keep


def _filter(df: pd.DataFrame, plan: ViewportPlan, feature_key: str | None) -> pd.DataFrame:
    """The rows of ``df`` that match; with an exact plan every row but those without finite
    coordinates (which no box holds, and which unit bounds do not see)."""
    if len(df) == 0:
        return df
    if (
        plan.exact
        and np.isfinite(df["x"].to_numpy()).all()
        and np.isfinite(df["y"].to_numpy()).all()
    ):
        return df
    return df[_InViewport(plan, feature_key)(FrameColumns(df))]


class LazyViewport:
    """The lazy result of ``sf.viewport_query``: ``explain()`` and ``compute()``."""

    def __init__(self, el: Points, plan: ViewportPlan, copy: IndexCopy | None) -> None:
        self.element = el
        self.plan = plan
        self._copy = copy

    def explain(self, print_: bool = True) -> str:
        text = "\n".join(self.plan.explain_lines())
        if print_:
            print(text)
        return text

    def _read(self, i: int) -> pd.DataFrame:
        assert self._copy is not None
        return _filter(self._copy.read(int(i)), self.plan, self.element.feature_key)

    def compute(self, **kwargs: Any) -> pd.DataFrame:
        """Read the planned units, filter them and return one DataFrame with a level column."""
        units = [int(i) for i in self.plan.units]
        fk = self.element.feature_key
        lazy = self._copy is None or self._copy.reader is None
        if not units:
            parts = []
        elif lazy:  # rows not stored yet (or a scan): one graph, shared shuffle tasks
            import dask

            data = self.element.data if self._copy is None else self._copy.data
            blocks = data.to_delayed()
            tasks = [dask.delayed(_filter)(blocks[i], self.plan, fk) for i in units]
            parts = list(dask.compute(*tasks, **kwargs))
        elif self.plan.direct and self._copy.read_many is not None:  # one read per file
            keep = None if self.plan.exact else _InViewport(self.plan, fk)
            parts = [self._copy.read_many(units, keep)]
            if self.plan.exact:
                parts = [_filter(parts[0], self.plan, fk)]
        elif self.plan.direct:
            with ThreadPoolExecutor(min(_THREADS, len(units))) as pool:
                parts = list(pool.map(self._read, units))
        else:
            import dask

            parts = list(dask.compute(*[dask.delayed(self._read)(i) for i in units], **kwargs))
        meta = self.element.data._meta
        if LEVEL not in meta.columns:
            meta = meta.assign(**{LEVEL: np.array([], dtype=np.uint8)})
        parts = [p for p in parts if len(p)]
        if self.plan.copy == "scan":
            parts = [p.assign(**{LEVEL: np.zeros(len(p), dtype=np.uint8)}) for p in parts]
        if not parts:
            return meta
        out = pd.concat(parts) if len(parts) > 1 else parts[0]
        if self.plan.copy == "by_feature":  # units of one feature come in level order
            lv = out[LEVEL].to_numpy()
            if (lv[1:] < lv[:-1]).any():  # several features (or an older index): sort
                out = out.iloc[np.argsort(lv, kind="stable")]
        return out

    def __repr__(self) -> str:
        return "LazyViewport:\n" + "\n".join(self.plan.explain_lines())

    def _repr_html_(self) -> str:
        body = html.escape("\n".join(self.plan.explain_lines()))
        return f"<div><b>spatialflow viewport query</b><pre>{body}</pre></div>"
