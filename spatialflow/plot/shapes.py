"""Drawing shapes: polygons and multipolygons (with holes) and circles.

Decisions: only the partitions whose bounding boxes meet the extent are read (the extent taken
back into the element's own coordinates), and rows outside it are dropped before drawing.
``color`` names a column of the element, else an obs column of a table annotating it, else a
variable (gene) of that table; categories fill with their palette colours and get a legend,
numbers fill through viridis. A plain matplotlib colour fills every shape with it. Without
``color`` shapes are outlined. Fills are opaque unless an image lies below (then alpha 0.6).
Polygons are oriented (exterior counter-clockwise, holes clockwise) so matplotlib's non-zero
fill leaves the holes empty.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spatialflow.elements.shapes import Shapes
from spatialflow.plot.colors import category_colors, numeric_colors, to_rgb
from spatialflow.transforms.apply import box_image, transform_shapes_frame
from spatialflow.transforms.base import Transform

if TYPE_CHECKING:
    from spatialflow.plot.figure import Canvas

__all__ = ["draw_shapes", "local_box", "partitions_meeting", "resolve_color"]

log = logging.getLogger(__name__)


def local_box(t: Transform, extent: tuple[float, ...]) -> np.ndarray:
    """``extent`` (in the coordinate system) taken back into the element's x, y."""
    from spatialflow.transforms.base import Affine

    m = np.linalg.inv(t.to_affine_matrix(("x", "y"), ("x", "y")))
    inv = Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))
    return box_image(inv, np.asarray(extent, dtype=np.float64), ("x", "y"))


def partitions_meeting(el: Any, box: np.ndarray, margin: float = 0.0) -> list[int]:
    """Partitions whose bounding boxes meet ``box`` (x, y only); all when bounds are unknown."""
    bounds = el.partition_bounds
    if bounds is None:
        return list(range(el.npartitions))
    d = len(el.axes)
    lo, hi = bounds[:, :2] - margin, bounds[:, d : d + 2] + margin
    ok = (lo[:, 0] <= box[2]) & (hi[:, 0] >= box[0]) & (lo[:, 1] <= box[3]) & (hi[:, 1] >= box[1])
    return [int(k) for k in np.flatnonzero(ok)]


def resolve_color(
    canvas: Canvas, name: str, frame: pd.DataFrame, color: Any
) -> tuple[str, Any] | None:
    """What ``color`` means for element ``name`` whose visible rows are ``frame``:
    ("values", a Series aligned to frame.index), ("fixed", rgb) or None."""
    if color is None or not isinstance(color, str):
        return None
    if color in frame.columns:
        canvas.color_used = True
        return "values", frame[color]
    for tname, table in canvas.dataset.tables_annotating(name).items():
        adata = table.data
        obs = adata.obs
        mine = obs[obs[table.region_key].astype(str) == name] if table.region_key else obs
        if color in obs.columns:
            values = mine[color]
        elif color in adata.var_names:
            col = adata[mine.index, color].X
            col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
            values = pd.Series(np.asarray(col).ravel(), index=mine.index)
        else:
            continue
        by_instance = pd.Series(values.to_numpy(), index=mine[table.instance_key].to_numpy())
        if isinstance(values.dtype, pd.CategoricalDtype):
            by_instance = by_instance.astype(values.dtype)
        log.info("plot: %r colours %r from table %r", color, name, tname)
        canvas.color_used = True
        return "values", by_instance.reindex(frame.index)
    try:
        rgb = to_rgb(color)
    except ValueError:
        log.info("plot: color %r means nothing for shapes %r; outlined", color, name)
        return None
    canvas.color_used = True
    return "fixed", rgb


