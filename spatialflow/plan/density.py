"""Lowering contour density profiles (``sf.ring_density``, ``sf.smooth_density``) to Dask.

The plan is one :class:`Density` node over two chains (values and contours, each Read ->
Transform into the coordinate system). Lowering makes a map-reduce:

* **contours** (the small side) are computed once while lowering: their geometries in the
  coordinate system, flattened to ragged arrays with a grid index over their boundary segments
  (:mod:`spatialflow.kernels.distance`), handed to every task as ONE graph key. Their ring areas
  (or shell measures) depend on the contours only; they are computed by one task per contour
  (shapely buffers, round joins, 16 segments per quarter circle as shapely defaults), in
  parallel with the points.
* **map**: each values partition whose bounding box (in the coordinate system) comes within
  ``reach`` of some contour is read, its signed distances computed (points farther than the
  reach from every boundary cost a few comparisons), and reduced at once to a partial: an int64
  histogram (contour, category, ring) for rings, fixed-point Gaussian sums for the smoothed
  profile. Partitions out of reach are not read at all.
* **reduce**: partials are summed in a tree of fan-in ``FAN_IN``. Both partials are integers,
  so the result does not depend on the partitioning or the order of the sums (1 or 8
  partitions give identical numbers).
* **finish**: one small task joins sums and areas into the DataFrame.

The reduction tree is a small local helper, not the one in ``plan/aggregate.py`` (which is being
reorganized; importing its private ``_tree`` would couple the two).
"""

from __future__ import annotations

import html
import logging
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import shapely

from spatialflow.errors import PlanError
from spatialflow.kernels.distance import (
    build_segment_index,
    combine_fixed,
    fixed_to_float,
    gaussian_sums,
    ring_counts,
    signed_distances,
)
from spatialflow.kernels.polygons import flatten_polygons
from spatialflow.plan.compiler import Frame, lower_frame
from spatialflow.plan.nodes import Node
from spatialflow.plan.optimizer import source_read
from spatialflow.plan.reduce import FAN_IN, tree_reduce
from spatialflow.plan.result import LazyPlan

__all__ = ["Density", "DensityGraph", "LazyProfile", "lower_density", "ring_edges", "smooth_grid"]

log = logging.getLogger(__name__)
BUFFER_QUAD_SEGS = 16


# =========================================================================================
# the node
# =========================================================================================
@dataclass(frozen=True, eq=False)
class Density(Node):
    """Density of ``values`` by signed distance to the boundaries of ``contours``."""

    values: Node
    contours: Node
    values_name: str
    contours_name: str
    kind: Literal["rings", "smooth"]
    coordinate_system: str
    lo: float  # -inward
    hi: float  # outward
    value_key: str | None = None
    categories: tuple[Any, ...] | None = None
    edges: tuple[float, ...] = ()  # rings
    grid: tuple[float, ...] = ()  # smooth
    bandwidth: float = 0.0  # smooth
    step: float = 0.0  # smooth
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.values, self.contours)

    def with_children(self, *children: Node) -> Node:
        return replace(self, values=children[0], contours=children[1])

    @property
    def reach(self) -> float:
        return max(-self.lo, self.hi)

    @property
    def n_cats(self) -> int:
        return 1 if self.categories is None else len(self.categories)

    def describe(self) -> str:
        key = f" by {self.value_key!r} ({self.n_cats} categories)" if self.value_key else ""
        if self.kind == "rings":
            what = f"RingDensity {len(self.edges) - 1} rings in [{self.lo:g}, {self.hi:g}]"
        else:
            what = (
                f"SmoothDensity bandwidth={self.bandwidth:g} {len(self.grid)} grid points "
                f"in [{self.lo:g}, {self.hi:g}]"
            )
        return (
            f"{what} of {self.values_name!r} around {self.contours_name!r}{key} "
            f"in {self.coordinate_system!r}"
        )


