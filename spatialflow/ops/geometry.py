"""``sf.rasterize``, ``sf.to_circles`` and ``sf.get_extent``, equal to spatialdata 0.8's.

rasterize (points and shapes -> a lazy Image, or Labels)
--------------------------------------------------------
The canvas is the box ``[min_coordinate, max_coordinate]`` of ``target_coordinate_system``,
``W = round(width * target_unit_to_pixels)`` (or ``target_width``; H keeps the box's aspect
ratio) columns, as spatialdata computes it. Pixel (i, j) covers ``[x0 + j sx, x0 + (j + 1) sx)
x [y0 + i sy, ...)`` with ``sx = width / W``; the result's transform to the target system is
``Scale([sy, sx]) then Translation([y0, x0])``, so pixel centres sit at ``x0 + (j + 1/2) sx``:
no half-pixel shift (the trap of spatialdata issue #1220, which is about its raster path).

* points: binned exactly as datashader (which spatialdata uses) bins them: column
  ``int(x * W / width - x0 * W / width)``, points on the max edge go into the last column,
  points outside the box are dropped. ``agg``: ``"count"`` (default), ``"sum"`` of a numeric
  ``value_key``, ``"count_cat"`` of a categorical ``value_key`` (one channel per category).
* shapes: a pixel belongs to a polygon when its CENTRE is inside (holes honoured); circles are
  first made polygons with 16 segments per quarter, as spatialdata's ``to_polygons``.
  ``agg``: ``"first"`` (default, spatialdata's): the label of the first shape, in row order,
  covering the pixel, labels being ``1 + position of the index value among the sorted unique
  index values`` (spatialdata's ``label_index_to_category``, kept in ``.attrs``); ``"count"``
  of shapes covering the pixel; ``"sum"`` of a numeric ``value_key`` column.
  ``return_regions_as_labels=True`` gives Labels (only with ``"first"``).

Differences from spatialdata, on purpose: a pixel centre exactly ON a polygon edge follows the
engine's one rule (left/bottom edges in, right/top out, so touching polygons never share a
pixel nor leave a gap; datashader leaves centres on left edges out); labels are uint32 when there are more than
65535 shapes (spatialdata raises); ``count_cat`` channels are named by their categories
(spatialdata numbers them 0, 1, ...); where shapes overlap, ``"first"`` is the first in row
order (datashader's is not: it depends on the geometry); a polygon crossing the canvas's far
(max) edge paints no pixel whose centre it misses (datashader paints the last row/column
there); ``value_key`` must be a column of the element (spatialdata
also looks in tables). The work is lazy: one task per points/shapes partition computes its
share of every output chunk it meets (partitions out of the box are not read), and partials are
summed per chunk in a tree, so no task holds more than a chunk per partition.

to_circles / get_extent
-----------------------
``to_circles``: polygons -> circles of equal area at their centroid (lazy, per partition);
labels -> one circle per label id (pixel count -> area; mean of pixel centres -> centre),
computed in one reduction over chunks; circles are returned unchanged. Coordinates are the
element's own, transforms are kept (as spatialdata does; spatialdata 0.8 raises for labels
whose transform is not the identity, spatialflow does not).
``get_extent``: ``{axis: (min, max)}`` of an element or a Dataset in a coordinate system:
points and polygons exactly (after transforming the data), circles as centre +- transformed
radius, rasters as the box of their transformed pixel-edge corners ``[0, size]``. Partition
bounding boxes answer points without reading them when the transform has no rotation/shear.
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import PlanError, TransformError
from spatialflow.kernels.polygons import (
    affine_polygons,
    flatten_polygons,
    rasterize_polygons,
    to_shapely,
)
from spatialflow.plan.reduce import tree_reduce
from spatialflow.transforms.apply import (
    box_image,
    transform_points_frame,
    transform_shapes_frame,
)
from spatialflow.transforms.base import Scale, Transform, Translation
from spatialflow.transforms.composite import Sequence

__all__ = ["get_extent", "rasterize", "to_circles"]

CHUNK = 2048
CIRCLE_QUAD_SEGS = 16


# =========================================================================================
# rasterize
# =========================================================================================
class _Canvas:
    """The output grid, with datashader's linear map ``pixel = v * s + t`` per axis."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, w: int, h: int) -> None:
        self.x0, self.x1, self.y0, self.y1, self.w, self.h = x0, x1, y0, y1, w, h
        self.sx, self.sy = w / (x1 - x0), h / (y1 - y0)
        self.tx, self.ty = -x0 * self.sx, -y0 * self.sy

    def transform(self) -> Transform:
        return Sequence(
            [
                Scale([(self.y1 - self.y0) / self.h, (self.x1 - self.x0) / self.w], ("y", "x")),
                Translation([self.y0, self.x0], ("y", "x")),
            ]
        )

    def tiles(self, chunk: int) -> list[tuple[int, int, int, int]]:
        return [
            (i, min(i + chunk, self.h), j, min(j + chunk, self.w))
            for i in range(0, self.h, chunk)
            for j in range(0, self.w, chunk)
        ]

    def tile_box(self, t: tuple[int, int, int, int]) -> np.ndarray:
        i0, i1, j0, j1 = t
        return np.array(
            [
                self.x0 + j0 / self.sx,
                self.y0 + i0 / self.sy,
                self.x0 + j1 / self.sx,
                self.y0 + i1 / self.sy,
            ]
        )


