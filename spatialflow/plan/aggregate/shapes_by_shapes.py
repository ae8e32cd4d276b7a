"""Shapes by shapes (``overlay``): shapely intersections per pair of meeting partitions; with
``fractions`` each value shape counts by (intersection area / its own area)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
import shapely

from spatialflow.plan.aggregate.common import (
    AggregateGraph,
    Spec,
    accumulate,
)
from spatialflow.plan.aggregate.join import (
    ByPart,
    frame_values,
    lower_partition_join,
    polygonal,
)
from spatialflow.plan.nodes import Aggregate


def _shapes_by_shapes(
    gdf: Any,
    parts: Sequence[ByPart],
    spec: Spec,
    table_values: pd.Series | None,
    buffer_resolution: int,
) -> tuple[dict[int, Any], int]:
    if len(gdf) == 0:
        return {}, 0
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if "radius" in gdf.columns:
        geoms = shapely.buffer(
            geoms, gdf["radius"].to_numpy(np.float64), quad_segs=buffer_resolution
        )
    else:
        geoms = polygonal(geoms)
    if table_values is not None:
        column = table_values.reindex(gdf.index)
    elif spec.value_key is not None:
        column = gdf[spec.value_key]
    else:
        column = None
    if spec.kind == "categorical":
        codes = pd.Categorical(column, categories=spec.var_names).codes.astype(np.int64)
        base = None
    elif spec.kind == "numeric":
        codes = None
        base = pd.to_numeric(column).to_numpy(dtype=np.float64)
    else:
        codes, base = None, None
    areas = shapely.area(geoms)
    out: dict[int, Any] = {}
    for part in parts:
        if part.n == 0:
            continue
        tree = shapely.STRtree(part.geoms)
        vi, bi = tree.query(geoms, predicate="intersects")
        if len(vi) == 0:
            continue
        weight = None
        if spec.fractions:
            inter = shapely.area(shapely.intersection(geoms[vi], part.geoms[bi]))
            weight = np.divide(inter, areas[vi], out=np.zeros(len(vi)), where=areas[vi] > 0)
        cols = None
        vals: np.ndarray | None = None
        if codes is not None:
            cols = codes[vi]
            ok = cols >= 0
            vi, bi, cols = vi[ok], bi[ok], cols[ok]
            weight = None if weight is None else weight[ok]
            vals = weight
        elif base is not None:
            vals = base[vi] if weight is None else base[vi] * weight
        else:
            vals = weight
        if spec.agg == "count" and not spec.fractions:
            vals = None
        out[part.k] = accumulate(spec, part.n, bi, cols, vals)
    return out, 0


def lower_shapes_by_shapes(node: Aggregate, spec: Spec) -> AggregateGraph:
    res = int(node.options.get("buffer_resolution", 16))
    return lower_partition_join(
        node,
        spec,
        frame_values(
            node,
            lambda part, by: dask.delayed(_shapes_by_shapes, nout=2)(
                part, by, spec, node.value_table, res
            ),
        ),
    )