def ring_edges(inward: float, outward: float, width: float) -> np.ndarray:
    """Ring edges from -inward to outward: steps of ``width`` away from -inward up to 0 (the
    ring touching the boundary from inside may be narrower), then from 0 up to outward (the
    outermost ring may be narrower). 0 is always an edge when both sides are present."""
    tol = 1e-9 * width
    inner = [-inward + k * width for k in range(math.ceil(inward / width) + 1)]
    inner = [e for e in inner if e < -tol]
    outer = [k * width for k in range(math.ceil(outward / width) + 1)]
    outer = [e for e in outer if e < outward - tol]
    edges = [*inner, *outer, float(outward)] if outward > 0 else [*inner, 0.0]
    return np.asarray(edges, dtype=np.float64)


def smooth_grid(inward: float, outward: float, step: float) -> np.ndarray:
    """Grid -inward, -inward + step, ... ending exactly at outward."""
    n = math.floor((outward + inward) / step + 1e-9)
    grid = -inward + step * np.arange(n + 1, dtype=np.float64)
    grid = grid[grid < outward - 1e-9 * step]
    return np.append(grid, float(outward))


# =========================================================================================
# contours and their areas
# =========================================================================================
@dataclass
class Contours:
    ids: np.ndarray  # the contour element's index values
    geoms: np.ndarray  # shapely (multi)polygons in the coordinate system


def _polygonal(geoms: np.ndarray, name: str) -> np.ndarray:
    types = shapely.get_type_id(geoms)
    if not np.isin(types, (3, 6)).all():
        bad = int(np.flatnonzero(~np.isin(types, (3, 6)))[0])
        raise PlanError(
            f"density: contour {bad} of {name!r} is a {shapely.get_type(geoms[bad])}; "
            "contours must be polygons or multipolygons (convert circles with shapely.buffer)"
        )
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():  # repair self-intersections, keep polygonal parts only
        geoms = geoms.copy()
        for i in np.flatnonzero(invalid):
            parts = shapely.get_parts(shapely.make_valid(geoms[i]))
            polys = [
                q for p in parts if shapely.get_type_id(p) in (3, 6) for q in shapely.get_parts(p)
            ]
            geoms[i] = shapely.multipolygons(polys) if polys else shapely.Polygon()
    return geoms


def _load_contours(node: Density) -> Contours:
    frame = lower_frame(node.contours)
    (gdf,) = dask.compute(frame.data)
    if "radius" in gdf.columns:
        raise PlanError(
            f"density: contours {node.contours_name!r} are circles; contours must be polygons"
        )
    geoms = np.asarray(gdf.geometry.values, dtype=object)
    return Contours(gdf.index.to_numpy(), _polygonal(geoms, node.contours_name))


def _buffer_areas(geom: Any, distances: np.ndarray) -> np.ndarray:
    """Area of the contour grown (d > 0) or shrunk (d < 0) by each distance (0: itself)."""
    out = np.empty(distances.size)
    for k, t in enumerate(distances):
        out[k] = (
            shapely.area(geom)
            if t == 0
            else shapely.area(shapely.buffer(geom, float(t), quad_segs=BUFFER_QUAD_SEGS))
        )
    return out