def _canvas(axes: Any, lo: Any, hi: Any, unit: Any, width: Any, height: Any) -> _Canvas:
    axes = tuple(axes)
    if sorted(axes) != ["x", "y"]:
        raise PlanError(f"rasterize: axes must be ('x', 'y') in some order, got {axes}")
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo.shape != (2,) or hi.shape != (2,) or not np.isfinite([*lo, *hi]).all():
        raise PlanError("rasterize: min_coordinate and max_coordinate need 2 finite numbers each")
    x0, x1 = lo[axes.index("x")], hi[axes.index("x")]
    y0, y1 = lo[axes.index("y")], hi[axes.index("y")]
    if not (x1 > x0 and y1 > y0):
        raise PlanError("rasterize: every max_coordinate must be greater than its min_coordinate")
    given = [v is not None for v in (unit, width, height)]
    if sum(given) != 1:
        raise PlanError(
            "rasterize: give exactly one of target_unit_to_pixels, target_width, target_height"
        )
    if unit is not None:
        w, h = (x1 - x0) * float(unit), (y1 - y0) * float(unit)
    elif width is not None:
        w = float(width)
        h = w * (y1 - y0) / (x1 - x0)
    else:
        h = float(height)
        w = h * (x1 - x0) / (y1 - y0)
    w, h = round(w), round(h)  # numpy rounding, half to even, as spatialdata
    if w < 1 or h < 1:
        raise PlanError(f"rasterize: the canvas would be {w} x {h} pixels; use more pixels")
    return _Canvas(float(x0), float(x1), float(y0), float(y1), int(w), int(h))


def _bin_points(
    df: pd.DataFrame, cv: _Canvas, tiles: list, mode: str, key: str | None, n_ch: int
) -> dict[int, np.ndarray]:
    """This partition's share of each tile it touches: (n_ch, th, tw) float64 per tile."""
    x = df["x"].to_numpy(np.float64)
    y = df["y"].to_numpy(np.float64)
    keep = (cv.x0 <= x) & (x <= cv.x1) & (cv.y0 <= y) & (y <= cv.y1)
    ch = np.zeros(len(df), np.int64)
    w = None
    if mode == "count_cat":
        ch = df[key].cat.codes.to_numpy().astype(np.int64)
        keep &= ch >= 0
    elif mode == "sum":
        w = df[key].to_numpy(np.float64)
        keep &= ~np.isnan(w)
    x, y, ch = x[keep], y[keep], ch[keep]
    w = None if w is None else w[keep]
    xx = np.minimum(np.trunc(x * cv.sx + cv.tx).astype(np.int64), cv.w - 1)
    yy = np.minimum(np.trunc(y * cv.sy + cv.ty).astype(np.int64), cv.h - 1)
    out: dict[int, np.ndarray] = {}
    for k, (i0, i1, j0, j1) in enumerate(tiles):
        m = (yy >= i0) & (yy < i1) & (xx >= j0) & (xx < j1)
        if not m.any():
            continue
        th, tw = i1 - i0, j1 - j0
        flat = (ch[m] * th + (yy[m] - i0)) * tw + (xx[m] - j0)
        counts = np.bincount(flat, weights=None if w is None else w[m], minlength=n_ch * th * tw)
        out[k] = counts.astype(np.float64).reshape(n_ch, th, tw)
    return out


