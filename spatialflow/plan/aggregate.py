"""Lowering Aggregate nodes: the aggregation engine.

Every strategy produces, per ``by`` partition k, a partial result (a sparse count/sum matrix
of shape (rows of k, variables), or dense per-row statistics), combined across tasks by a
tree reduction *per by partition*, so the final table is assembled from pieces that never
hold more than the result itself. Nothing proportional to the number of points reaches the
client: a points partition is read, transformed, joined and reduced inside one task.

* ``broadcast`` / ``copartition`` (points by shapes): each points partition is joined with the
  ``by`` partitions whose bounding boxes (in the target coordinate system) meet its own -
  all of them when broadcast, usually its own tile and a few neighbours when co-partitioned:
  shapes crossing tile borders are found through the neighbours' boxes, which is the halo.
  The join is a numba point-in-polygon over a uniform grid index (kernels/pip.py). Circles are
  polygons with ``buffer_resolution`` segments per quarter, as spatialdata does.
* ``overlay`` (shapes by shapes): shapely intersections per pair of meeting partitions; with
  ``fractions`` each value shape counts by (intersection area / its own area).
* ``pixel-lookup`` (points by labels): each point reads the label id of the pixel it falls
  in (only the window of the labels array under its partition is read).
* ``zonal`` (image by labels, image by shapes): per-chunk zonal statistics (kernels/zonal.py),
  without resampling when the grids agree; otherwise the image is resampled onto the labels'
  grid first. For image by shapes every pixel whose centre is inside a shape counts.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely

from spatialflow.elements import Image, Labels, Points
from spatialflow.errors import PlanError
from spatialflow.kernels.pip import build_grid_index, points_in_polygons
from spatialflow.kernels.polygons import flatten_polygons
from spatialflow.kernels.zonal import ZonalStats, combine_zonal_many, zonal_stats
from spatialflow.plan.compiler import Frame, lower_frame
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.optimizer import source_read
from spatialflow.transforms import Sequence as Chain
from spatialflow.transforms import Transform
from spatialflow.transforms.apply import resample

__all__ = ["AggregateGraph", "lower_aggregate"]

log = logging.getLogger(__name__)
FAN_IN = 8
NUMERIC_AGGS = ("count", "sum", "mean", "min", "max")


@dataclass
class AggregateGraph:
    """The lowered aggregation: one delayed AnnData plus facts for explain()."""

    result: Any  # dask Delayed -> AnnData
    strategy: str
    values_partitions: tuple[int, int]  # (read, total)
    by_partitions: tuple[int, int]
    joins: int  # partition pairs joined

    @property
    def n_tasks(self) -> int:
        return len(self.result.__dask_graph__())


@dataclass(frozen=True)
class Spec:
    """What is aggregated: a categorical (one variable per category) or numeric column."""

    kind: str  # "categorical" | "numeric" | "ones"
    agg: str
    var_names: list[str]
    value_key: str | None
    fractions: bool = False

    @property
    def n_vars(self) -> int:
        return len(self.var_names)


# =========================================================================================
# by side
# =========================================================================================
@dataclass
class ByPart:
    k: int
    index: np.ndarray
    geoms: np.ndarray  # shapely polygons (circles already polygonized)
    polys: Any  # PolygonArrays
    grid: Any  # GridIndex

    @property
    def n(self) -> int:
        return len(self.index)


def _polygonal(geoms: np.ndarray) -> np.ndarray:
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


def _prepare_by(gdf: Any, k: int, buffer_resolution: int) -> ByPart:
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if "radius" in gdf.columns:
        geoms = shapely.buffer(
            geoms, gdf["radius"].to_numpy(dtype=np.float64), quad_segs=buffer_resolution
        )
    else:
        geoms = _polygonal(geoms)
    polys = flatten_polygons(geoms)
    return ByPart(k, gdf.index.to_numpy(), geoms, polys, build_grid_index(polys.bounds))


def _by_meta(part: ByPart) -> tuple[np.ndarray, int]:
    return part.index, part.n


# =========================================================================================
# partial results
# =========================================================================================
def _empty_partial(spec: Spec, n: int) -> Any:
    if spec.kind == "numeric" and spec.agg in ("min", "max", "mean"):
        return {
            "sum": np.zeros(n),
            "count": np.zeros(n, np.int64),
            "min": np.full(n, np.inf),
            "max": np.full(n, -np.inf),
        }
    dtype = np.int64 if (spec.agg == "count" and not spec.fractions) else np.float64
    return sp.csr_matrix((n, spec.n_vars), dtype=dtype)


def _accumulate(
    spec: Spec, n: int, rows: np.ndarray, cols: np.ndarray | None, vals: np.ndarray | None
) -> Any:
    """A partial for one by partition from (row, variable, value) triples."""
    if spec.kind == "numeric" and spec.agg in ("min", "max", "mean"):
        out = _empty_partial(spec, n)
        v = np.asarray(vals, dtype=np.float64)
        np.add.at(out["sum"], rows, v)
        np.add.at(out["count"], rows, 1)
        np.minimum.at(out["min"], rows, v)
        np.maximum.at(out["max"], rows, v)
        return out
    cols = np.zeros(len(rows), np.int64) if cols is None else cols
    if spec.agg == "count" and not spec.fractions:
        data = np.ones(len(rows), np.int64)
    else:
        data = np.ones(len(rows)) if vals is None else np.asarray(vals, dtype=np.float64)
    m = sp.coo_matrix((data, (rows, cols)), shape=(n, spec.n_vars)).tocsr()
    m.sum_duplicates()
    return m


def _combine(*parts: Any) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {
            "sum": sum(p["sum"] for p in parts),
            "count": sum(p["count"] for p in parts),
            "min": np.minimum.reduce([p["min"] for p in parts]),
            "max": np.maximum.reduce([p["max"] for p in parts]),
        }
    out = first
    for p in parts[1:]:
        out = out + p
    return out


def _tree(items: list[Any], combine: Any = _combine) -> Any:
    """Reduce delayed partial results with ``combine`` in a tree of fan-in FAN_IN."""
    while len(items) > 1:
        groups = [items[i : i + FAN_IN] for i in range(0, len(items), FAN_IN)]
        items = [dask.delayed(combine)(*g) if len(g) > 1 else g[0] for g in groups]
    return items[0]


def _finish(spec: Spec, partial: Any) -> sp.csr_matrix:
    """The final (n, n_vars) CSR block of one by partition, with no stored zeros."""
    if isinstance(partial, dict):
        count = partial["count"]
        if spec.agg == "mean":
            v = np.divide(partial["sum"], count, out=np.zeros_like(partial["sum"]), where=count > 0)
        elif spec.agg == "min":
            v = np.where(count > 0, partial["min"], 0.0)
        else:
            v = np.where(count > 0, partial["max"], 0.0)
        m = sp.csr_matrix(v[:, None])
    else:
        m = partial.tocsr()
    m.eliminate_zeros()
    return m


def _pick(partial: dict[int, Any], k: int, empty: Any, *args: Any) -> Any:
    """The part of a task's result that belongs to by partition ``k`` (else ``empty(*args)``)."""
    return partial[k] if k in partial else empty(*args)


