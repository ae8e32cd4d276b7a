"""Images by labels and by shapes (``zonal``): per-chunk zonal statistics (kernels/zonal.py).

By labels: without resampling when the grids agree, otherwise the image is resampled onto the
labels' grid first. By shapes: every pixel whose centre is inside a shape counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spatialflow.elements.raster import Image, Labels
from spatialflow.errors import PlanError
from spatialflow.kernels.pip import points_in_polygons
from spatialflow.kernels.zonal import ZonalStats, combine_zonal_many, zonal_stats
from spatialflow.plan.aggregate.common import (
    NUMERIC_AGGS,
    AggregateGraph,
    Spec,
    aggregate_table,
    in_order,
    pick,
    tree,
)
from spatialflow.plan.aggregate.join import (
    ByPart,
    boxes_meet,
    by_order,
    by_side,
)
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.optimizer import source_read
from spatialflow.transforms.apply import resample
from spatialflow.transforms.base import Transform
from spatialflow.transforms.composite import Sequence as Chain


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
    return aggregate_table(
        sp.csr_matrix(np.asarray(values, dtype=np.float64).T), stats.ids, np.int64, var, by_name
    )


def lower_image_by_labels(node: Aggregate, spec: Spec) -> AggregateGraph:
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
    stats = tree(parts, _combine_zonal)
    channels = [str(c) for c in image.channel_names]
    result = dask.delayed(_assemble_zonal)(stats, channels, spec.agg, node.by_name)
    return AggregateGraph(result, node.strategy, (len(parts), len(parts)), (1, 1), len(parts))


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
    order: pd.Index | None = None,
) -> ad.AnnData:
    x = (
        sp.vstack([_finish_pixels(b, agg) for b in blocks], format="csr")
        if blocks
        else sp.csr_matrix((0, len(channels)))
    )
    index = np.concatenate([i for i, _ in metas]) if metas else np.empty(0)
    x, index = in_order(x, index, order)
    return aggregate_table(x, index, index_dtype, [f"channel_{c}_{agg}" for c in channels], by_name)


def lower_image_by_shapes(node: Aggregate, spec: Spec) -> AggregateGraph:
    image: Image = source_read(node.values).element  # type: ignore[assignment]
    if spec.agg not in NUMERIC_AGGS:
        raise PlanError(f"agg={spec.agg!r}: images aggregate with one of {NUMERIC_AGGS}")
    if len(image.axes) != 2:
        raise PlanError(f"{image.label}: 3D images by shapes is not supported")
    by, preps, metas, by_bounds = by_side(node, keep_geoms=False)
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
        ks = [k for k in range(by.npartitions) if boxes_meet(box, by_bounds[k])]
        if not ks:
            continue
        joins += len(ks)
        partial = dask.delayed(_pixels_in_shapes)(
            blocks[0, bi, bj], (i0, j0), m, [preps[k] for k in ks]
        )
        for k in ks:
            per_k[k].append(dask.delayed(pick)(partial, k, _empty_pixels, c, metas[k][1]))
    done = []
    for k in range(by.npartitions):
        items = per_k[k] or [dask.delayed(_empty_pixels)(c, metas[k][1])]
        done.append(tree(items))
    channels = [str(ch) for ch in image.channel_names]
    result = dask.delayed(_assemble_pixels)(
        spec.agg,
        channels,
        node.by_name,
        by.element.data._meta.index.dtype,
        metas,
        done,
        by_order(by.element),
    )
    n_blocks = len(arr.chunks[1]) * len(arr.chunks[2])
    return AggregateGraph(
        result, node.strategy, (n_blocks, n_blocks), (by.npartitions, by.element.npartitions), joins
    )
