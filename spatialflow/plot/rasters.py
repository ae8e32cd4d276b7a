"""Drawing images (channels as colours) and labels (outlines).

Decisions: the scale drawn is the coarsest whose pixels are still no larger than a screen pixel
(so the bytes read follow the screen, not the raster), sliced to the extent before reading.
Contrast per channel is the 1st..99.5th percentile of the COARSEST scale inside the extent (the
whole coarsest scale when that window is tiny), a cheap read whatever the raster's size. Any
affine transform is drawn exactly (matplotlib warps the image with the pixel -> coordinate
system matrix). A 3D raster shows its middle z plane. Labels are outlined: a pixel is drawn when
it is not background and differs from a 4-neighbour; each label id takes a colour from a
categorical palette by id.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from spatialflow.elements.raster import Image, Labels, RasterElement
from spatialflow.plot.colors import category_colors, channel_colors
from spatialflow.transforms.base import Transform

if TYPE_CHECKING:
    from spatialflow.plot.figure import Canvas

__all__ = ["draw_image", "draw_labels", "pick_scale"]

log = logging.getLogger(__name__)


def _matrix(el: RasterElement, t: Transform, k: int) -> np.ndarray:
    """3x3 matrix: (x, y) pixel coordinates of scale ``k`` -> the coordinate system."""
    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    s0, sk = el.scale(0), el.scale(k)
    f = np.diag([s0.sizes["x"] / sk.sizes["x"], s0.sizes["y"] / sk.sizes["y"], 1.0])
    return m @ f


def pick_scale(el: RasterElement, t: Transform, pixel_size: float) -> int:
    """The coarsest scale whose pixels are no larger than ``pixel_size`` (else scale 0)."""
    best = 0
    for k in range(el.n_scales):
        m = _matrix(el, t, k)
        size = math.sqrt(abs(np.linalg.det(m[:2, :2])))
        if size <= pixel_size * 1.0001:
            best = k
    return best


def _window(
    el: RasterElement, t: Transform, k: int, extent: tuple[float, ...]
) -> tuple[slice, slice] | None:
    """Rows and columns of scale ``k`` that cover ``extent`` (one pixel of margin)."""
    m = _matrix(el, t, k)
    x0, y0, x1, y1 = extent
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], dtype=np.float64)
    px = corners @ np.linalg.inv(m).T
    lv = el.scale(k)
    h, w = lv.sizes["y"], lv.sizes["x"]
    j0 = max(0, math.floor(px[:, 0].min()) - 1)
    j1 = min(w, math.ceil(px[:, 0].max()) + 1)
    i0 = max(0, math.floor(px[:, 1].min()) - 1)
    i1 = min(h, math.ceil(px[:, 1].max()) + 1)
    if i1 <= i0 or j1 <= j0:
        return None
    return slice(i0, i1), slice(j0, j1)


def _plane(lv: xr.DataArray) -> xr.DataArray:
    return lv.isel(z=lv.sizes["z"] // 2) if "z" in lv.dims else lv


def _show(
    ax: Any, rgba: np.ndarray, m: np.ndarray, rows: slice, cols: slice, nearest: bool
) -> None:
    import matplotlib.transforms as mtransforms

    warp = mtransforms.Affine2D(m) + ax.transData
    ax.imshow(
        rgba,
        extent=(cols.start, cols.stop, rows.stop, rows.start),
        origin="upper",
        transform=warp,
        interpolation="nearest" if nearest else "antialiased",
        aspect="auto",
        zorder=1,
    )


def _contrast(el: Image, t: Transform, extent: tuple[float, ...], channels: list[int]) -> Any:
    """(lo, hi) per channel from the coarsest scale (see the module doc): inside the extent,
    else (a flat window) the whole coarsest scale, else (a flat image) 0..max."""
    k = el.n_scales - 1
    full = _plane(el.scale(k)).isel(c=channels)
    win = _window(el, t, k, extent)
    lo = hi = None
    if win is not None and (win[0].stop - win[0].start) * (win[1].stop - win[1].start) >= 64:
        lo, hi = _percentiles(full.isel(y=win[0], x=win[1]))
    if lo is None or np.any(hi <= lo):
        lo2, hi2 = _percentiles(full)
        flat = np.ones(len(channels), dtype=bool) if lo is None else hi <= lo
        lo = np.where(flat, lo2, lo if lo is not None else lo2)
        hi = np.where(flat, hi2, hi if hi is not None else hi2)
    flat = hi <= lo
    lo = np.where(flat, np.minimum(lo, 0.0), lo)
    hi = np.where(flat, np.maximum(hi, lo + 1.0), hi)
    return lo, hi


def _percentiles(lv: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    import dask

    step = max(1, int(math.sqrt(lv.sizes["y"] * lv.sizes["x"] / 4_000_000)))  # cap the read
    (values,) = dask.compute(lv.data[:, ::step, ::step])
    flat = np.asarray(values, dtype=np.float64).reshape(lv.sizes["c"], -1)
    return np.nanpercentile(flat, 1.0, axis=1), np.nanpercentile(flat, 99.5, axis=1)


def draw_image(el: Image, t: Transform, canvas: Canvas, *, color: Any = None) -> None:
    import dask

    names = el.channel_names
    own = isinstance(color, dict | list | tuple) or (isinstance(color, str) and color in names)
    wanted = channel_colors(names, color if own else None)
    canvas.color_used |= own
    idx = [names.index(c) for c in wanted]
    rgb = np.array(list(wanted.values()), dtype=np.float64)  # (C, 3)
    k = pick_scale(el, t, canvas.pixel_size)
    win = _window(el, t, k, canvas.extent)
    if win is None:
        log.info("plot: image %r lies outside the extent", el.name)
        return
    lo, hi = _contrast(el, t, canvas.extent, idx)
    lv = _plane(el.scale(k)).isel(c=idx, y=win[0], x=win[1])
    (pixels,) = dask.compute(lv.data)
    norm = (np.asarray(pixels, dtype=np.float64) - lo[:, None, None]) / (hi - lo)[:, None, None]
    norm = np.clip(np.nan_to_num(norm), 0.0, 1.0)
    out = np.clip(np.einsum("chw,cd->hwd", norm, rgb), 0.0, 1.0)
    rgba = np.concatenate([out, np.ones((*out.shape[:2], 1))], axis=2)
    _show(canvas.ax, rgba, _matrix(el, t, k), win[0], win[1], nearest=False)
    if len(wanted) > 1:
        canvas.legend.extend((str(c), tuple(col)) for c, col in wanted.items())


def draw_labels(el: Labels, t: Transform, canvas: Canvas) -> None:
    import dask

    k = pick_scale(el, t, canvas.pixel_size)
    win = _window(el, t, k, canvas.extent)
    if win is None:
        log.info("plot: labels %r lie outside the extent", el.name)
        return
    lv = _plane(el.scale(k)).isel(y=win[0], x=win[1])
    (lab,) = dask.compute(lv.data)
    lab = np.asarray(lab)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge &= lab != 0
    palette = np.array(list(category_colors(list(range(20))).values()))
    rgba = np.zeros((*lab.shape, 4), dtype=np.float64)
    rgba[..., :3] = palette[lab.astype(np.int64) % len(palette)]
    rgba[..., 3] = edge
    _show(canvas.ax, rgba, _matrix(el, t, k), win[0], win[1], nearest=True)