def face_colors(canvas: Canvas, values: pd.Series) -> np.ndarray:
    """(N, 4) RGBA for a value column; categories add legend entries."""
    if isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(
        values.dtype
    ):
        cats = (
            list(values.cat.categories)
            if isinstance(values.dtype, pd.CategoricalDtype)
            else sorted(values.dropna().unique(), key=str)
        )
        palette = category_colors(cats)
        out = np.tile([0.6, 0.6, 0.6, 1.0], (len(values), 1))
        for c, col in palette.items():
            out[(values == c).to_numpy()] = (*col, 1.0)
        present = set(values.dropna().unique())
        canvas.legend.extend((str(c), col) for c, col in palette.items() if c in present)
        return out
    return numeric_colors(values.to_numpy(dtype=np.float64))


def draw_shapes(name: str, el: Shapes, t: Transform, canvas: Canvas, *, color: Any = None) -> None:
    import dask
    import shapely

    box = local_box(t, canvas.extent)
    margin = 0.0
    if el.is_circles and el.partition_bounds is not None:  # bounds hold centres: pad by radius
        (margin,) = dask.compute(el.data["radius"].max())
    parts = partitions_meeting(el, box, margin=float(margin))
    if not parts:
        return
    data = el.data if len(parts) == el.npartitions else el.data.partitions[parts]
    (gdf,) = dask.compute(data)
    region = shapely.box(*box)
    if el.is_circles:
        keep = shapely.distance(gdf.geometry.values, region) <= gdf["radius"].to_numpy(np.float64)
    else:
        keep = shapely.intersects(gdf.geometry.values, region)
    gdf = gdf[keep]
    if not len(gdf):
        return
    moved = transform_shapes_frame(gdf, t)
    how = resolve_color(canvas, name, pd.DataFrame(gdf.drop(columns="geometry")), color)
    alpha = 0.6 if canvas.dark else 1.0
    if how is None:
        faces: Any = "none"
        edges: Any = (1.0, 1.0, 1.0) if canvas.dark else (0.15, 0.15, 0.15)
    elif how[0] == "fixed":
        faces, edges = [(*how[1], alpha)], "none"
    else:
        faces = face_colors(canvas, how[1])
        faces[:, 3] = alpha
        edges = "none"
    if el.is_circles:
        _circles(canvas.ax, moved, faces, edges)
    else:
        _polygons(canvas.ax, moved, faces, edges)


def _circles(ax: Any, gdf: Any, faces: Any, edges: Any) -> None:
    import shapely
    from matplotlib.collections import EllipseCollection

    xy = shapely.get_coordinates(gdf.geometry.values)
    d = 2.0 * gdf["radius"].to_numpy(np.float64)
    coll = EllipseCollection(
        d,
        d,
        np.zeros(len(d)),
        units="xy",
        offsets=xy,
        offset_transform=ax.transData,
        facecolors=faces,
        edgecolors=edges,
        linewidths=0.8,
        zorder=2,
    )
    ax.add_collection(coll)


def _polygons(ax: Any, gdf: Any, faces: Any, edges: Any) -> None:
    import shapely
    from matplotlib.collections import PathCollection
    from matplotlib.path import Path

    geoms = shapely.orient_polygons(gdf.geometry.values)
    polys, owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    starts = np.searchsorted(ring_of, np.arange(len(rings)))
    ends = np.append(starts[1:], len(coords))
    ring_owner = owner[ring_poly]  # non-decreasing: parts and rings come in input order
    first = np.searchsorted(ring_owner, np.arange(len(geoms) + 1))
    paths: list[Any] = []
    for g in range(len(geoms)):
        verts, codes = [], []
        for r in range(first[g], first[g + 1]):
            ring = coords[starts[r] : ends[r]]
            c = np.full(len(ring), Path.LINETO, dtype=np.uint8)
            c[0], c[-1] = Path.MOVETO, Path.CLOSEPOLY
            verts.append(ring)
            codes.append(c)
        paths.append(Path(np.concatenate(verts), np.concatenate(codes)) if verts else Path([]))
    coll = PathCollection(
        paths, facecolors=faces, edgecolors=edges, linewidths=0.6, transform=ax.transData
    )
    coll.set_zorder(2)
    ax.add_collection(coll)