def _prep_shapes(gdf: Any, cv: _Canvas, mode: str, key: str | None, labels: Any) -> tuple:
    """Geometries in pixel space (x' = x sx + tx) and the value each paints."""
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    if "radius" in gdf.columns:
        geoms = shapely.buffer(
            geoms, gdf["radius"].to_numpy(np.float64), quad_segs=CIRCLE_QUAD_SEGS
        )
    polys = affine_polygons(
        flatten_polygons(geoms), np.array([[cv.sx, 0.0, cv.tx], [0.0, cv.sy, cv.ty]])
    )
    if mode == "first":
        values = np.searchsorted(labels, gdf.index.to_numpy()).astype(np.float64) + 1
    elif mode == "sum":
        values = gdf[key].to_numpy(np.float64)
    else:
        values = np.ones(len(gdf))
    return polys, values


def _paint(prep: tuple, tile: tuple, mode: str) -> np.ndarray:
    polys, values = prep
    i0, i1, j0, j1 = tile
    shape = (i1 - i0, j1 - j0)
    b = polys.bounds
    hit = ~((b[:, 2] < j0) | (b[:, 0] > j1) | (b[:, 3] < i0) | (b[:, 1] > i1) | np.isnan(b[:, 0]))
    ids = np.flatnonzero(hit)
    if mode == "first":  # later geometries overwrite earlier: paint in reverse for "first"
        order = ids[::-1]
        sub = _subset(polys, order)
        return rasterize_polygons(shape, j0, i0, 1.0, sub, values[order], np.float64)[None]
    out = np.zeros(shape)
    single = [flatten_polygons(np.array([g], dtype=object)) for g in to_shapely(polys)[ids]]
    for g, one in zip(ids, single, strict=True):  # overlaps add up: one mask per shape
        bi0 = max(i0, math.floor(b[g, 1] - 1))
        bi1 = min(i1, math.ceil(b[g, 3] + 1))
        bj0 = max(j0, math.floor(b[g, 0] - 1))
        bj1 = min(j1, math.ceil(b[g, 2] + 1))
        if bi1 <= bi0 or bj1 <= bj0:
            continue
        mask = rasterize_polygons((bi1 - bi0, bj1 - bj0), bj0, bi0, 1.0, one, np.ones(1), np.uint8)
        out[bi0 - i0 : bi1 - i0, bj0 - j0 : bj1 - j0] += mask * values[g]
    return out[None]


def _subset(polys: Any, ids: Any) -> Any:
    """The geometries ``ids`` of ragged ``polys`` (in that order), as ragged arrays again."""
    return flatten_polygons(to_shapely(polys)[np.asarray(ids, dtype=np.int64)])


def _pick(partial: dict, k: int, shape: tuple) -> np.ndarray:
    return partial.get(k, np.zeros(shape))


def _add(*parts: np.ndarray) -> np.ndarray:
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def _first_of(*parts: np.ndarray) -> np.ndarray:
    out = parts[0].copy()
    for p in parts[1:]:
        np.copyto(out, p, where=out == 0)
    return out


def _meets(a: np.ndarray, box: np.ndarray) -> bool:
    if np.isnan(a).any():
        return False
    return bool(a[0] <= box[2] and a[2] >= box[0] and a[1] <= box[3] and a[3] >= box[1])


