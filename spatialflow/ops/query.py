"""Spatial queries that read only what they return: ``bounding_box_query`` and ``polygon_query``.

The query geometry is given in ``target_coordinate_system`` and mapped into each element's own
space through the transformation graph; elements with no path to that system are left out, and
elements left empty are dropped. Results are lazy:

* **points**: partitions whose bounding boxes miss the query are never read (the partition
  list is pruned when the plan is built); the others are filtered per partition, keeping their
  partitioning. A point is kept when it is strictly inside the box (as in spatialdata) or
  inside the polygon, tested in the target coordinate system. ``features`` keeps only rows whose
  feature is listed, pushed into the reader. The selected row groups of stored points are read
  straight through the element's column source, in tasks of about BATCH_ROWS rows (their row
  groups read in parallel): a result of a few thousand points costs one task, and a 1% box over
  10^8 points a few, not a graph of one task per row group.
* **shapes**: kept when they intersect the query; circles are tested as disks (spatialdata tests
  their centres), exactly, in the shapes' own space. Stored shapes are read the same way as
  points, through the element's frame source: each task reads a batch of row groups and
  decodes only the rows whose WKB bounds meet the box.
* **images/labels**: cropped to the pixels whose extent meets the query's bounding box in
  pixel space, exact to the pixel (spatialdata's off-by-one, its issue #1203, is not
  reproduced); every scale is cropped and the crop keeps its position through a translation
  prepended to each transform. Only the chunks under the crop are read.
* **tables** (``filter_table=True``): rows annotating shapes or labels that did not survive are
  dropped. This computes the surviving shape index / label ids (never the points).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import shapely

from spatialflow.dataset import Dataset
from spatialflow.elements.base import Element
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement, scale_key
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.sources import ColumnSource, FrameColumns, FrameSource
from spatialflow.elements.table import Table
from spatialflow.errors import SpatialFlowError, TransformError, ValidationError
from spatialflow.plan.nodes import Read
from spatialflow.transforms import get_transformation_between
from spatialflow.transforms.base import Transform, Translation
from spatialflow.transforms.composite import Sequence as Chain

__all__ = ["QueryError", "bounding_box_query", "polygon_query"]


#: selected partitions of a stored element are read through its source in tasks of about this
#: many rows (points, shapes): a 1% box at 10^8 points is a few tasks, not one per row group
BATCH_ROWS = {"points": 1 << 19, "shapes": 1 << 15}


class QueryError(ValidationError):
    """A query is ill-formed (bad box, axes, polygon or coordinate system)."""


def bounding_box_query(
    ds_or_element: Dataset | Element,
    *,
    axes: Sequence[str],
    min_coordinate: Sequence[float],
    max_coordinate: Sequence[float],
    target_coordinate_system: str,
    filter_table: bool = True,
    features: Sequence[Any] | None = None,
) -> Any:
    """Everything inside an axis-aligned box of ``target_coordinate_system`` (lazy)."""
    axes = tuple(axes)
    lo = np.asarray(min_coordinate, dtype=np.float64).ravel()
    hi = np.asarray(max_coordinate, dtype=np.float64).ravel()
    if (
        not set(axes) <= {"x", "y", "z"}
        or len(set(axes)) != len(axes)
        or not {"x", "y"} <= set(axes)
    ):
        raise QueryError(
            f"bounding_box_query: axes must include 'x' and 'y' (and may add 'z'), got {axes}"
        )
    if lo.size != len(axes) or hi.size != len(axes):
        raise QueryError(
            f"bounding_box_query: {len(axes)} axes {axes} but min_coordinate has "
            f"{lo.size} values and max_coordinate {hi.size}"
        )
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise QueryError("bounding_box_query: coordinates must be finite numbers")
    if np.any(lo >= hi):
        bad = [a for a, x, y in zip(axes, lo, hi, strict=True) if x >= y]
        raise QueryError(
            f"bounding_box_query: min_coordinate must be below max_coordinate (not on axes {bad})"
        )
    ix, iy = axes.index("x"), axes.index("y")
    box = shapely.box(lo[ix], lo[iy], hi[ix], hi[iy])
    z = (lo[axes.index("z")], hi[axes.index("z")]) if "z" in axes else None
    return _query(
        ds_or_element, box, target_coordinate_system, filter_table, features, strict_box=True, z=z
    )


def polygon_query(
    ds_or_element: Dataset | Element,
    polygon: Any,
    *,
    target_coordinate_system: str,
    filter_table: bool = True,
    features: Sequence[Any] | None = None,
) -> Any:
    """Everything inside a (multi)polygon of ``target_coordinate_system`` (lazy)."""
    if not isinstance(polygon, shapely.Polygon | shapely.MultiPolygon):
        raise QueryError(
            f"polygon_query: expected a shapely Polygon or MultiPolygon, got "
            f"{type(polygon).__name__}"
        )
    if polygon.is_empty:
        raise QueryError("polygon_query: the polygon is empty")
    if not polygon.is_valid:
        raise QueryError(
            f"polygon_query: the polygon is invalid "
            f"({shapely.is_valid_reason(polygon)}); repair it with "
            "shapely.make_valid first"
        )
    return _query(
        ds_or_element,
        polygon,
        target_coordinate_system,
        filter_table,
        features,
        strict_box=False,
        z=None,
    )


# --- dispatch ------------------------------------------------------------------------------
def _query(
    obj: Any,
    geom: Any,
    cs: str,
    filter_table: bool,
    features: Sequence[Any] | None,
    strict_box: bool,
    z: tuple | None,
) -> Any:
    feats = tuple(features) if features is not None else None
    if isinstance(obj, Element):
        if cs not in obj.transforms:
            raise QueryError(
                f"{obj.label} has no transformation to coordinate system {cs!r}; "
                f"it has {sorted(obj.transforms)}"
            )
        return _element(obj, obj.transforms[cs], geom, strict_box, z, feats)
    if not isinstance(obj, Dataset):
        raise QueryError(f"expected a Dataset or an element, got {type(obj).__name__}")
    if cs not in obj.coordinate_systems:
        raise QueryError(
            f"unknown coordinate system {cs!r}; the dataset has {obj.coordinate_systems}"
        )
    out = Dataset()
    survivors: dict[str, Any] = {}
    for name, el in obj.items():
        if isinstance(el, Table):
            continue
        try:
            t = get_transformation_between(obj, name, cs)
        except TransformError:
            continue  # not in that coordinate system: left out
        res = _element(el, t, geom, strict_box, z, feats)
        if res is None:
            continue
        getattr(out, el.kind)[name] = res
        survivors[name] = res
    for tname, table in obj.tables.items():
        kept = [r for r in table.region if r in survivors]
        if not kept:
            continue
        out.tables[tname] = _filter_table(table, survivors) if filter_table else table
    return out


def _element(
    el: Element, t: Transform, geom: Any, strict_box: bool, z: tuple | None, feats: tuple | None
) -> Any:
    if isinstance(el, Points):
        return _points(el, t, geom, strict_box, z, feats)
    if isinstance(el, Shapes):
        return _shapes(el, t, geom)
    if isinstance(el, RasterElement):
        return _raster(el, t, geom)
    return el


def _inverse(el: Element, t: Transform) -> Transform:
    try:
        return t.inverse()
    except TransformError as e:
        raise QueryError(
            f"{el.label}: its transform {t!r} is not invertible, so the query "
            "cannot be mapped into its space"
        ) from e


def _geom_back(geom: Any, inv: Transform) -> Any:
    m = inv.to_affine_matrix(("x", "y"), ("x", "y"))
    return shapely.transform(geom, lambda c: c @ m[:2, :2].T + m[:2, 2])


# --- points --------------------------------------------------------------------------------
def _points(
    el: Points, t: Transform, geom: Any, strict_box: bool, z: tuple | None, feats: tuple | None
) -> Points | None:
    inv = _inverse(el, t)
    local = _geom_back(geom, inv)
    box = tuple(float(v) for v in shapely.bounds(local))
    read = Read(el.name or "points", el, bbox=box, features=feats)  # type: ignore[arg-type]
    parts = read.partitions() or []
    if not parts:
        return None
    m = t.to_affine_matrix(el.axes, el.axes)
    keep = _InRegion(
        el.axes,
        m,
        geom if not strict_box else None,
        np.asarray(shapely.bounds(geom)) if strict_box else None,
        z,
    )
    select = (keep, el.feature_key, None if feats is None else list(feats))
    src = el.column_source
    if src is not None and src.reads_frames:
        # tasks read batches of row groups straight (in parallel) and filter them; no graph
        # of one task per row group to build, optimize and schedule
        batches = _batches(parts, src.rows, BATCH_ROWS["points"])
        dtypes = el.data._meta.dtypes.to_dict()
        data = dd.from_delayed(
            [dask.delayed(_read_and_select)(src, b, *select, dtypes) for b in batches],
            meta=el.data._meta,
            verify_meta=False,
        )
        bounds = _batch_bounds(el.partition_bounds, batches)
    else:
        data = el.data if len(parts) == el.npartitions else el.data.partitions[parts]
        data = data.map_partitions(_select_points, *select, meta=data._meta)
        bounds = None if el.partition_bounds is None else el.partition_bounds[parts]
    out = Points(
        data,
        feature_key=el.feature_key,
        instance_key=el.instance_key,
        transforms=dict(el.transforms),
        partition_bounds=bounds,
    )
    out.plan = read  # type: ignore[attr-defined]
    return out


def _read_and_select(
    source: ColumnSource,
    parts: list[int],
    keep: _InRegion,
    feature_key: str | None,
    features: list | None,
    dtypes: dict[str, Any],
) -> pd.DataFrame:
    df = _features(source.read_frame(parts, keep), feature_key, features)
    # pandas builds text columns as its default string dtype, the dask reader as the one
    # dask's string conversion picks: keep the element's dtypes
    wrong = {c: t for c, t in dtypes.items() if c in df.columns and df[c].dtype != t}
    return df.astype(wrong) if wrong else df


def _batches(parts: list[int], rows: Callable[[int], int | None], limit: int) -> list[list[int]]:
    """``parts`` cut, in order, into runs of at most ``limit`` rows (at least one part each; a
    part of unknown size counts as 1/16 of the limit)."""
    out: list[list[int]] = []
    run: list[int] = []
    total = 0
    for k in parts:
        n = rows(k)
        n = limit // 16 if n is None else n
        if run and total + n > limit:
            out.append(run)
            run, total = [], 0
        run.append(k)
        total += n
    if run:
        out.append(run)
    return out


def _batch_bounds(bounds: np.ndarray | None, batches: list[list[int]]) -> np.ndarray | None:
    if bounds is None:
        return None
    return np.concatenate([_union(bounds[b]) for b in batches])


def _union(bounds: np.ndarray) -> np.ndarray:
    d = bounds.shape[1] // 2
    ok = ~np.isnan(bounds).any(axis=1)
    if not ok.any():
        return np.full((1, 2 * d), np.nan)
    return np.r_[bounds[ok, :d].min(axis=0), bounds[ok, d:].max(axis=0)][None, :]


@dataclass(frozen=True)
class _InRegion:
    """The row filter of a points query: the rows whose position, mapped by ``m`` into the
    query's space, lies inside the box (strictly) or the polygon."""

    axes: tuple[str, ...]
    m: np.ndarray
    polygon: Any
    box: np.ndarray | None
    z: tuple | None

    def __call__(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        c = [columns[a] for a in self.axes]
        x, y = _row(self.m[0], c), _row(self.m[1], c)
        if self.box is not None:
            b = self.box
            keep = (x > b[0]) & (x < b[2]) & (y > b[1]) & (y < b[3])
            if self.z is not None and "z" in self.axes:
                zz = _row(self.m[self.axes.index("z")], c)
                keep &= (zz > self.z[0]) & (zz < self.z[1])
            return keep
        return shapely.contains_xy(self.polygon, x, y)


def _row(m_row: np.ndarray, c: list[np.ndarray]) -> np.ndarray:
    """One output coordinate of an affine map, in float64, skipping zero terms (the common
    maps are axis-aligned, so a coordinate usually needs one column, often unscaled)."""
    out: np.ndarray | None = None
    for j, col in enumerate(c):
        if m_row[j] == 0:
            continue
        term = col.astype(np.float64) if m_row[j] == 1 else m_row[j] * col.astype(np.float64)
        out = term if out is None else out + term
    if out is None:
        out = np.zeros(len(c[0]))
    return out + m_row[-1] if m_row[-1] else out


def _select_points(
    df: pd.DataFrame, keep: _InRegion, feature_key: str | None, features: list | None
) -> pd.DataFrame:
    if len(df) == 0:
        return df
    df = df[keep(FrameColumns(df))]
    return _features(df, feature_key, features)


def _features(df: pd.DataFrame, feature_key: str | None, features: list | None) -> pd.DataFrame:
    if features is None or feature_key is None:
        return df
    return df[df[feature_key].isin(features)]


# --- shapes --------------------------------------------------------------------------------
def _shapes(el: Shapes, t: Transform, geom: Any) -> Shapes | None:
    inv = _inverse(el, t)
    local = _geom_back(geom, inv)
    box = tuple(float(v) for v in shapely.bounds(local))
    read = Read(el.name or "shapes", el, bbox=box)  # type: ignore[arg-type]
    parts = read.partitions() or []
    if not parts:
        return None
    src = el.frame_source
    if src is not None:
        # tasks read batches of row groups, decode only the rows whose bounds meet the box,
        # and test those exactly
        batches = _batches(parts, src.rows, BATCH_ROWS["shapes"])
        data = dd.from_delayed(
            [dask.delayed(_read_and_select_shapes)(src, b, local, box) for b in batches],
            meta=el.data._meta,
            verify_meta=False,
        )
        bounds = _batch_bounds(el.partition_bounds, batches)
    else:
        data = el.data if len(parts) == el.npartitions else el.data.partitions[parts]
        data = data.map_partitions(_select_shapes, local, meta=data._meta)
        bounds = None if el.partition_bounds is None else el.partition_bounds[parts]
    out = Shapes(data, transforms=dict(el.transforms), partition_bounds=bounds)
    out.plan = read  # type: ignore[attr-defined]
    return out


def _read_and_select_shapes(source: FrameSource, parts: list[int], local: Any, box: tuple) -> Any:
    return _select_shapes(source.read_frame(parts, bbox=box), local)


def _select_shapes(gdf: Any, local: Any) -> Any:
    if len(gdf) == 0:
        return gdf
    geoms = gdf.geometry.values
    if "radius" in gdf.columns:  # a disk meets the query if its centre is within r of it
        keep = shapely.distance(geoms, local) <= gdf["radius"].to_numpy(np.float64)
    else:
        keep = shapely.intersects(geoms, local)
    return gdf[keep]


# --- rasters -------------------------------------------------------------------------------
def _raster(el: RasterElement, t: Transform, geom: Any) -> RasterElement | None:
    inv = _inverse(el, t)
    axes = el.axes  # e.g. ("y", "x")
    if "z" in axes:
        raise QueryError(f"{el.label}: spatial queries on 3D rasters are not supported yet")
    local = _geom_back(geom, inv)
    x0, y0, x1, y1 = shapely.bounds(local)
    s0 = el.scale(0)
    h, w = s0.sizes["y"], s0.sizes["x"]
    i0, i1 = max(0, math.floor(y0)), min(h, math.ceil(y1))
    j0, j1 = max(0, math.floor(x0)), min(w, math.ceil(x1))
    if i1 <= i0 or j1 <= j0:
        return None
    levels = []
    for k in range(el.n_scales):
        lv = el.scale(k)
        fy, fx = h / lv.sizes["y"], w / lv.sizes["x"]
        sel = {
            "y": slice(int(i0 // fy), max(int(i0 // fy) + 1, math.ceil(i1 / fy))),
            "x": slice(int(j0 // fx), max(int(j0 // fx) + 1, math.ceil(j1 / fx))),
        }
        levels.append(lv.isel(sel))
    shift = Translation([float(j0), float(i0)], ("x", "y"))
    transforms = {cs: Chain([shift, tr]) for cs, tr in el.transforms.items()}
    import xarray as xr

    tree = xr.DataTree.from_dict(
        {scale_key(k): xr.Dataset({"image": lv}) for k, lv in enumerate(levels)}
    )
    kwargs: dict[str, Any] = {"transforms": transforms}
    if isinstance(el, Image):
        kwargs["channel_names"] = el.channel_names
    return type(el)(tree, **kwargs)


# --- tables --------------------------------------------------------------------------------
def _filter_table(table: Table, survivors: dict[str, Any]) -> Table:
    import dask

    obs = table.data.obs
    keep = np.zeros(len(obs), dtype=bool)
    region_col = obs[table.region_key].astype(str).to_numpy()
    inst = obs[table.instance_key].to_numpy()
    lazy = {}
    for region in table.region:
        el = survivors.get(region)
        if isinstance(el, Shapes):
            lazy[region] = el.data.index.to_series()
        elif isinstance(el, Labels):
            lazy[region] = _label_ids(el)
        elif el is not None:  # points: keep every row (their ids are not computed)
            keep |= region_col == region
    computed = dict(zip(lazy, dask.compute(*lazy.values()), strict=True)) if lazy else {}
    for region, ids in computed.items():
        values = ids.to_numpy() if hasattr(ids, "to_numpy") else np.asarray(ids)
        keep |= (region_col == region) & np.isin(inst, values)
    sub = table.data[keep].copy()
    try:
        return Table(
            sub,
            region=list(table.region) if len(table.region) > 1 else table.region[0],
            region_key=table.region_key,
            instance_key=table.instance_key,
        )
    except SpatialFlowError as e:  # pragma: no cover - the subset of a valid table is valid
        raise QueryError(f"{table.label}: {e}") from e


def _label_ids(el: Labels) -> Any:
    import dask.array as da

    arr = el.scale(0).data
    return da.unique(arr)
