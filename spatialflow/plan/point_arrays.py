"""Lowering a chain over points to units of work that yield numpy columns, not DataFrames.

The hot paths (points by shapes, box queries) want x, y and a value column per point, as numpy
arrays, in tasks of about a million points. A chain ``[Query] <- [Transform] <- Read`` over a
Points element lowers here to *units*: runs of consecutive partitions (row groups, in the
stored, spatially sorted order), each described by a small picklable :class:`UnitLoader`. A
unit's task calls its loader, which reads its partitions' columns (through the element's
column source when it was read from a store: one pyarrow/zarr read per partition, categorical
codes kept as codes, no pandas in between; else from the dask partitions, handed to the task),
keeps the features asked for, applies the chain's transform as one affine matrix and keeps the
points inside the query box. Anything else lowers through ``compiler.lower_frame`` instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.elements.sources import ColumnSource
from spatialflow.plan.nodes import Node, Query, Read, TransformNode

__all__ = ["PointUnits", "UnitLoader", "lower_point_units"]

MAX_UNIT_PARTITIONS = 64


@dataclass(frozen=True, eq=False)
class UnitLoader:
    """Reads one unit's points as numpy columns (see the module docstring)."""

    source: ColumnSource | None
    partitions: tuple[int, ...]
    axes: tuple[str, ...]  # the element's coordinate axes
    columns: tuple[str, ...]  # value columns wanted besides the coordinates
    categorical: tuple[str, ...]  # which of ``columns`` are categorical (codes)
    matrix: np.ndarray | None  # (d+1, d+1) affine over ``axes``, or None for the identity
    keep_codes: np.ndarray | None  # feature codes to keep (Read.features), or None
    feature_key: str | None
    box: tuple[float, float, float, float] | None  # query box on x, y after the transform

    def _read_columns(self) -> list[str]:
        wanted = list(dict.fromkeys([*self.axes[:2], *self.columns]))
        z_moves_xy = self.matrix is not None and np.any(self.matrix[:2, 2] != 0)
        if len(self.axes) == 3 and "z" not in wanted and z_moves_xy:
            wanted.append("z")
        if self.keep_codes is not None and self.feature_key not in wanted:
            wanted.append(self.feature_key)
        return wanted

    def __call__(self, frames: Sequence[pd.DataFrame] = ()) -> dict[str, np.ndarray]:
        cols = self._read_columns()
        if self.source is not None and self.partitions:
            out = self.source.read_many(self.partitions, cols)
        else:
            pieces = [_frame_columns(df, cols, self.categorical) for df in frames]
            if not pieces:
                return {
                    c: np.empty(0, np.int32 if c in self.categorical else np.float64) for c in cols
                }
            out = {c: np.concatenate([p[c] for p in pieces]) for c in cols}
        keep = None
        if self.keep_codes is not None:
            keep = np.isin(out[self.feature_key], self.keep_codes)
        out["x"] = np.asarray(out["x"], dtype=np.float64)
        out["y"] = np.asarray(out["y"], dtype=np.float64)
        if self.matrix is not None:
            m = self.matrix
            d = len(self.axes)
            src = [out[a] if a in out else np.zeros(len(out["x"])) for a in self.axes]
            moved = [
                sum((m[i, j] * src[j] for j in range(d)), start=np.full(len(src[0]), m[i, d]))
                for i in range(2)
            ]
            out["x"], out["y"] = moved
        if self.box is not None:
            x, y = out["x"], out["y"]
            b = self.box
            inside = (x > b[0]) & (x < b[2]) & (y > b[1]) & (y < b[3])
            keep = inside if keep is None else keep & inside
        if keep is not None:
            out = {c: v[keep] for c, v in out.items()}
        return out


