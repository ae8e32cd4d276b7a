"""Points by labels (``pixel-lookup``): each point reads the label id of the pixel it falls in;
only the window of the labels array under a points partition is read."""

from __future__ import annotations

import itertools

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spatialflow.elements.raster import Labels
from spatialflow.errors import PlanError
from spatialflow.plan.aggregate.common import (
    AggregateGraph,
    Spec,
    aggregate_table,
    point_values,
    tree,
    with_dropped,
)
from spatialflow.plan.aggregate.join import frame_bounds
from spatialflow.plan.compiler import lower_frame
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.optimizer import source_read
from spatialflow.transforms.base import Transform


def _to_pixels(node: Aggregate, labels: Labels) -> Transform:
    t = labels.transforms.get(node.coordinate_system)
    if t is None:
        raise PlanError(f"{labels.label} has no transformation to {node.coordinate_system!r}")
    return t.inverse()


def _label_lookup(
    df: pd.DataFrame, window: np.ndarray, origin: tuple[int, int], to_px: Transform, spec: Spec
) -> tuple[pd.DataFrame, int]:
    xy = df[["x", "y"]].to_numpy(dtype=np.float64)
    n_nan = int(np.count_nonzero(~np.isfinite(xy).all(axis=1)))
    px = to_px.apply(xy, ("x", "y"), ("x", "y")) if len(xy) else xy
    j = np.floor(px[:, 0]).astype(np.int64) - origin[1]
    i = np.floor(px[:, 1]).astype(np.int64) - origin[0]
    ok = (
        np.isfinite(px).all(axis=1)
        & (i >= 0)
        & (j >= 0)
        & (i < window.shape[0])
        & (j < window.shape[1])
    )
    ids = np.zeros(len(df), np.int64)
    ids[ok] = window[i[ok], j[ok]]
    ok &= ids != 0
    cols, vals = point_values(df, spec)
    frame = pd.DataFrame(
        {
            "id": ids[ok],
            "col": 0 if cols is None else cols[ok],
            "val": 1.0 if vals is None else vals[ok],
        }
    )
    if cols is not None:
        frame = frame[frame["col"] >= 0]
    g = frame.groupby(["id", "col"], sort=False)["val"]
    if spec.kind == "numeric" and spec.agg in ("min", "max", "mean"):
        agg = g.agg(["sum", "count", "min", "max"]).reset_index()
    else:
        agg = g.agg(["sum", "count"]).reset_index()
    return agg, n_nan


def _combine_lookup(*frames: pd.DataFrame) -> pd.DataFrame:
    df = pd.concat(frames, ignore_index=True)
    funcs = {
        c: f
        for c, f in (("sum", "sum"), ("count", "sum"), ("min", "min"), ("max", "max"))
        if c in df.columns
    }
    return df.groupby(["id", "col"], sort=False).agg(funcs).reset_index()


def _unique_ids(block: np.ndarray) -> np.ndarray:
    u = np.unique(block)
    return u[u != 0]


def _union(*arrays: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate(arrays)) if arrays else np.empty(0, np.int64)


def _assemble_lookup(
    spec: Spec, by_name: str, ids: np.ndarray, agg: pd.DataFrame, n_nan: list[int]
) -> ad.AnnData:
    rows = np.searchsorted(ids, agg["id"].to_numpy())
    if spec.kind == "numeric" and spec.agg in ("min", "max", "mean"):
        col = {"mean": agg["sum"] / agg["count"], "min": agg["min"], "max": agg["max"]}[spec.agg]
        vals = col.to_numpy(dtype=np.float64)
    elif spec.agg == "count":
        vals = agg["count"].to_numpy(dtype=np.int64)
    else:
        vals = agg["sum"].to_numpy(dtype=np.float64)
    x = sp.coo_matrix(
        (vals, (rows, agg["col"].to_numpy(np.int64))), shape=(len(ids), spec.n_vars)
    ).tocsr()
    return with_dropped(aggregate_table(x, ids, np.int64, spec.var_names, by_name), n_nan)


def lower_points_by_labels(node: Aggregate, spec: Spec) -> AggregateGraph:
    values = lower_frame(node.values)
    labels: Labels = source_read(node.by).element  # type: ignore[assignment]
    arr = labels.scale(0).data
    if arr.ndim != 2:
        raise PlanError(f"{labels.label}: points by 3D labels is not supported")
    to_px = _to_pixels(node, labels)
    bounds = frame_bounds(values)
    tasks, nans = [], []
    h, w = arr.shape
    for p, part in enumerate(values.data.to_delayed()):
        b = bounds[p]
        if np.any(np.isnan(b[:2])):
            continue
        corners = np.array(
            list(itertools.product((b[0], b[len(b) // 2]), (b[1], b[len(b) // 2 + 1])))
        )
        px = to_px.apply(corners, ("x", "y"), ("x", "y"))
        j0, i0 = np.floor(px.min(axis=0)).astype(int) - 1
        j1, i1 = np.ceil(px.max(axis=0)).astype(int) + 1
        i0, j0 = max(0, i0), max(0, j0)
        i1, j1 = min(h, i1), min(w, j1)
        if i1 <= i0 or j1 <= j0:
            continue
        window = arr[i0:i1, j0:j1]
        agg, n_nan = dask.delayed(_label_lookup, nout=2)(
            part, window, (int(i0), int(j0)), to_px, spec
        )
        tasks.append(agg)
        nans.append(n_nan)
    ids = tree([dask.delayed(_unique_ids)(b) for b in arr.to_delayed().ravel()], _union)
    empty = dask.delayed(pd.DataFrame)(
        {
            "id": [],
            "col": [],
            "sum": [],
            "count": [],
            **({"min": [], "max": []} if spec.kind == "numeric" else {}),
        }
    )
    combined = tree(tasks or [empty], _combine_lookup)
    result = dask.delayed(_assemble_lookup)(spec, node.by_name, ids, combined, nans)
    n = source_read(node.values).element.npartitions  # type: ignore[attr-defined]
    return AggregateGraph(result, node.strategy, (values.npartitions, n), (1, 1), len(tasks))