# =========================================================================================
# points by shapes
# =========================================================================================
def _point_values(df: pd.DataFrame, spec: Spec) -> tuple[np.ndarray | None, np.ndarray | None]:
    if spec.kind == "categorical":
        codes = df[spec.value_key].cat.codes.to_numpy().astype(np.int64)
        return codes, None
    if spec.kind == "numeric":
        return None, df[spec.value_key].to_numpy(dtype=np.float64)
    return None, None


def _points_by_shapes(
    df: pd.DataFrame, parts: Sequence[ByPart], spec: Spec
) -> tuple[dict[int, Any], int]:
    x = df["x"].to_numpy(dtype=np.float64)
    y = df["y"].to_numpy(dtype=np.float64)
    n_nan = int(np.count_nonzero(~(np.isfinite(x) & np.isfinite(y))))
    cols, vals = _point_values(df, spec)
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
        out[part.k] = _accumulate(
            spec, part.n, gi, None if cols is None else cols[pi], None if vals is None else vals[pi]
        )
    return out, n_nan


# =========================================================================================
# shapes by shapes
# =========================================================================================
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
        geoms = _polygonal(geoms)
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
        out[part.k] = _accumulate(spec, part.n, bi, cols, vals)
    return out, 0


# =========================================================================================
# assembling the table
# =========================================================================================
def _assemble(
    spec: Spec,
    by_name: str,
    index_dtype: Any,
    metas: list[tuple[np.ndarray, int]],
    blocks: list[Any],
    n_nan: list[int],
) -> ad.AnnData:
    mats = [_finish(spec, b) for b in blocks]
    n_rows = sum(n for _, n in metas)
    x = sp.vstack(mats, format="csr") if mats else sp.csr_matrix((n_rows, spec.n_vars))
    index = np.concatenate([i for i, _ in metas]) if metas else np.empty(0, dtype=index_dtype)
    return _with_dropped(_table(x, index, index_dtype, spec.var_names, by_name), n_nan)


