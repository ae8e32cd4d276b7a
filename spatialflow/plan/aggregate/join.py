"""The partition join of points or shapes against the ``by`` shapes (broadcast or co-partitioned).

The ``by`` side is prepared once per partition (polygons flattened to ragged arrays plus a grid
index; circles buffered to polygons with ``buffer_resolution`` segments per quarter, as
spatialdata does) and shared by every task that joins against it. Each values partition is
joined only with the by partitions whose bounding boxes (in the target coordinate system) meet
its own - all of them when broadcast, usually its own tile and a few neighbours when
co-partitioned: shapes crossing tile borders are found through the neighbours' boxes, which is
the halo. The join itself is the strategy's (points_by_shapes.py, shapes_by_shapes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd
import shapely

from spatialflow.elements.points import Points
from spatialflow.kernels.pip import build_grid_index
from spatialflow.kernels.polygons import flatten_polygons
from spatialflow.plan.aggregate.common import (
    AggregateGraph,
    Spec,
    assemble,
    empty_partial,
    pick,
    tree,
)
from spatialflow.plan.compiler import Frame, lower_frame
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.optimizer import source_read


@dataclass
class ByPart:
    k: int
    index: np.ndarray
    geoms: np.ndarray | None  # shapely polygons (circles polygonized); None unless kept
    polys: Any  # PolygonArrays
    grid: Any  # GridIndex

    @property
    def n(self) -> int:
        return len(self.index)


def polygonal(geoms: np.ndarray) -> np.ndarray:
    """Repair invalid polygons with make_valid, keeping only their polygonal parts."""
    bad = ~shapely.is_valid(geoms)
    if not bad.any():
        return geoms
    fixed = shapely.make_valid(geoms[bad])
    out = geoms.copy()
    for i, g in zip(np.flatnonzero(bad), fixed, strict=True):
        parts = [
            p for p in shapely.get_parts(g) if shapely.get_type_id(p) in (3, 6)
        ]  # polygon, multipolygon
        flat = [q for p in parts for q in shapely.get_parts(p)]
        out[i] = (
            shapely.multipolygons(flat)
            if len(flat) > 1
            else (flat[0] if flat else shapely.Polygon())
        )
    return out


def prepare_by(gdf: Any, k: int, buffer_resolution: int, keep_geoms: bool = True) -> ByPart:
    """One by partition ready to join: ragged arrays and a grid index (and the shapely
    geometries when ``keep_geoms``: only overlay joins need them, and a million of them weigh
    gigabytes)."""
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if "radius" in gdf.columns:
        geoms = shapely.buffer(
            geoms, gdf["radius"].to_numpy(dtype=np.float64), quad_segs=buffer_resolution
        )
    else:
        geoms = polygonal(geoms)
    polys = flatten_polygons(geoms)
    polys.inner_boxes  # computed here, once per partition, not in every join task  # noqa: B018
    grid = build_grid_index(polys.bounds)
    return ByPart(k, gdf.index.to_numpy(), geoms if keep_geoms else None, polys, grid)


def by_order(el: Any) -> pd.Index | None:
    """The by element's own row order when it differs from its partition order (else None)."""
    return getattr(el, "row_order", None)


def by_meta(part: ByPart) -> tuple[np.ndarray, int]:
    return part.index, part.n


def boxes_meet(a: np.ndarray, b: np.ndarray) -> bool:
    if np.any(np.isnan(a[[0, 1]])) or np.any(np.isnan(b[[0, 1]])):
        return False
    da_, db = len(a) // 2, len(b) // 2
    return bool(a[0] <= b[db] and b[0] <= a[da_] and a[1] <= b[db + 1] and b[1] <= a[da_ + 1])


def frame_bounds(f: Frame) -> np.ndarray:
    if f.bounds is not None:
        return f.bounds
    parts = f.data.to_delayed()
    kind_points = isinstance(f.element, Points)
    boxes = dask.compute(*[dask.delayed(box_of)(p, kind_points) for p in parts])
    return np.vstack(boxes) if boxes else np.empty((0, 4))