def _frame_columns(
    df: pd.DataFrame, columns: Sequence[str], categorical: Sequence[str]
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for c in columns:
        s = df[c]
        if isinstance(s.dtype, pd.CategoricalDtype):
            out[c] = s.cat.codes.to_numpy().astype(np.int32)
        else:
            out[c] = s.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


@dataclass
class PointUnits:
    """A points chain as units of work: loaders, their dask partitions and bounds."""

    loaders: list[UnitLoader]
    frames: list[list[Any]]  # per unit: delayed pandas partitions (empty with a column source)
    bounds: np.ndarray  # (units, 4) on x, y in the chain's output coordinates (NaN: unknown)
    element: Points
    n_read: int  # partitions read
    n_total: int

    def __len__(self) -> int:
        return len(self.loaders)

    def task(self, i: int, fn: Any, *args: Any, nout: int | None = None) -> Any:
        """A delayed ``fn(loader(frames), *args)`` for unit i: one task reads and works."""
        return dask.delayed(_call, nout=nout)(fn, self.loaders[i], self.frames[i], *args)


def _call(fn: Any, loader: UnitLoader, frames: list[pd.DataFrame], *args: Any) -> Any:
    return fn(loader(frames), *args)


def _chain(node: Node) -> tuple[Read, TransformNode | None, Query | None] | None:
    query = node if isinstance(node, Query) else None
    if query is not None:
        node = query.child
    transform = node if isinstance(node, TransformNode) else None
    if transform is not None:
        node = transform.child
    if not isinstance(node, Read) or not isinstance(node.element, Points):
        return None
    if query is not None and query.features is not None:
        return None  # the optimizer pushes features into the Read; anything else: frames
    return node, transform, query


def lower_point_units(
    node: Node, columns: Sequence[str], need_bounds: bool = True
) -> PointUnits | None:
    """Units of the points chain ``node`` yielding x, y and ``columns``; None if the chain is
    not a ``[Query] <- [Transform] <- Read`` over points (lower it as frames instead).
    Unit bounds unknown to the element are computed (a pass over the data) only when
    ``need_bounds``; otherwise they are NaN."""
    chain = _chain(node)
    if chain is None:
        return None
    read, tnode, query = chain
    el: Points = read.element  # type: ignore[assignment]
    axes = el.axes
    matrix = None
    if tnode is not None:
        matrix = tnode.transform.to_affine_matrix(axes, axes)
        if np.allclose(matrix, np.eye(len(axes) + 1)):
            matrix = None
    meta = el.data._meta
    categorical = tuple(c for c in columns if isinstance(meta[c].dtype, pd.CategoricalDtype))
    keep_codes = None
    if read.features is not None:
        cats = pd.Index(el.data._meta[el.feature_key].cat.categories)
        keep_codes = cats.get_indexer(list(read.features))
        keep_codes = keep_codes[keep_codes >= 0].astype(np.int32)
    parts = read.partitions() or []
    size = int(np.clip(len(parts) // 16, 1, MAX_UNIT_PARTITIONS)) if read.coalesce else 1
    groups = [tuple(parts[i : i + size]) for i in range(0, len(parts), size)]
    source = el.column_source
    delayed_parts = el.data.to_delayed() if source is None else None
    box = query.bbox if query is not None else None
    loaders, frames, bounds = [], [], []
    for g in groups:
        loaders.append(
            UnitLoader(
                source,
                g,
                axes,
                tuple(columns),
                categorical,
                matrix,
                keep_codes,
                el.feature_key,
                box,
            )
        )
        frames.append([] if delayed_parts is None else [delayed_parts[k] for k in g])
        bounds.append(_unit_bounds(el, g, matrix, box, need_bounds))
    return PointUnits(
        loaders,
        frames,
        np.vstack(bounds) if bounds else np.empty((0, 4)),
        el,
        len(parts),
        el.npartitions,
    )


def _unit_bounds(
    el: Points, parts: Sequence[int], matrix: np.ndarray | None, box: tuple | None, compute: bool
) -> np.ndarray:
    pb = el.partition_bounds
    if pb is None and not compute:
        return np.full(4, np.nan)
    if pb is None:  # not stored with the element: computed once, kept on it
        pb = el.compute_partition_bounds()
    d = len(el.axes)
    b = pb[list(parts)]
    ok = ~np.isnan(b).any(axis=1)
    if not ok.any():
        return np.full(4, np.nan)
    lo, hi = b[ok, :d].min(axis=0), b[ok, d:].max(axis=0)
    if matrix is not None:
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
        moved = corners @ matrix[:d, :d].T + matrix[:d, d]
        lo, hi = moved.min(axis=0), moved.max(axis=0)
    out = np.r_[lo[:2], hi[:2]]
    if box is not None:
        out = np.r_[np.maximum(out[:2], box[:2]), np.minimum(out[2:], box[2:])]
    return out