DROPPED = "spatialflow_dropped_nan"


def _with_dropped(adata: ad.AnnData, n_nan: list[int]) -> ad.AnnData:
    """Record how many values were dropped for NaN coordinates (reported by compute())."""
    adata.uns[DROPPED] = int(sum(n_nan))
    return adata


def _table(
    x: sp.csr_matrix, index: np.ndarray, index_dtype: Any, var_names: list[str], by_name: str
) -> ad.AnnData:
    x = sp.csr_matrix(x)
    x.eliminate_zeros()
    x.sort_indices()
    obs = pd.DataFrame(index=pd.Index([str(v) for v in index], dtype="str"))
    if pd.api.types.is_string_dtype(index_dtype) or pd.api.types.is_object_dtype(index_dtype):
        index_dtype = "str"  # pandas' own string dtype (dask may hand us its "string" variant)
    obs["instance_id"] = pd.Series(index, index=obs.index).astype(index_dtype)
    obs["region"] = pd.Categorical.from_codes(np.zeros(len(index), np.int8), [by_name])
    var = pd.DataFrame(index=pd.Index([str(v) for v in var_names], dtype="str"))
    adata = ad.AnnData(x, obs=obs, var=var)
    adata.uns["spatialdata_attrs"] = {
        "region": by_name,
        "region_key": "region",
        "instance_key": "instance_id",
    }
    return adata


# =========================================================================================
# lowering
# =========================================================================================
def _meets(a: np.ndarray, b: np.ndarray) -> bool:
    if np.any(np.isnan(a[[0, 1]])) or np.any(np.isnan(b[[0, 1]])):
        return False
    da_, db = len(a) // 2, len(b) // 2
    return bool(a[0] <= b[db] and b[0] <= a[da_] and a[1] <= b[db + 1] and b[1] <= a[da_ + 1])


def _frame_bounds(f: Frame) -> np.ndarray:
    if f.bounds is not None:
        return f.bounds
    parts = f.data.to_delayed()
    kind_points = isinstance(f.element, Points)
    boxes = dask.compute(*[dask.delayed(_box_of)(p, kind_points) for p in parts])
    return np.vstack(boxes) if boxes else np.empty((0, 4))


def _box_of(part: Any, points: bool) -> np.ndarray:
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


def lower_aggregate(node: Aggregate, spec: Spec) -> AggregateGraph:
    values_el = source_read(node.values).element
    by_el = source_read(node.by).element
    if isinstance(by_el, Labels):
        if isinstance(values_el, Points):
            return _lower_points_by_labels(node, spec)
        return _lower_image_by_labels(node, spec)
    if isinstance(values_el, Image):
        return _lower_image_by_shapes(node, spec)
    return _lower_frames(node, spec)


def _by_side(node: Aggregate) -> tuple[Frame, list[Any], list[Any], np.ndarray]:
    by = lower_frame(node.by)
    res = int(node.options.get("buffer_resolution", 16))
    preps = [dask.delayed(_prepare_by)(p, k, res) for k, p in enumerate(by.data.to_delayed())]
    metas = [dask.delayed(_by_meta)(p) for p in preps]
    return by, preps, metas, _frame_bounds(by)