def box_of(part: Any, points: bool) -> np.ndarray:
    if len(part) == 0:
        return np.full(4, np.nan)
    if points:
        x, y = part["x"].to_numpy(np.float64), part["y"].to_numpy(np.float64)
        return np.array([np.nanmin(x), np.nanmin(y), np.nanmax(x), np.nanmax(y)])
    b = shapely.bounds(part.geometry.values)
    if "radius" in part.columns:
        r = part["radius"].to_numpy(np.float64)
        b = np.c_[b[:, :2] - r[:, None], b[:, 2:] + r[:, None]]
    return np.array(
        [np.nanmin(b[:, 0]), np.nanmin(b[:, 1]), np.nanmax(b[:, 2]), np.nanmax(b[:, 3])]
    )


def by_side(
    node: Aggregate, keep_geoms: bool = True
) -> tuple[Frame, list[Any], list[Any], np.ndarray]:
    by = lower_frame(node.by)
    res = int(node.options.get("buffer_resolution", 16))
    preps = [
        dask.delayed(prepare_by)(p, k, res, keep_geoms) for k, p in enumerate(by.data.to_delayed())
    ]
    metas = [dask.delayed(by_meta)(p) for p in preps]
    return by, preps, metas, frame_bounds(by)


@dataclass
class ValuesSide:
    """The values of a partition join: ``n`` units of work with their boxes (in the target
    coordinate system), and ``join(i, by_parts)``: a delayed ``(partials, n_nan)`` for unit i,
    where ``partials`` maps by partition -> partial result."""

    n: int
    bounds: np.ndarray | None  # (n, 2 d); None when the join is a broadcast
    join: Callable[[int, list[Any]], Any]
    partitions: tuple[int, int]  # (read, total) of the values element


def frame_values(node: Aggregate, task: Callable[[Any, list[Any]], Any]) -> ValuesSide:
    """Values lowered as a partitioned frame: ``task(partition, by_parts)`` per partition."""
    values = lower_frame(node.values)
    parts = values.data.to_delayed()
    bounds = frame_bounds(values) if node.strategy != "broadcast" else None
    n_total = source_read(node.values).element.npartitions  # type: ignore[attr-defined]
    return ValuesSide(
        len(parts), bounds, lambda i, by: task(parts[i], by), (values.npartitions, n_total)
    )


def lower_partition_join(
    node: Aggregate, spec: Spec, values: ValuesSide, keep_geoms: bool = True
) -> AggregateGraph:
    """Join every unit of values with the by partitions whose boxes meet its own (all of them
    when broadcast); partials are reduced per by partition, then assembled in by order."""
    by, preps, metas, by_bounds = by_side(node, keep_geoms)
    per_k: dict[int, list[Any]] = {k: [] for k in range(by.npartitions)}
    nan_counts = []
    joins = 0
    for p in range(values.n):
        if node.strategy == "broadcast" or values.bounds is None:
            ks = list(range(by.npartitions))
        else:
            ks = [k for k in range(by.npartitions) if boxes_meet(values.bounds[p], by_bounds[k])]
        if not ks:
            continue
        joins += len(ks)
        partial, n_nan = values.join(p, [preps[k] for k in ks])
        nan_counts.append(n_nan)
        for k in ks:
            per_k[k].append(dask.delayed(pick)(partial, k, empty_partial, spec, metas[k][1]))
    blocks = []
    for k in range(by.npartitions):
        items = per_k[k] or [dask.delayed(empty_partial)(spec, metas[k][1])]
        blocks.append(tree(items))
    index_dtype = by.element.data._meta.index.dtype
    result = dask.delayed(assemble)(
        spec, node.by_name, index_dtype, metas, blocks, nan_counts, by_order(by.element)
    )
    return AggregateGraph(
        result,
        node.strategy,
        values.partitions,
        (by.npartitions, by.element.npartitions),
        joins,
    )
