"""Lowering plans to Dask: the only place plans become graphs.

``lower_frame`` turns a chain Read -> Transform -> Query into a partitioned Dask collection
plus the bounding box of each partition in the chain's output coordinates (conservative boxes:
the image of a partition's box contains the image of its rows). Aggregate nodes are lowered by
:mod:`spatialflow.plan.aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import PlanError
from spatialflow.plan.nodes import Node, Query, Read, TransformNode
from spatialflow.transforms.apply import box_image, transform_points_frame, transform_shapes_frame

__all__ = ["Frame", "lower_frame"]


@dataclass
class Frame:
    """A lowered points or shapes chain."""

    data: Any  # dask DataFrame / dask-geopandas GeoDataFrame
    bounds: np.ndarray | None  # (npartitions, 2 * d) in output coordinates, or None
    element: Points | Shapes  # the source element (kind, keys, index dtype)
    source_partitions: list[int]

    @property
    def npartitions(self) -> int:
        return int(self.data.npartitions)


def lower_frame(node: Node) -> Frame:
    if isinstance(node, Read):
        return _read(node)
    if isinstance(node, TransformNode):
        f = lower_frame(node.child)
        return _transform(f, node)
    if isinstance(node, Query):
        f = lower_frame(node.child)
        return _query(f, node)
    raise PlanError(f"cannot lower {node.describe()} to a partitioned frame")


def _read(node: Read) -> Frame:
    el = node.element
    if not isinstance(el, Points | Shapes):
        raise PlanError(f"{el.label} is not partitioned (points or shapes)")
    parts = node.partitions() or []
    data = el.data
    if len(parts) != el.npartitions:
        data = (
            data.partitions[parts]
            if parts
            else data.partitions[[0]].head(0, compute=False, npartitions=1)
        )
    bounds = el.partition_bounds
    if bounds is not None:
        bounds = bounds[parts] if parts else np.empty((0, bounds.shape[1]))
    if node.features is not None:
        if not isinstance(el, Points) or el.feature_key is None:
            raise PlanError(f"{el.label}: a feature filter needs points with a feature_key")
        data = data.map_partitions(
            _keep_features, el.feature_key, list(node.features), meta=data._meta
        )
    if node.columns is not None:
        data = data[list(node.columns)]
    if node.bbox is None and node.coalesce:
        data, bounds = _coalesce(data, bounds)
    return Frame(data, bounds, el, parts)


def _coalesce(data: Any, bounds: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
    """Join runs of consecutive partitions (small units of reading, e.g. parquet row groups,
    are too small as units of work): at most 64 per run, about 16 runs or more."""
    n = int(data.npartitions)
    size = int(np.clip(n // 16, 1, 64))
    if size < 2:
        return data, bounds
    import dask
    import dask.dataframe as dd

    parts = data.to_delayed()
    groups = [parts[i : i + size] for i in range(0, n, size)]
    merged = dd.from_delayed(
        [dask.delayed(_concat)(g) for g in groups], meta=data._meta, verify_meta=False
    )
    if bounds is None:
        return merged, None
    d = bounds.shape[1] // 2
    out = []
    for i in range(0, n, size):
        b = bounds[i : i + size]
        ok = ~np.isnan(b).any(axis=1)
        out.append(
            np.r_[b[ok, :d].min(axis=0), b[ok, d:].max(axis=0)]
            if ok.any()
            else np.full(2 * d, np.nan)
        )
    return merged, np.vstack(out)


def _concat(frames: list[Any]) -> Any:
    frames = [f for f in frames if len(f)] or frames[:1]
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def _keep_features(df: pd.DataFrame, key: str, features: list) -> pd.DataFrame:
    return df[df[key].isin(features)]


def _transform(f: Frame, node: TransformNode) -> Frame:
    t = node.transform
    if isinstance(f.element, Points):
        axes = f.element.axes
        meta = f.data._meta.copy()
        for a in axes:
            if not np.issubdtype(meta[a].dtype, np.floating):
                meta[a] = meta[a].astype(np.float64)
        data = f.data.map_partitions(transform_points_frame, t, axes, meta=meta)
    else:
        axes = ("x", "y")
        data = f.data.map_partitions(transform_shapes_frame, t, meta=f.data._meta)
    bounds = (
        None
        if f.bounds is None
        else (np.vstack([box_image(t, b, axes) for b in f.bounds]) if len(f.bounds) else f.bounds)
    )
    return Frame(data, bounds, f.element, f.source_partitions)


def _query(f: Frame, node: Query) -> Frame:
    data = f.data
    if node.features is not None:
        key = getattr(f.element, "feature_key", None)
        if key is None:
            raise PlanError(f"{f.element.label}: a feature filter needs a feature_key")
        data = data.map_partitions(_keep_features, key, list(node.features), meta=data._meta)
    if node.bbox is not None:
        if isinstance(f.element, Points):
            data = data.map_partitions(_points_in_box, node.bbox, meta=data._meta)
        else:
            data = data.map_partitions(_shapes_meeting_box, node.bbox, meta=data._meta)
    return Frame(data, f.bounds, f.element, f.source_partitions)


def _points_in_box(df: pd.DataFrame, box: tuple) -> pd.DataFrame:
    x = df["x"].to_numpy()
    y = df["y"].to_numpy()
    return df[(x > box[0]) & (x < box[2]) & (y > box[1]) & (y < box[3])]


def _shapes_meeting_box(gdf: Any, box: tuple) -> Any:
    import shapely

    if len(gdf) == 0:
        return gdf
    geoms = gdf.geometry.values
    if "radius" in gdf.columns:
        geoms = shapely.buffer(geoms, gdf["radius"].to_numpy(), quad_segs=16)
    return gdf[shapely.intersects(geoms, shapely.box(*box))]