def _lower_frames(node: Aggregate, spec: Spec) -> AggregateGraph:
    values = lower_frame(node.values)
    by, preps, metas, by_bounds = _by_side(node)
    v_bounds = _frame_bounds(values) if node.strategy != "broadcast" else None
    per_k: dict[int, list[Any]] = {k: [] for k in range(by.npartitions)}
    nan_counts = []
    joins = 0
    res = int(node.options.get("buffer_resolution", 16))
    for p, part in enumerate(values.data.to_delayed()):
        if node.strategy == "broadcast":
            ks = list(range(by.npartitions))
        else:
            ks = [k for k in range(by.npartitions) if _meets(v_bounds[p], by_bounds[k])]
        if not ks:
            continue
        joins += len(ks)
        if node.strategy == "overlay":
            task = dask.delayed(_shapes_by_shapes, nout=2)(
                part, [preps[k] for k in ks], spec, node.value_table, res
            )
        else:
            task = dask.delayed(_points_by_shapes, nout=2)(part, [preps[k] for k in ks], spec)
        partial, n_nan = task
        nan_counts.append(n_nan)
        for k in ks:
            per_k[k].append(dask.delayed(_pick)(partial, k, _empty_partial, spec, metas[k][1]))
    blocks = []
    for k in range(by.npartitions):
        items = per_k[k] or [dask.delayed(_empty_partial)(spec, metas[k][1])]
        blocks.append(_tree(items))
    index_dtype = by.element.data._meta.index.dtype
    result = dask.delayed(_assemble)(spec, node.by_name, index_dtype, metas, blocks, nan_counts)
    n_values = source_read(node.values).element.npartitions  # type: ignore[attr-defined]
    return AggregateGraph(
        result,
        node.strategy,
        (values.npartitions, n_values),
        (by.npartitions, by.element.npartitions),
        joins,
    )


# --- points by labels -------------------------------------------------------------------
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
    cols, vals = _point_values(df, spec)
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
    return _with_dropped(_table(x, ids, np.int64, spec.var_names, by_name), n_nan)


def _lower_points_by_labels(node: Aggregate, spec: Spec) -> AggregateGraph:
    values = lower_frame(node.values)
    labels: Labels = source_read(node.by).element  # type: ignore[assignment]
    arr = labels.scale(0).data
    if arr.ndim != 2:
        raise PlanError(f"{labels.label}: points by 3D labels is not supported")
    to_px = _to_pixels(node, labels)
    bounds = _frame_bounds(values)
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
    ids = _tree([dask.delayed(_unique_ids)(b) for b in arr.to_delayed().ravel()], _union)
    empty = dask.delayed(pd.DataFrame)(
        {
            "id": [],
            "col": [],
            "sum": [],
            "count": [],
            **({"min": [], "max": []} if spec.kind == "numeric" else {}),
        }
    )
    combined = _tree(tasks or [empty], _combine_lookup)
    result = dask.delayed(_assemble_lookup)(spec, node.by_name, ids, combined, nans)
    n = source_read(node.values).element.npartitions  # type: ignore[attr-defined]
    return AggregateGraph(result, node.strategy, (values.npartitions, n), (1, 1), len(tasks))


# --- image by labels ---------------------------------------------------------------------
def _image_on_grid(
    node: Aggregate, image: Image, grid_shape: tuple[int, ...], grid_to_cs: Transform
) -> Any:
    """The image's s0 pixels on another raster's grid (the same array when the grids agree)."""
    src = image.scale(0)
    t_img = image.transforms.get(node.coordinate_system)
    if t_img is None:
        raise PlanError(f"{image.label} has no transformation to {node.coordinate_system!r}")
    axes = image.axes
    m = Chain([grid_to_cs, t_img.inverse()]).to_affine_matrix(axes, axes)
    same_shape = tuple(src.shape[1:]) == tuple(grid_shape)
    if same_shape and np.allclose(m, np.eye(len(axes) + 1), atol=1e-9):
        return src.data
    chunk = 1024
    return resample(src, axes, m, tuple(grid_shape), chunk, order=1)