def _placed_frame(el: Points | Shapes, cs: str) -> tuple[Any, np.ndarray | None]:
    t = _transform_to(el, cs, "rasterize")
    if isinstance(el, Points):
        axes = el.axes
        meta = el.data._meta.copy()
        for a in axes:
            meta[a] = meta[a].astype(np.float64)
        data = el.data.map_partitions(transform_points_frame, t, axes, meta=meta)
        bounds = el.partition_bounds
        if bounds is not None:
            d = len(axes)
            boxes = np.vstack([box_image(t, b, axes) for b in bounds]) if len(bounds) else bounds
            bounds = boxes[:, [0, 1, d, d + 1]] if len(bounds) else None
        return data, bounds
    data = el.data.map_partitions(transform_shapes_frame, t, meta=el.data._meta)
    bounds = el.partition_bounds
    if bounds is not None and len(bounds) and not el.is_circles:
        bounds = np.vstack([box_image(t, b, ("x", "y")) for b in bounds])
    else:
        bounds = None  # circle radii change: no pruning
    return data, bounds


def rasterize(
    element: Points | Shapes,
    *,
    axes: tuple[str, ...],
    min_coordinate: Any,
    max_coordinate: Any,
    target_coordinate_system: str,
    target_unit_to_pixels: float | None = None,
    target_width: float | None = None,
    target_height: float | None = None,
    value_key: str | None = None,
    agg: str | None = None,
    return_regions_as_labels: bool = False,
    chunk: int = CHUNK,
) -> Image | Labels:
    """Points or shapes on a pixel grid of ``target_coordinate_system`` (lazy); see the
    module doc for the grid, the aggregations and the differences from spatialdata."""
    if not isinstance(element, Points | Shapes):
        raise PlanError(
            f"rasterize: takes points or shapes, got {type(element).__name__} "
            "(rasters are resampled with sf.transform)"
        )
    cs = target_coordinate_system
    cv = _canvas(axes, min_coordinate, max_coordinate, target_unit_to_pixels, target_width,
                 target_height)  # fmt: skip
    is_points = isinstance(element, Points)
    mode = agg or ("count" if is_points else "first")
    allowed = ("count", "sum", "count_cat") if is_points else ("first", "count", "sum")
    if mode not in allowed:
        raise PlanError(f"rasterize: agg for {element.label} must be one of {allowed}, got {agg!r}")
    channels: list[Any] = [0]
    if mode in ("sum", "count_cat"):
        if value_key is None or value_key not in element.data.columns:
            raise PlanError(
                f"rasterize: agg={mode!r} needs value_key, a column of {element.label} "
                f"(columns: {list(element.data.columns)})"
            )
        dtype = element.data._meta[value_key].dtype
        if mode == "count_cat":
            if not isinstance(dtype, pd.CategoricalDtype):
                raise PlanError(f"rasterize: count_cat needs a categorical value_key, got {dtype}")
            channels = list(dtype.categories)
        elif not pd.api.types.is_numeric_dtype(dtype):
            raise PlanError(f"rasterize: agg='sum' needs a numeric value_key, got {dtype}")
    elif value_key is not None:
        raise PlanError(f"rasterize: value_key is not used with agg={mode!r}")
    if return_regions_as_labels and mode != "first":
        raise PlanError("rasterize: return_regions_as_labels needs shapes and agg='first'")
    data, bounds = _placed_frame(element, cs)
    parts = data.to_delayed()
    tiles = cv.tiles(int(chunk))
    labels = None
    attrs: dict[str, Any] = {}
    if mode == "first":
        labels = np.unique(element.data.index.compute().to_numpy())
        attrs["label_index_to_category"] = dict(enumerate(labels.tolist(), start=1))
    near = [
        [p for p in range(len(parts)) if bounds is None or _meets(bounds[p], cv.tile_box(t))]
        for t in tiles
    ]
    used = sorted({p for ps in near for p in ps})
    n_ch = len(channels)
    if is_points:
        partial = {
            p: dask.delayed(_bin_points)(parts[p], cv, tiles, mode, value_key, n_ch) for p in used
        }
    else:
        partial = {
            p: dask.delayed(_prep_shapes)(parts[p], cv, mode, value_key, labels) for p in used
        }
    combine = _first_of if mode == "first" else _add
    blocks = []
    for k, t in enumerate(tiles):
        shape = (n_ch, t[1] - t[0], t[3] - t[2])
        if is_points:
            items = [dask.delayed(_pick)(partial[p], k, shape) for p in near[k]]
        else:
            items = [dask.delayed(_paint)(partial[p], t, mode) for p in near[k]]
        total = tree_reduce(items, combine) if items else dask.delayed(np.zeros)(shape)
        blocks.append(da.from_delayed(total, shape=shape, dtype=np.float64))
    n_cols = len(range(0, cv.w, int(chunk)))
    rows = [blocks[r : r + n_cols] for r in range(0, len(blocks), n_cols)]
    arr = da.block(rows) if len(blocks) > 1 else blocks[0]
    transforms = {cs: cv.transform()}
    if return_regions_as_labels:
        dtype = np.uint16 if len(labels) <= np.iinfo(np.uint16).max else np.uint32  # type: ignore[arg-type]
        out: Image | Labels = Labels(arr[0].astype(dtype), dims=("y", "x"), transforms=transforms)
    else:
        out = Image(arr, dims=("c", "y", "x"), transforms=transforms, channel_names=channels)
    out.attrs = attrs  # type: ignore[attr-defined]
    return out


