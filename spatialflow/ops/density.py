"""``sf.ring_density`` and ``sf.smooth_density``: density of values by signed distance to contours.

The definitions follow squidpy's draft PR #1163 (issue #1160):

* the **signed distance** of a value to a contour is its distance to the contour's boundary
  (holes included), negative inside the contour and positive outside; values are points, or
  the centroids of shapes (a circle's centre). A value near several contours counts for each.
* ``ring_density``: rings are half-open intervals ``[start, end)`` of signed distance from
  ``-inward`` to ``outward``, stepping ``ring_width`` away from ``-inward`` up to 0 and from 0 up
  to ``outward`` (so the innermost-but-boundary ring and the outermost ring may be narrower); the
  last ring is closed, values outside ``[-inward, outward]`` are not counted, and a value on
  the boundary (distance 0) is in the first outward ring. A ring's **area** is
  ``A(end) - A(start)`` where ``A(t)`` is the area of the contour grown by t (shrunk for t < 0,
  so inward rings lie inside the contour); buffers use round joins with 16 segments per quarter
  circle. ``density = count / area`` (NaN where the area is 0).
* ``smooth_density``: Gaussian kernel smoothing of the signed distances in ``[-inward, outward]``
  (bandwidth ``bandwidth``, cut at 4 bandwidths, reflected at both ends of the range) on a grid
  of step ``grid_step`` (default bandwidth / 4) ending exactly at ``outward``:
  ``count_density(g) = sum_i K(g - s_i) + K(g - (2L - s_i)) + K(g - (2U - s_i))``, normalised
  by ``geometry_measure(g)``, the area between the level sets ``max(L, g - step/2)`` and
  ``min(U, g + step/2)`` divided by their distance (about the length of the iso-distance line).
  ``density = count_density / geometry_measure`` (NaN where the measure is 0).

Both work per contour (the ``contour`` column holds the contour element's index) and, with a
categorical ``value_key`` (a column of the values element), per category. Everything happens
in ``coordinate_system``: values and contours are moved there through the transformation graph
(so ``ring_width`` is in that system's units: Xenium's ``global`` is pixels). z is ignored.

Differences from squidpy: values exactly at ``outward`` count in the last ring only when equal
(squidpy uses ``isclose``); ``metadata_keys``, ``contour_query`` and storing into a table's
``uns`` are left to the caller (filter the contours element, or join the DataFrame).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import PlanError, SpatialFlowError, TransformError
from spatialflow.plan.density import Density, LazyProfile, ring_edges, smooth_grid
from spatialflow.plan.nodes import Node, Read, TransformNode
from spatialflow.transforms import get_transformation_between

__all__ = ["ring_density", "smooth_density"]


def ring_density(
    ds: Dataset,
    values: str,
    contours: str,
    *,
    ring_width: float = 50.0,
    inward: float = 0.0,
    outward: float = 50.0,
    value_key: str | None = None,
    coordinate_system: str = "global",
) -> LazyProfile:
    """Counts, areas and densities of ``values`` per ring of signed distance to each contour.

    ``.compute()`` gives a DataFrame with columns ``contour, ring_start, ring_end, (category),
    count, area, density``, one row per contour, (category) and ring. See the module doc."""
    what = "ring_density"
    width = _positive(ring_width, "ring_width", what)
    lo, hi = _range(inward, outward, what)
    edges = ring_edges(-lo, hi, width)
    return LazyProfile(
        _plan(
            ds,
            values,
            contours,
            value_key,
            coordinate_system,
            what,
            "rings",
            lo,
            hi,
            edges=tuple(float(e) for e in edges),
        )
    )


def smooth_density(
    ds: Dataset,
    values: str,
    contours: str,
    *,
    bandwidth: float,
    grid_step: float | None = None,
    inward: float = 0.0,
    outward: float = 50.0,
    value_key: str | None = None,
    coordinate_system: str = "global",
) -> LazyProfile:
    """A Gaussian-smoothed, area-normalised density profile of ``values`` by signed distance.

    ``.compute()`` gives a DataFrame with columns ``contour, distance, (category),
    count_density, geometry_measure, density``, one row per contour, (category) and grid
    point. See the module doc."""
    what = "smooth_density"
    bw = _positive(bandwidth, "bandwidth", what)
    step = bw / 4 if grid_step is None else _positive(grid_step, "grid_step", what)
    lo, hi = _range(inward, outward, what)
    grid = smooth_grid(-lo, hi, step)
    return LazyProfile(
        _plan(
            ds,
            values,
            contours,
            value_key,
            coordinate_system,
            what,
            "smooth",
            lo,
            hi,
            grid=tuple(float(g) for g in grid),
            bandwidth=bw,
            step=step,
        )
    )


# --- validation ----------------------------------------------------------------------------
def _positive(v: Any, name: str, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise PlanError(f"{what}: {name} must be a number > 0, got {v!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise PlanError(f"{what}: {name} must be a finite number > 0, got {v!r}")
    return f


def _range(inward: Any, outward: Any, what: str) -> tuple[float, float]:
    out = []
    for name, v in (("inward", inward), ("outward", outward)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise PlanError(f"{what}: {name} must be a number >= 0, got {v!r}") from None
        if not (math.isfinite(f) and f >= 0):
            raise PlanError(f"{what}: {name} must be a finite number >= 0, got {v!r}")
        out.append(f)
    if out[0] == 0 and out[1] == 0:
        raise PlanError(f"{what}: inward and outward are both 0; give at least one a range")
    return -out[0], out[1]


def _element(ds: Any, name: Any, role: str, what: str) -> Any:
    if not isinstance(ds, Dataset):
        raise PlanError(f"{what}: expected a Dataset, got {type(ds).__name__}")
    if not isinstance(name, str):
        raise PlanError(f"{what}: {role} must be an element name, got {type(name).__name__}")
    if name not in ds:
        names = [n for n, _ in ds.items()]
        raise PlanError(f"{what}: no element named {name!r} ({role}); elements: {names}")
    return ds[name]


def _categories(el: Any, name: str, key: str | None, what: str) -> tuple[Any, ...] | None:
    if key is None:
        return None
    if key not in el.data.columns:
        raise PlanError(
            f"{what}: value_key {key!r} is not a column of {name!r} "
            f"(columns: {list(el.data.columns)})"
        )
    dtype = el.data._meta[key].dtype
    if not isinstance(dtype, pd.CategoricalDtype):
        raise PlanError(
            f"{what}: value_key {key!r} of {name!r} has dtype {dtype}; it must be categorical "
            "(convert it with .astype('category'))"
        )
    cats = el.data._meta[key].cat.categories
    if len(cats) == 0:
        raise PlanError(
            f"{what}: value_key {key!r} of {name!r} has unknown or no categories; "
            "call .cat.as_known() on the column first"
        )
    return tuple(cats)


def _placed(ds: Dataset, name: str, el: Any, cs: str, what: str, columns: Any = None) -> Node:
    try:
        t = get_transformation_between(ds, name, cs)
    except SpatialFlowError as e:
        raise TransformError(
            f"{what}: {name!r} has no path to coordinate system {cs!r} ({e}); add a "
            f"transformation from {name!r} (or an element linked to it) to {cs!r}"
        ) from e
    read = Read(name, el, columns=columns, coalesce=isinstance(el, Points))
    return TransformNode(read, t, cs)


def _plan(
    ds: Dataset,
    values: str,
    contours: str,
    value_key: str | None,
    cs: str,
    what: str,
    kind: Any,
    lo: float,
    hi: float,
    **extra: Any,
) -> Density:
    v_el = _element(ds, values, "values", what)
    c_el = _element(ds, contours, "contours", what)
    if not isinstance(v_el, Points | Shapes):
        raise PlanError(
            f"{what}: values {values!r} must be points or shapes, not {type(v_el).__name__}"
        )
    if not isinstance(c_el, Shapes) or c_el.is_circles:
        got = "circles" if isinstance(c_el, Shapes) else type(c_el).__name__
        raise PlanError(
            f"{what}: contours {contours!r} must be polygon shapes, got {got}; contours are "
            "the Polygon/MultiPolygon boundaries to measure distances from"
        )
    if values == contours:
        raise PlanError(f"{what}: values and contours are the same element {values!r}")
    if not isinstance(cs, str) or not cs:
        raise PlanError(f"{what}: coordinate_system must be a non-empty string, got {cs!r}")
    cats = _categories(v_el, values, value_key, what)
    columns = None
    if isinstance(v_el, Points):
        columns = tuple(dict.fromkeys([*v_el.axes, *([value_key] if value_key else [])]))
    return Density(
        _placed(ds, values, v_el, cs, what, columns),
        _placed(ds, contours, c_el, cs, what),
        values,
        contours,
        kind,
        cs,
        lo,
        hi,
        value_key=value_key,
        categories=cats,
        **extra,
    )