def _zonal_block(lab: np.ndarray, img: np.ndarray) -> ZonalStats:
    return zonal_stats(lab, img)


def _combine_zonal(*parts: ZonalStats) -> ZonalStats:
    return combine_zonal_many(parts)


def _assemble_zonal(stats: ZonalStats, channels: list[str], agg: str, by_name: str) -> ad.AnnData:
    if agg == "count":
        values = np.repeat(stats.count[None, :].astype(np.float64), len(channels), axis=0)
    elif agg == "mean":
        values = stats.mean
    else:
        values = getattr(stats, agg)
    var = [f"channel_{c}_{agg}" for c in channels]
    return _table(
        sp.csr_matrix(np.asarray(values, dtype=np.float64).T), stats.ids, np.int64, var, by_name
    )


def _lower_image_by_labels(node: Aggregate, spec: Spec) -> AggregateGraph:
    image: Image = source_read(node.values).element  # type: ignore[assignment]
    labels: Labels = source_read(node.by).element  # type: ignore[assignment]
    if not isinstance(image, Image):
        raise PlanError(
            f"aggregate by labels takes points or an image as values, not {image.label}"
        )
    if spec.agg not in NUMERIC_AGGS:
        raise PlanError(f"agg={spec.agg!r}: images aggregate with one of {NUMERIC_AGGS}")
    lab = labels.scale(0).data
    t_lab = labels.transforms.get(node.coordinate_system)
    if t_lab is None:
        raise PlanError(f"{labels.label} has no transformation to {node.coordinate_system!r}")
    img = _image_on_grid(node, image, lab.shape, t_lab)
    img = img.rechunk((img.shape[0], *lab.chunks))
    lab_blocks = lab.to_delayed()
    img_blocks = img.to_delayed()
    parts = [
        dask.delayed(_zonal_block)(lab_blocks[idx], img_blocks[(0, *idx)])
        for idx in itertools.product(*[range(len(c)) for c in lab.chunks])
    ]
    stats = _tree(parts, _combine_zonal)
    channels = [str(c) for c in image.channel_names]
    result = dask.delayed(_assemble_zonal)(stats, channels, spec.agg, node.by_name)
    return AggregateGraph(result, node.strategy, (len(parts), len(parts)), (1, 1), len(parts))


# --- image by shapes ---------------------------------------------------------------------
def _pixels_in_shapes(
    block: np.ndarray, origin: tuple[int, int], px_to_cs: np.ndarray, parts: Sequence[ByPart]
) -> dict[int, Any]:
    c, h, w = block.shape
    ii, jj = np.mgrid[0:h, 0:w]
    cx = (jj.ravel() + origin[1] + 0.5).astype(np.float64)
    cy = (ii.ravel() + origin[0] + 0.5).astype(np.float64)
    x = px_to_cs[0, 0] * cx + px_to_cs[0, 1] * cy + px_to_cs[0, 2]
    y = px_to_cs[1, 0] * cx + px_to_cs[1, 1] * cy + px_to_cs[1, 2]
    vals = block.reshape(c, -1).astype(np.float64)
    out: dict[int, Any] = {}
    for part in parts:
        if part.n == 0:
            continue
        pi, gi = points_in_polygons(x, y, part.polys, part.grid)
        if len(pi) == 0:
            continue
        acc = {
            "sum": np.zeros((c, part.n)),
            "count": np.zeros(part.n, np.int64),
            "min": np.full((c, part.n), np.inf),
            "max": np.full((c, part.n), -np.inf),
        }
        np.add.at(acc["count"], gi, 1)
        for ch in range(c):
            v = vals[ch, pi]
            np.add.at(acc["sum"][ch], gi, v)
            np.minimum.at(acc["min"][ch], gi, v)
            np.maximum.at(acc["max"][ch], gi, v)
        out[part.k] = acc
    return out


