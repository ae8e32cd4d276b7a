"""Drawing points: markers for a few, datashader aggregates for many.

Decisions:

* Only the partitions whose bounding boxes meet the extent are read (bbox pushdown); each task
  filters its rows to the extent (and to ``genes``) and maps them into the coordinate system.
* When the element carries a points index (issue 13: an ``index`` / ``points_index``
  description and ``spatialflow.ops.index.viewport_query``), the coarsest levels that hold about
  ``INDEX_PREVIEW_POINTS`` points are read instead: a faithful preview of relative density for a
  fraction of the bytes. Without an index every selected partition is read.
* Up to ``SCATTER_MAX_POINTS`` (10^5) visible points are drawn as markers. A small selection
  (at most ``SMALL_PARTITIONS`` partitions) is first collected with a per-task cap, so it is
  read once; anything larger, or a small selection over the cap, is aggregated: every partition
  becomes a datashader aggregate on the screen's grid (``Canvas.points`` on that pandas
  partition, inside a Dask task), aggregates are summed in a tree, and only the final
  ``height x width (x categories)`` array reaches the client. Memory is bounded by the canvas
  size times the number of tasks in flight, whatever the number of points.
* Colour: with ``genes`` (or ``color`` naming a categorical column with at most
  ``MAX_CATEGORIES`` categories) each category has its palette colour (legend); a numeric
  column is averaged per pixel and shown through viridis; otherwise densities are shaded with
  histogram equalisation.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.errors import ValidationError
from spatialflow.plot.colors import category_colors, numeric_colors, to_rgb
from spatialflow.plot.shapes import local_box, partitions_meeting
from spatialflow.transforms.base import Transform

if TYPE_CHECKING:
    from spatialflow.plot.figure import Canvas

__all__ = ["SCATTER_MAX_POINTS", "draw_points"]

log = logging.getLogger(__name__)

SCATTER_MAX_POINTS = 100_000
SMALL_PARTITIONS = 8
MAX_CATEGORIES = 16
INDEX_PREVIEW_POINTS = 2_000_000


def _visible(
    df: pd.DataFrame,
    m: np.ndarray,
    extent: tuple[float, ...],
    feature_key: str | None,
    genes: list | None,
    column: str | None,
) -> pd.DataFrame:
    """Rows of one partition inside ``extent``, as columns x, y (+ the colour column)."""
    if genes is not None and feature_key is not None:
        df = df[df[feature_key].isin(genes)]
    xy = df[["x", "y"]].to_numpy(dtype=np.float64)
    moved = xy @ m[:2, :2].T + m[:2, 2]
    x0, y0, x1, y1 = extent
    keep = (moved[:, 0] >= x0) & (moved[:, 0] <= x1) & (moved[:, 1] >= y0) & (moved[:, 1] <= y1)
    out = pd.DataFrame({"x": moved[keep, 0], "y": moved[keep, 1]})
    if column is not None:
        col = df[column].to_numpy()[keep] if len(df) else df[column].iloc[:0]
        out[column] = pd.Series(col, dtype=df[column].dtype).to_numpy()
        if isinstance(df[column].dtype, pd.CategoricalDtype):
            cats = genes if (genes is not None and column == feature_key) else None
            out[column] = pd.Categorical(
                col, categories=cats if cats is not None else df[column].cat.categories
            )
    return out


def _aggregate(part: pd.DataFrame, shape: tuple[int, int], args: tuple, mode: str) -> np.ndarray:
    """One partition as a datashader aggregate on the screen grid (see the module doc)."""
    return _agg_rows(_visible(part, *args), shape, args, mode)


def _agg_rows(vis: pd.DataFrame, shape: tuple[int, int], args: tuple, mode: str) -> np.ndarray:
    """Visible rows (x, y in the coordinate system) as an aggregate on the screen grid."""
    import datashader as dsh

    column = args[-1]
    x0, y0, x1, y1 = args[1]
    cvs = dsh.Canvas(plot_width=shape[1], plot_height=shape[0], x_range=(x0, x1), y_range=(y0, y1))
    if mode == "categories":
        return np.asarray(cvs.points(vis, "x", "y", agg=dsh.by(column, dsh.count())).data)
    if mode == "numeric":  # sum and count, so the mean can be taken after the tree sum
        s = cvs.points(vis, "x", "y", agg=dsh.sum(column)).data
        n = cvs.points(vis, "x", "y", agg=dsh.count()).data
        return np.stack([np.nan_to_num(s), n.astype(np.float64)], axis=-1)
    return np.asarray(cvs.points(vis, "x", "y", agg=dsh.count()).data)


def _add(*arrays: np.ndarray) -> np.ndarray:
    out = arrays[0].copy()
    for a in arrays[1:]:
        out += a
    return out


def _tree_sum(parts: list[Any], fan_in: int = 4) -> Any:
    import dask

    while len(parts) > 1:
        parts = [
            dask.delayed(_add)(*parts[i : i + fan_in])
            if len(parts[i : i + fan_in]) > 1
            else parts[i]
            for i in range(0, len(parts), fan_in)
        ]
    return parts[0]


def _index_rows(canvas: Canvas, name: str, el: Points, genes: list | None) -> Any:
    """Rows from the coarse levels of a points index, or None when there is none."""
    info = getattr(el, "points_index", None) or getattr(el, "index", None)
    if not info:
        return None
    try:
        mod = importlib.import_module("spatialflow.ops.index")
    except ImportError:
        return None
    query = getattr(mod, "viewport_query", None)
    if query is None:
        return None
    x0, y0, x1, y1 = canvas.extent
    lazy = query(
        canvas.dataset,
        name,
        min_coordinate=[x0, y0],
        max_coordinate=[x1, y1],
        target_coordinate_system=canvas.coordinate_system,
        max_points=INDEX_PREVIEW_POINTS,
        genes=genes,
    )
    log.info("plot: points %r read from its index's coarse levels", name)
    return lazy.compute() if hasattr(lazy, "compute") else lazy


def _check_genes(el: Points, name: str, genes: Sequence[Any] | None) -> list | None:
    if genes is None:
        return None
    if el.feature_key is None:
        raise ValidationError(f"plot: genes given but points {name!r} have no feature_key")
    genes = [genes] if isinstance(genes, str) else list(genes)
    unknown = [g for g in genes if g not in set(el.feature_categories)]
    if unknown:
        raise ValidationError(
            f"plot: genes {unknown[:5]} are not features of points {name!r} "
            f"(column {el.feature_key!r}, e.g. {el.feature_categories[:5]})"
        )
    return genes


def _color_column(
    canvas: Canvas, el: Points, name: str, genes: list | None, color: Any
) -> tuple[Any, Any]:
    """(column or None, fixed rgb or None)."""
    meta = el.data._meta
    if isinstance(color, str) and color in meta.columns:
        canvas.color_used = True
        return color, None
    default = el.feature_key if genes is not None else None
    if color is None:
        return default, None
    try:
        rgb = to_rgb(color)
    except ValueError:
        log.info("plot: color %r means nothing for points %r", color, name)
        return default, None
    canvas.color_used = True
    return None, rgb


def draw_points(
    name: str,
    el: Points,
    t: Transform,
    canvas: Canvas,
    *,
    genes: Sequence[Any] | None = None,
    color: Any = None,
) -> None:
    import dask

    genes = _check_genes(el, name, genes)
    column, fixed = _color_column(canvas, el, name, genes, color)
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    args = (m, canvas.extent, el.feature_key, genes, column)
    mode, categories = _mode(el, column, genes)
    agg_args = args if mode != "counts" else (*args[:-1], None)
    shape = (canvas.height, canvas.width)
    indexed = _index_rows(canvas, name, el, genes)
    if indexed is not None:  # rows of the index's coarse levels, in the element's coordinates
        got: list[Any] = [_partial(indexed, SCATTER_MAX_POINTS, args, agg_args, shape, mode)]
    else:
        parts = partitions_meeting(el, local_box(t, canvas.extent))
        if not parts:
            return
        every = el.data.to_delayed()
        chosen = [every[k] for k in parts]
        if len(parts) > SMALL_PARTITIONS:  # surely many points: aggregate on the cluster
            tasks = [dask.delayed(_aggregate)(p, shape, agg_args, mode) for p in chosen]
            (total,) = dask.compute(_tree_sum(tasks))
            log.info("plot: points %r aggregated from %d partitions", name, len(parts))
            _shade(canvas, total, mode, column, categories, fixed)
            return
        cap = SCATTER_MAX_POINTS
        got = list(
            dask.compute(
                *[dask.delayed(_partial)(p, cap, args, agg_args, shape, mode) for p in chosen]
            )
        )
    frames = [g for g in got if isinstance(g, pd.DataFrame)]
    if len(frames) == len(got) and sum(len(f) for f in frames) <= SCATTER_MAX_POINTS:
        rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        _scatter(canvas, rows, column, fixed)
        return
    total = _add(
        *[g if isinstance(g, np.ndarray) else _agg_rows(g, shape, agg_args, mode) for g in got]
    )
    _shade(canvas, total, mode, column, categories, fixed)


def _partial(
    part: pd.DataFrame, cap: int, args: tuple, agg_args: tuple, shape: tuple, mode: str
) -> pd.DataFrame | np.ndarray:
    """A partition's visible rows when there are at most ``cap``, else its aggregate."""
    vis = _visible(part, *args)
    return vis if len(vis) <= cap else _agg_rows(vis, shape, agg_args, mode)