# =========================================================================================
# to_circles
# =========================================================================================
def _circles_of(gdf: Any) -> gpd.GeoDataFrame:
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    cent = shapely.centroid(geoms)
    radius = np.sqrt(shapely.area(geoms) / math.pi)
    return gpd.GeoDataFrame({"radius": radius}, geometry=cent, index=gdf.index)


def _label_sums(block: np.ndarray, i0: int, j0: int) -> pd.DataFrame:
    ii, jj = np.nonzero(block)
    ids = block[ii, jj]
    df = pd.DataFrame({"id": ids, "n": 1.0, "sx": jj + j0 + 0.5, "sy": ii + i0 + 0.5})
    return df.groupby("id").sum()


def _sum_frames(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames).groupby(level=0).sum()


def to_circles(element: Shapes | Labels) -> Shapes:
    """Circles of equal area at the centroids of polygons or labels (see the module doc)."""
    if isinstance(element, Shapes):
        if element.is_circles:
            return element
        meta = gpd.GeoDataFrame(
            {"radius": np.zeros(0)},
            geometry=gpd.GeoSeries([], crs=None),
            index=element.data._meta.index,
        )
        data = element.data.map_partitions(_circles_of, meta=meta)
        return Shapes(data, transforms=dict(element.transforms))
    if isinstance(element, Labels):
        if element.axes != ("y", "x"):
            raise PlanError(f"to_circles: {element.label} is 3D; only 2D labels are supported")
        arr = element.scale(0).data
        offsets = [np.r_[0, np.cumsum(c)] for c in arr.chunks]
        blocks = arr.to_delayed()
        parts = [
            dask.delayed(_label_sums)(blocks[a, b], int(offsets[0][a]), int(offsets[1][b]))
            for a in range(blocks.shape[0])
            for b in range(blocks.shape[1])
        ]
        (sums,) = dask.compute(tree_reduce(parts, _sum_frames))
        sums = sums.sort_index()
        gdf = gpd.GeoDataFrame(
            {"radius": np.sqrt(sums["n"].to_numpy() / math.pi)},
            geometry=shapely.points(sums["sx"] / sums["n"], sums["sy"] / sums["n"]),
            index=pd.Index(sums.index.to_numpy()),
        )
        return Shapes(gdf, transforms=dict(element.transforms), spatial_sort=False)
    raise PlanError(f"to_circles: takes polygon shapes or labels, got {type(element).__name__}")