def _empty_pixels(c: int, n: int) -> dict[str, np.ndarray]:
    return {
        "sum": np.zeros((c, n)),
        "count": np.zeros(n, np.int64),
        "min": np.full((c, n), np.inf),
        "max": np.full((c, n), -np.inf),
    }


def _finish_pixels(acc: dict[str, np.ndarray], agg: str) -> sp.csr_matrix:
    count = acc["count"]
    if agg == "count":
        v = np.repeat(count[None, :].astype(np.float64), acc["sum"].shape[0], axis=0)
    elif agg == "sum":
        v = acc["sum"]
    elif agg == "mean":
        v = np.divide(acc["sum"], count, out=np.zeros_like(acc["sum"]), where=count > 0)
    else:
        v = np.where(count > 0, acc[agg], 0.0)
    m = sp.csr_matrix(v.T)
    m.eliminate_zeros()
    return m


def _assemble_pixels(
    agg: str,
    channels: list[str],
    by_name: str,
    index_dtype: Any,
    metas: list[tuple[np.ndarray, int]],
    blocks: list[Any],
) -> ad.AnnData:
    x = (
        sp.vstack([_finish_pixels(b, agg) for b in blocks], format="csr")
        if blocks
        else sp.csr_matrix((0, len(channels)))
    )
    index = np.concatenate([i for i, _ in metas]) if metas else np.empty(0)
    return _table(x, index, index_dtype, [f"channel_{c}_{agg}" for c in channels], by_name)


def _lower_image_by_shapes(node: Aggregate, spec: Spec) -> AggregateGraph:
    image: Image = source_read(node.values).element  # type: ignore[assignment]
    if spec.agg not in NUMERIC_AGGS:
        raise PlanError(f"agg={spec.agg!r}: images aggregate with one of {NUMERIC_AGGS}")
    if len(image.axes) != 2:
        raise PlanError(f"{image.label}: 3D images by shapes is not supported")
    by, preps, metas, by_bounds = _by_side(node)
    t_img = image.transforms.get(node.coordinate_system)
    if t_img is None:
        raise PlanError(f"{image.label} has no transformation to {node.coordinate_system!r}")
    m = t_img.to_affine_matrix(("x", "y"), ("x", "y"))
    arr = image.scale(0).data
    arr = arr.rechunk((arr.shape[0], *arr.chunks[1:]))
    blocks = arr.to_delayed()
    c = arr.shape[0]
    per_k: dict[int, list[Any]] = {k: [] for k in range(by.npartitions)}
    offsets = [np.concatenate([[0], np.cumsum(ch)]) for ch in arr.chunks[1:]]
    joins = 0
    for bi, bj in itertools.product(range(len(arr.chunks[1])), range(len(arr.chunks[2]))):
        i0, i1 = int(offsets[0][bi]), int(offsets[0][bi + 1])
        j0, j1 = int(offsets[1][bj]), int(offsets[1][bj + 1])
        corners = np.array([[j0, i0], [j1, i0], [j0, i1], [j1, i1]], float)
        cs = corners @ m[:2, :2].T + m[:2, 2]
        box = np.r_[cs.min(axis=0), cs.max(axis=0)]
        ks = [k for k in range(by.npartitions) if _meets(box, by_bounds[k])]
        if not ks:
            continue
        joins += len(ks)
        partial = dask.delayed(_pixels_in_shapes)(
            blocks[0, bi, bj], (i0, j0), m, [preps[k] for k in ks]
        )
        for k in ks:
            per_k[k].append(dask.delayed(_pick)(partial, k, _empty_pixels, c, metas[k][1]))
    done = []
    for k in range(by.npartitions):
        items = per_k[k] or [dask.delayed(_empty_pixels)(c, metas[k][1])]
        done.append(_tree(items))
    channels = [str(ch) for ch in image.channel_names]
    result = dask.delayed(_assemble_pixels)(
        spec.agg, channels, node.by_name, by.element.data._meta.index.dtype, metas, done
    )
    n_blocks = len(arr.chunks[1]) * len(arr.chunks[2])
    return AggregateGraph(
        result, node.strategy, (n_blocks, n_blocks), (by.npartitions, by.element.npartitions), joins
    )
