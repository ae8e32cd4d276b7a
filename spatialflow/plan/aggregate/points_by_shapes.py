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
    point_values,
)
from spatialflow.plan.aggregate.join import (
    ByPart,
    lower_partition_join,
)
from spatialflow.plan.nodes import Aggregate


def _points_by_shapes(
    df: pd.DataFrame, parts: Sequence[ByPart], spec: Spec
) -> tuple[dict[int, Any], int]:
    x = df["x"].to_numpy(dtype=np.float64)
    y = df["y"].to_numpy(dtype=np.float64)
    n_nan = int(np.count_nonzero(~(np.isfinite(x) & np.isfinite(y))))
    cols, vals = point_values(df, spec)
    if cols is not None and (cols < 0).any():  # missing categories are not counted
        keep = cols >= 0
        x, y, cols = x[keep], y[keep], cols[keep]
        vals = None if vals is None else vals[keep]
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
    return lower_partition_join(
        node, spec, lambda part, by: dask.delayed(_points_by_shapes, nout=2)(part, by, spec)
    )