# =========================================================================================
# get_extent
# =========================================================================================
def _transform_to(el: Any, cs: str, what: str) -> Transform:
    if cs not in el.transforms:
        raise TransformError(
            f"{what}: {el.label} has no transformation to coordinate system {cs!r}; it has "
            f"{sorted(el.transforms)}"
        )
    return el.transforms[cs]


def _points_extent(el: Points, t: Transform) -> dict[str, tuple[float, float]]:
    axes = el.axes
    m = t.to_affine_matrix(axes, axes)[:-1, :-1]
    b = el.partition_bounds
    if b is not None and np.count_nonzero(m - np.diag(np.diag(m))) == 0:
        d = len(axes)
        ok = ~np.isnan(b).any(axis=1)
        box = np.r_[b[ok, :d].min(axis=0), b[ok, d:].max(axis=0)]
        moved = box_image(t, box, axes)
    else:
        data = el.data.map_partitions(transform_points_frame, t, axes, meta=el.data._meta)
        lo, hi = dask.compute(data[list(axes)].min(), data[list(axes)].max())
        moved = np.r_[lo.to_numpy(np.float64), hi.to_numpy(np.float64)]
    d = len(axes)
    return {a: (float(moved[k]), float(moved[d + k])) for k, a in enumerate(axes)}


def _shapes_box(gdf: Any, t: Transform) -> np.ndarray:
    if len(gdf) == 0:
        return np.full(4, np.nan)
    moved = transform_shapes_frame(gdf, t)
    b = shapely.bounds(np.asarray(moved.geometry.values, dtype=object))
    if "radius" in gdf.columns:
        r = moved["radius"].to_numpy(np.float64)[:, None]
        b = np.c_[b[:, :2] - r, b[:, 2:] + r]
    return np.r_[np.nanmin(b[:, :2], axis=0), np.nanmax(b[:, 2:], axis=0)]


def _element_extent(el: Any, cs: str) -> dict[str, tuple[float, float]]:
    t = _transform_to(el, cs, "get_extent")
    if isinstance(el, Points):
        return _points_extent(el, t)
    if isinstance(el, Shapes):
        boxes = dask.compute(*[dask.delayed(_shapes_box)(p, t) for p in el.data.to_delayed()])
        b = np.vstack(boxes)
        b = b[~np.isnan(b).any(axis=1)]
        if not len(b):
            raise PlanError(f"get_extent: {el.label} is empty")
        return {"x": (float(b[:, 0].min()), float(b[:, 2].max())),
                "y": (float(b[:, 1].min()), float(b[:, 3].max()))}  # fmt: skip
    if isinstance(el, RasterElement):
        axes = el.axes
        size = np.array([el.scale(0).sizes[a] for a in axes], np.float64)
        moved = box_image(t, np.r_[np.zeros(len(axes)), size], axes)
        d = len(axes)
        return {a: (float(moved[k]), float(moved[d + k])) for k, a in enumerate(axes)}
    raise PlanError(f"get_extent: {el.label} has no spatial extent")


def get_extent(
    ds_or_element: Any, coordinate_system: str = "global"
) -> dict[str, tuple[float, float]]:
    """``{axis: (min, max)}`` of an element, or of every element of a Dataset that has a
    transformation to ``coordinate_system`` (tables are skipped); see the module doc."""
    if not isinstance(ds_or_element, Dataset):
        return _element_extent(ds_or_element, coordinate_system)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for _, el in ds_or_element.items():
        if not isinstance(el, Points | Shapes | RasterElement):
            continue
        if coordinate_system not in el.transforms:
            continue
        for a, (a0, a1) in _element_extent(el, coordinate_system).items():
            lo[a] = min(lo.get(a, a0), a0)
            hi[a] = max(hi.get(a, a1), a1)
    if not lo:
        raise TransformError(
            f"get_extent: no element of the Dataset has a transformation to coordinate system "
            f"{coordinate_system!r}; pass one of the coordinate systems its elements have"
        )
    return {a: (lo[a], hi[a]) for a in lo}