def _shell_areas(geom: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Area between the level sets a < b of the signed distance: A(b) - A(a), at least 0."""
    ts, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    areas = _buffer_areas(geom, ts)[inv]
    return np.maximum(areas[a.size :] - areas[: a.size], 0.0)


def _measure(geom: Any, kind: str, edges: np.ndarray, grid: np.ndarray, step: float) -> np.ndarray:
    if kind == "rings":
        return _shell_areas(geom, edges[:-1], edges[1:])
    lo, hi = grid[0], grid[-1]
    a = np.maximum(lo, grid - step / 2)
    b = np.minimum(hi, grid + step / 2)
    width = b - a
    shell = _shell_areas(geom, a, b)
    return np.divide(shell, width, out=np.zeros_like(shell), where=width > 0)


# =========================================================================================
# map: one values partition -> a partial
# =========================================================================================
@dataclass(frozen=True)
class Spec:
    kind: str
    lo: float
    hi: float
    edges: np.ndarray
    grid: np.ndarray
    bandwidth: float
    value_key: str | None
    categories: tuple[Any, ...] | None
    values_are_shapes: bool

    @property
    def n_cats(self) -> int:
        return 1 if self.categories is None else len(self.categories)


def _xy(df: Any, shapes: bool) -> tuple[np.ndarray, np.ndarray]:
    if shapes:
        geoms = np.asarray(df.geometry.values, dtype=object)
        pts = shapely.centroid(geoms)  # a circle's centroid is its centre
        return shapely.get_x(pts), shapely.get_y(pts)
    return df["x"].to_numpy(np.float64), df["y"].to_numpy(np.float64)


def _codes(df: Any, key: str, categories: tuple[Any, ...]) -> np.ndarray:
    col = df[key]
    if isinstance(col.dtype, pd.CategoricalDtype) and tuple(col.cat.categories) == categories:
        return col.cat.codes.to_numpy().astype(np.int64)
    return pd.Categorical(col, categories=list(categories)).codes.astype(np.int64)


def _partial(df: Any, index: Any, spec: Spec) -> tuple[Any, int]:
    """Signed distances of one partition, reduced at once to an integer partial."""
    n_geoms = len(index)
    x, y = _xy(df, spec.values_are_shapes)
    n_nan = int(np.count_nonzero(~(np.isfinite(x) & np.isfinite(y))))
    pi, gi, d = signed_distances(x, y, index, spec.lo, spec.hi)
    cat = None
    if spec.value_key is not None and len(pi):
        cat = _codes(df, spec.value_key, spec.categories)[pi]  # type: ignore[arg-type]
    if spec.kind == "rings":
        return ring_counts(gi, d, cat, spec.edges, n_geoms, spec.n_cats), n_nan
    sums = gaussian_sums(
        gi, d, cat, spec.grid, spec.bandwidth, spec.lo, spec.hi, n_geoms, spec.n_cats
    )
    return sums, n_nan


def _empty(spec: Spec, n_geoms: int) -> Any:
    if spec.kind == "rings":
        return np.zeros((n_geoms, spec.n_cats, spec.edges.size - 1), np.int64)
    shape = (n_geoms, spec.n_cats, spec.grid.size)
    return np.zeros(shape, np.int64), np.zeros(shape, np.int64)


def _combine(*parts: Any) -> Any:
    if isinstance(parts[0], tuple):
        return combine_fixed(*parts)
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def _first(pair: tuple[Any, int]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, int]) -> int:
    return pair[1]


def _sum(*values: int) -> int:
    return int(sum(values))


# =========================================================================================
# finish
# =========================================================================================
def _finish(spec: Spec, ids: np.ndarray, total: Any, measures: list[np.ndarray], n_nan: int) -> Any:
    g, c = len(ids), spec.n_cats
    n = spec.edges.size - 1 if spec.kind == "rings" else spec.grid.size
    measure = np.asarray(measures, dtype=np.float64).reshape(g, 1, n)
    measure = np.broadcast_to(measure, (g, c, n)).reshape(-1)
    cols: dict[str, Any] = {"contour": np.repeat(ids, c * n)}
    if spec.kind == "rings":
        cols["ring_start"] = np.tile(spec.edges[:-1], g * c)
        cols["ring_end"] = np.tile(spec.edges[1:], g * c)
        value = total.reshape(-1).astype(np.int64)
        names = ("count", "area")
    else:
        cols["distance"] = np.tile(spec.grid, g * c)
        value = fixed_to_float(total[0], total[1], spec.bandwidth).reshape(-1)
        names = ("count_density", "geometry_measure")
    if spec.categories is not None:
        codes = np.tile(np.repeat(np.arange(c), n), g)
        cols["category"] = pd.Categorical.from_codes(codes, categories=list(spec.categories))
    cols[names[0]] = value
    cols[names[1]] = measure
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["density"] = np.where(measure > 0, value / np.where(measure > 0, measure, 1), np.nan)
    out = pd.DataFrame(cols)
    out.attrs["dropped_nan"] = int(n_nan)
    return out


# =========================================================================================
# lowering
# =========================================================================================
@dataclass
class DensityGraph:
    result: Any  # Delayed -> DataFrame
    n_contours: int
    partitions: tuple[int, int]  # values partitions (read, total)
    cell_size: float

    @property
    def n_tasks(self) -> int:
        return len(self.result.__dask_graph__())


def _spec(node: Density) -> Spec:
    values_el = source_read(node.values).element
    return Spec(
        node.kind,
        node.lo,
        node.hi,
        np.asarray(node.edges, np.float64),
        np.asarray(node.grid, np.float64),
        float(node.bandwidth),
        node.value_key,
        node.categories,
        values_el.kind == "shapes",
    )


def _near(bounds: np.ndarray | None, reach_box: np.ndarray, n: int) -> list[int]:
    """Values partitions whose boxes come within reach of some contour (all when unknown)."""
    if bounds is None:
        return list(range(n))
    d = bounds.shape[1] // 2
    out = []
    for p in range(n):
        b = bounds[p]
        if np.isnan(b[[0, 1, d, d + 1]]).any():
            continue
        hit = (
            (b[0] <= reach_box[:, 2])
            & (b[d] >= reach_box[:, 0])
            & (b[1] <= reach_box[:, 3])
            & (b[d + 1] >= reach_box[:, 1])
        )
        if hit.any():
            out.append(p)
    return out


def lower_density(node: Density) -> DensityGraph:
    spec = _spec(node)
    contours = _load_contours(node)
    polys = flatten_polygons(contours.geoms)
    index = build_segment_index(polys, node.reach)
    g = len(contours.ids)
    values: Frame = lower_frame(node.values)
    grown = polys.bounds + np.array([-1, -1, 1, 1]) * node.reach
    grown = grown[~np.isnan(grown).any(axis=1)]
    parts = values.data.to_delayed()
    keep = _near(values.bounds, grown, len(parts)) if len(grown) else []
    shared = dask.delayed(index, pure=True, traverse=False)
    partials, nans = [], []
    for p in keep:
        pair = dask.delayed(_partial, pure=True)(parts[p], shared, spec)
        partials.append(dask.delayed(_first, pure=True)(pair))
        nans.append(dask.delayed(_second, pure=True)(pair))
    total = tree_reduce(partials or [dask.delayed(_empty)(spec, g)], _combine)
    n_nan = tree_reduce(nans or [dask.delayed(int)(0)], _sum)
    measures = [
        dask.delayed(_measure, pure=True)(geom, node.kind, spec.edges, spec.grid, node.step)
        for geom in contours.geoms
    ]
    result = dask.delayed(_finish, pure=True)(spec, contours.ids, total, measures, n_nan)
    return DensityGraph(
        result, g, (len(keep), source_read(node.values).element.npartitions), index.grid.cell_size
    )


# =========================================================================================
# the lazy result
# =========================================================================================
class LazyProfile(LazyPlan):
    """The lazy result of ``sf.ring_density`` / ``sf.smooth_density``."""

    node_type = Density

    def _lower(self, node: Density) -> DensityGraph:
        return lower_density(node)

    def explain(self, print_: bool = True) -> str:
        """The optimized plan, the partitions read, the contour index and the task count."""
        g = self.lower()
        lines = [
            "== optimized plan ==",
            *self.optimized().explain_lines(),
            "== execution ==",
            f"contours: {g.n_contours} (boundary segment grid, cell {g.cell_size:.4g}, "
            f"reach {self.plan.reach:g})",
            f"values partitions read: {g.partitions[0]} of {g.partitions[1]} "
            "(others are out of reach of every contour)",
            f"reduction: integer partials, tree of fan-in {FAN_IN}",
            f"tasks: {g.n_tasks}",
        ]
        text = "\n".join(lines)
        if print_:
            print(text)
        return text

    def compute(self, **kwargs: Any) -> pd.DataFrame:
        """Run the plan (on the active distributed client if any); the profile DataFrame."""
        (df,) = dask.compute(self.to_delayed(), **kwargs)
        dropped = int(df.attrs.pop("dropped_nan", 0))
        if dropped:
            warnings.warn(
                f"{self.plan.describe()}: {dropped} values with NaN coordinates were dropped",
                UserWarning,
                stacklevel=2,
            )
        return df

    def __repr__(self) -> str:
        return "LazyProfile:\n" + "\n".join(self.optimized().explain_lines())

    def _repr_html_(self) -> str:
        body = html.escape("\n".join(self.optimized().explain_lines()))
        return f"<div><b>spatialflow lazy profile</b><pre>{body}</pre></div>"