def _mode(el: Points, column: str | None, genes: list | None) -> tuple[str, list[Any]]:
    """How many points are shaded: counts, categories (and which) or numeric means."""
    if column is None:
        return "counts", []
    dtype = el.data._meta[column].dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = (
            list(genes)
            if genes is not None and column == el.feature_key
            else list(dtype.categories)
        )
        if len(cats) <= MAX_CATEGORIES:
            return "categories", cats
        log.warning(
            "plot: %d categories in %r are too many to colour when aggregating (max %d); "
            "showing densities (pass genes=[...] to pick some)",
            len(cats),
            column,
            MAX_CATEGORIES,
        )
        return "counts", []
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric", []
    return "counts", []


def _scatter(canvas: Canvas, rows: pd.DataFrame, column: str | None, fixed: Any) -> None:
    if not len(rows):
        return
    if fixed is not None:
        colors: Any = [fixed]
    elif column is None:
        colors = [(1.0, 1.0, 0.2) if canvas.dark else (0.12, 0.47, 0.71)]
    else:
        values = rows[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            palette = category_colors(list(values.cat.categories))
            colors = np.array([palette[c] for c in values.cat.categories] + [(0.6, 0.6, 0.6)])
            colors = colors[np.where(values.cat.codes < 0, len(palette), values.cat.codes)]
            present = set(values.dropna().unique())
            canvas.legend.extend((str(c), col) for c, col in palette.items() if c in present)
        else:
            colors = numeric_colors(values.to_numpy(dtype=np.float64))
    size = 9.0 if len(rows) < 10_000 else 2.0
    canvas.ax.scatter(
        rows["x"].to_numpy(), rows["y"].to_numpy(), s=size, c=colors, linewidths=0, zorder=3
    )


def _shade(
    canvas: Canvas,
    total: np.ndarray,
    mode: str,
    column: str | None,
    categories: list[Any],
    fixed: Any,
) -> None:
    import datashader.transfer_functions as tf
    import xarray as xr

    shape = total.shape[:2]
    log.info("plot: %d points shaded", int(_count(total, mode)))
    x0, y0, x1, y1 = canvas.extent
    coords = {"y": np.linspace(y0, y1, shape[0]), "x": np.linspace(x0, x1, shape[1])}
    if mode == "categories":
        agg = xr.DataArray(total, dims=("y", "x", column), coords={**coords, column: categories})
        palette = category_colors(categories)
        img = tf.shade(agg, color_key=[_hex(palette[c]) for c in categories], how="eq_hist")
        present = total.reshape(-1, len(categories)).sum(axis=0) > 0
        canvas.legend.extend(
            (str(c), palette[c]) for c, p in zip(categories, present, strict=True) if p
        )
    elif mode == "numeric":
        mean = np.where(total[..., 1] > 0, total[..., 0] / np.maximum(total[..., 1], 1), np.nan)
        rgba = numeric_colors(mean.ravel()).reshape(*shape, 4)
        rgba[..., 3] = total[..., 1] > 0
        _show(canvas, (rgba * 255).astype(np.uint8))
        return
    else:
        agg = xr.DataArray(total, dims=("y", "x"), coords=coords)
        cmap = [_hex(fixed)] * 2 if fixed is not None else _density_cmap(canvas.dark)
        img = tf.shade(agg, cmap=cmap, how="eq_hist", min_alpha=90)
    img = tf.dynspread(img, threshold=0.5, max_px=2)
    packed = np.ascontiguousarray(np.asarray(img.data, dtype=np.uint32))
    _show(canvas, packed.view(np.uint8).reshape(*packed.shape, 4))  # RGBA, row 0 = smallest y


def _count(total: np.ndarray, mode: str) -> float:
    return float(total[..., 1].sum()) if mode == "numeric" else float(total.sum())


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(v * 255):02x}" for v in rgb[:3])


def _density_cmap(dark: bool) -> list[str]:
    return ["#3b0f70", "#fe9f6d", "#fcfdbf"] if dark else ["#9ecae1", "#08306b"]


def _show(canvas: Canvas, rgba: np.ndarray) -> None:
    """A screen-sized RGBA array whose row 0 is the extent's smallest y."""
    x0, y0, x1, y1 = canvas.extent
    canvas.ax.imshow(
        rgba,
        extent=(x0, x1, y1, y0),
        origin="upper",
        interpolation="nearest",
        aspect="auto",
        zorder=3,
    )
