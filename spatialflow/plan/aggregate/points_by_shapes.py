"""Points by shapes (``broadcast`` / ``copartition``): a numba point-in-polygon over a uniform
grid index (kernels/pip.py) per values partition and meeting by partition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd

from spatialflow.kernels.pip import points_in_polygons
from spatialflow.plan.aggregate.common import (
    AggregateGraph,
    Spec,
    accumulate,
)
from spatialflow.plan.aggregate.join import (
    ByPart,
    ValuesSide,
    frame_values,
    lower_partition_join,
)
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.point_arrays import lower_point_units


def _points_by_shapes(
    arrays: dict[str, np.ndarray], parts: Sequence[ByPart], spec: Spec
) -> tuple[dict[int, Any], int]:
    """Partials of one unit of points (numpy columns x, y and the value column)."""
    x, y = arrays["x"], arrays["y"]
    finite = np.isfinite(x) & np.isfinite(y)
    n_nan = int(len(x) - np.count_nonzero(finite))
    cols, vals = None, None
    if spec.kind == "categorical":
        cols = np.asarray(arrays[spec.value_key], dtype=np.int64)
    elif spec.kind == "numeric":
        vals = np.asarray(arrays[spec.value_key], dtype=np.float64)
    if cols is not None and (cols < 0).any():  # missing categories are not counted
        keep = cols >= 0
        x, y, cols = x[keep], y[keep], cols[keep]
    out: dict[int, Any] = {}
    for part in parts:
        if part.n == 0 or len(x) == 0:
            continue
        pi, gi = points_in_polygons(x, y, part.polys, part.grid)
        if len(pi) == 0:
            continue
        out[part.k] = accumulate(
            spec, part.n, gi, None if cols is None else cols[pi], None if vals is None else vals[pi]
        )
    return out, n_nan


def lower_points_by_shapes(node: Aggregate, spec: Spec) -> AggregateGraph:
    columns = [spec.value_key] if spec.value_key is not None else []
    units = lower_point_units(node.values, columns, need_bounds=node.strategy != "broadcast")
    if units is None:  # not a plain chain over stored points: go through frames
        return lower_partition_join(
            node,
            spec,
            frame_values(
                node,
                lambda part, by: dask.delayed(_frame_points_by_shapes, nout=2)(part, by, spec),
            ),
            keep_geoms=False,
        )
    bounds = None if node.strategy == "broadcast" else units.bounds
    values = ValuesSide(
        len(units),
        bounds,
        lambda i, by: units.task(i, _points_by_shapes, by, spec, nout=2),
        (units.n_read, units.n_total),
    )
    return lower_partition_join(node, spec, values, keep_geoms=False)


def _frame_points_by_shapes(
    df: pd.DataFrame, parts: Sequence[ByPart], spec: Spec
) -> tuple[dict[int, Any], int]:
    cols = ["x", "y", *([spec.value_key] if spec.value_key is not None else [])]
    arrays = {
        c: df[c].cat.codes.to_numpy()
        if isinstance(df[c].dtype, pd.CategoricalDtype)
        else df[c].to_numpy(dtype=np.float64)
        for c in cols
    }
    return _points_by_shapes(arrays, parts, spec)
