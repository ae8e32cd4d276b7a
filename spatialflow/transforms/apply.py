"""Applying a transform to data: coordinate frames, geometries, bounding boxes and rasters.

Pure functions on pandas / geopandas frames, numpy boxes and dask arrays, below the element
layer: ``ops/transform.py`` (``sf.transform``) uses them on whole elements, and ``plan/``
lowers transform nodes with them partition by partition.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from spatialflow.transforms.base import Transform

__all__ = [
    "box_image",
    "circle_radius_factor",
    "resample",
    "transform_points_frame",
    "transform_shapes_frame",
]


# --- points and shapes ------------------------------------------------------------------
def transform_points_frame(df: pd.DataFrame, t: Transform, axes: tuple[str, ...]) -> pd.DataFrame:
    """Apply ``t`` to the coordinate columns of one partition."""
    if len(df) == 0:
        return df
    coords = t.apply(df[list(axes)].to_numpy(dtype=np.float64), axes, axes)
    out = df.copy()
    for k, a in enumerate(axes):
        out[a] = coords[:, k].astype(
            df[a].dtype if np.issubdtype(df[a].dtype, np.floating) else np.float64
        )
    return out


def box_image(t: Transform, box: np.ndarray, axes: tuple[str, ...]) -> np.ndarray:
    d = len(axes)
    lo, hi = box[:d], box[d:]
    if np.any(np.isnan(box)):
        return np.full(2 * d, np.nan)
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    moved = t.apply(corners, axes, axes)
    return np.concatenate([moved.min(axis=0), moved.max(axis=0)])


def circle_radius_factor(t: Transform) -> float:
    """How a circle's radius scales under ``t`` (exact for similarities, area-preserving else)."""
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))[:-1, :-1]
    return float(math.sqrt(abs(np.linalg.det(m))))


def transform_shapes_frame(gdf: Any, t: Transform) -> Any:
    """Apply ``t`` to the geometries (and circle radii) of one partition."""
    if len(gdf) == 0:
        return gdf
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    out = gdf.copy()
    geoms = shapely.transform(gdf.geometry.values, lambda c: c @ m[:2, :2].T + m[:2, 2])
    out = out.set_geometry(geoms)
    if "radius" in out.columns:
        out["radius"] = out["radius"].to_numpy(dtype=np.float64) * circle_radius_factor(t)
    return out


# --- rasters -----------------------------------------------------------------------------
def resample(
    src: xr.DataArray,
    axes: tuple[str, ...],
    back: np.ndarray,
    out_shape: tuple[int, ...],
    chunk: int,
    order: int,
) -> da.Array:
    arr = src.data
    lead = arr.shape[: arr.ndim - len(axes)]  # channel dim(s)
    src_shape = np.array(arr.shape[arr.ndim - len(axes) :])
    edges = [[*list(range(0, n, chunk)), n] for n in out_shape]
    blocks = np.empty([len(e) - 1 for e in edges], dtype=object)
    for idx in itertools.product(*[range(len(e) - 1) for e in edges]):
        lo = np.array([edges[k][i] for k, i in enumerate(idx)], dtype=np.float64)
        hi = np.array([edges[k][i + 1] for k, i in enumerate(idx)], dtype=np.float64)
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
        srcc = corners @ back[:-1, :-1].T + back[:-1, -1]
        s_lo = np.clip(np.floor(srcc.min(axis=0) - 1).astype(int), 0, src_shape)
        s_hi = np.clip(np.ceil(srcc.max(axis=0) + 1).astype(int), 0, src_shape)
        shape = tuple(int(h - lo_) for lo_, h in zip(lo, hi, strict=True))
        if np.any(s_hi <= s_lo):
            block = da.zeros(lead + shape, dtype=arr.dtype, chunks=lead + shape)
        else:
            window = arr[(Ellipsis, *[slice(a, b) for a, b in zip(s_lo, s_hi, strict=True)])]
            block = da.from_delayed(
                dask.delayed(_resample_block)(window, back, lo, shape, s_lo, order),
                shape=lead + shape,
                dtype=arr.dtype,
            )
        blocks[idx] = block
    return da.block(blocks.tolist()) if blocks.ndim else blocks.item()


def _resample_block(
    window: np.ndarray,
    back: np.ndarray,
    lo: np.ndarray,
    shape: tuple[int, ...],
    s_lo: np.ndarray,
    order: int,
) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    d = len(shape)
    grids = np.meshgrid(
        *[np.arange(n, dtype=np.float64) + lo[k] + 0.5 for k, n in enumerate(shape)], indexing="ij"
    )
    pts = np.stack([g.ravel() for g in grids], axis=1)  # output pixel centres
    srcp = pts @ back[:-1, :-1].T + back[:-1, -1] - 0.5 - s_lo  # window array indices
    lead = window.shape[: window.ndim - d]
    out = np.empty((*lead, *shape), dtype=window.dtype)
    for c in itertools.product(*[range(n) for n in lead]):
        vals = map_coordinates(
            np.asarray(window[c], dtype=np.float64), srcp.T, order=order, mode="constant", cval=0.0
        )
        if np.issubdtype(window.dtype, np.integer):
            info = np.iinfo(window.dtype)
            vals = np.clip(np.round(vals), info.min, info.max)
        out[c] = vals.reshape(shape).astype(window.dtype)
    return out
