"""``sf.transform(element, to_coordinate_system)``: an element's data moved into a coordinate
system, lazily.

* Points: coordinates transformed per partition (a 2D transform leaves ``z`` untouched).
* Shapes: geometries transformed per partition. Circle radii are multiplied by the transform's
  scale when it is a similarity (as spatialdata does); otherwise a circle would become an
  ellipse, and spatialflow keeps it a circle of the same *area* (radius times sqrt|det|), with
  a warning. (spatialdata uses the mean modulus of the eigenvalues there.)
* Images and Labels: resampled onto an axis-aligned grid in the target coordinate system,
  chunk by chunk (linear interpolation for images, nearest for labels). The new grid covers the
  transformed extent; its pixel size is |det|^(1/d) of the transform, so the pixel count stays
  about the same. Only the source chunks each output chunk needs are read.

The result carries the identity to ``to_coordinate_system`` and, for every other coordinate
system the element had, the inverse of the applied transform followed by the old one (when the
transform is invertible), so it stays in place everywhere.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import xarray as xr

from spatialflow.elements.base import Element
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import TransformError
from spatialflow.transforms.apply import (
    box_image,
    circle_radius_factor,
    resample,
    transform_points_frame,
    transform_shapes_frame,
)
from spatialflow.transforms.base import Identity, Scale, Transform, Translation
from spatialflow.transforms.composite import Sequence

__all__ = ["circle_radius_factor", "transform", "transform_points_frame", "transform_shapes_frame"]


def transform(element: Element, to_coordinate_system: str) -> Element:
    """The element with its data in ``to_coordinate_system`` (lazy; same element kind)."""
    if to_coordinate_system not in element.transforms:
        raise TransformError(
            f"{element.label} has no transformation to coordinate system "
            f"{to_coordinate_system!r}; it has {sorted(element.transforms)}"
        )
    t = element.transforms[to_coordinate_system]
    if isinstance(element, Points):
        return _points(element, t, to_coordinate_system)
    if isinstance(element, Shapes):
        return _shapes(element, t, to_coordinate_system)
    if isinstance(element, RasterElement):
        return _raster(element, t, to_coordinate_system)
    raise TransformError(f"{element.label}: tables have no coordinates to transform")


def _carried(
    element: Element, t: Transform, to: str, extra: Transform | None = None
) -> dict[str, Transform]:
    out: dict[str, Transform] = {to: extra if extra is not None else Identity()}
    try:
        inv = t.inverse()
    except TransformError:
        return out
    for cs, old in element.transforms.items():
        if cs != to:
            steps = ([extra] if extra is not None else []) + [inv, old]
            out[cs] = Sequence(steps).simplify()
    return out


# --- points ------------------------------------------------------------------------------
def _points(el: Points, t: Transform, to: str) -> Points:
    axes = el.axes
    _check_same_axes(el, t, axes)
    meta = el.data._meta.copy()
    for a in axes:
        if not np.issubdtype(meta[a].dtype, np.floating):
            meta[a] = meta[a].astype(np.float64)
    data = el.data.map_partitions(transform_points_frame, t, axes, meta=meta)
    bounds = None
    if el.partition_bounds is not None:
        bounds = np.vstack([box_image(t, b, axes) for b in el.partition_bounds])
    return Points(
        data,
        feature_key=el.feature_key,
        instance_key=el.instance_key,
        transforms=_carried(el, t, to),
        partition_bounds=bounds,
    )


def _check_same_axes(el: Element, t: Transform, axes: tuple[str, ...]) -> None:
    try:
        t.to_affine_matrix(axes, axes)
    except TransformError as e:
        raise TransformError(
            f"{el.label}: the transform {t!r} does not map the element's axes "
            f"{axes} onto themselves: {e}"
        ) from e


# --- shapes ------------------------------------------------------------------------------
def _shapes(el: Shapes, t: Transform, to: str) -> Shapes:
    _check_same_axes(el, t, ("x", "y"))
    if el.is_circles and not t.is_similarity():
        warnings.warn(
            f"{el.label}: {t!r} is not a similarity, so circles would become ellipses; they are "
            "kept as circles of the same area (radius times sqrt|det|)",
            UserWarning,
            stacklevel=3,
        )
    data = el.data.map_partitions(transform_shapes_frame, t, meta=el.data._meta)
    bounds = None
    if el.partition_bounds is not None:
        if el.is_circles:
            bounds = None  # radii change; recomputed on demand
        else:
            bounds = np.vstack([box_image(t, b, ("x", "y")) for b in el.partition_bounds])
    return Shapes(data, transforms=_carried(el, t, to), partition_bounds=bounds)


# --- rasters -----------------------------------------------------------------------------
def _raster(el: RasterElement, t: Transform, to: str) -> RasterElement:
    src = el.scale(0)
    axes = el.axes  # spatial dims in array order, e.g. ("y", "x")
    _check_same_axes(el, t, axes)
    m = t.to_affine_matrix(axes, axes)
    if np.allclose(m[:-1, :-1], np.eye(len(axes))) and np.allclose(
        m[:-1, -1], np.round(m[:-1, -1])
    ):
        # an integer translation: no resampling, only a new transform
        shift = Translation(m[:-1, -1], axes)
        return _rewrap(el, src, _carried(el, t, to, extra=shift))
    shape = np.array([src.sizes[a] for a in axes], dtype=np.float64)
    corners = np.array(list(itertools.product(*[(0.0, s) for s in shape])))
    moved = t.apply(corners, axes, axes)
    det = abs(np.linalg.det(m[:-1, :-1]))
    if det < 1e-300:
        raise TransformError(f"{el.label}: {t!r} is singular; the raster cannot be resampled")
    ps = det ** (1.0 / len(axes))
    lo = np.floor(moved.min(axis=0) / ps) * ps
    out_shape = tuple(
        int(max(1, math.ceil((moved.max(axis=0)[k] - lo[k]) / ps - 1e-9))) for k in range(len(axes))
    )
    # output pixel index u -> target coordinate lo + u * ps -> source pixel coordinate
    grid = Sequence([Scale([ps] * len(axes), axes), Translation(lo, axes)])
    back = Sequence([grid, t.inverse()]).simplify().to_affine_matrix(axes, axes)
    order = 0 if isinstance(el, Labels) else 1
    chunk = max(256, int(np.max(src.data.chunksize[-1:])))
    data = resample(src, axes, back, out_shape, chunk, order)
    out_el = _rewrap(el, data, _carried(el, t, to, extra=grid))
    return out_el


def _rewrap(el: RasterElement, arr: Any, transforms: dict[str, Transform]) -> RasterElement:
    dims = el.dims
    if isinstance(arr, xr.DataArray):
        arr = arr.data
    factors = [2] * (el.n_scales - 1)
    kwargs: dict[str, Any] = {"dims": dims, "transforms": transforms}
    if isinstance(el, Image):
        kwargs["channel_names"] = el.channel_names
    while factors and min(arr.shape[-len(el.axes) :]) // (2 ** len(factors)) < 1:
        factors.pop()
    return type(el)(arr, scale_factors=factors or None, **kwargs)
