"""Fusing one output block from the tiles that meet it: resampling, blending weights, weighted
average. Pure numpy/scipy.

Design decisions:

* Coordinates: pixel ``i`` covers ``[i, i + 1)``, its centre is ``i + 0.5`` (as everywhere in
  spatialflow). ``back`` maps an output pixel coordinate to the tile's pixel coordinate.
* A tile whose ``back`` is a pure integer translation is *copied* (sliced), never interpolated,
  so integer placements reproduce the input exactly; any other tile is resampled linearly
  (``scipy.ndimage.map_coordinates``, order 1) inside its extent.
* Blending weight of a tile at a point = ramp(distance to the nearest tile edge / width), in
  tile pixels: ``"cosine"`` (raised cosine, 0 at the edge, 1 from ``width`` inward),
  ``"linear"``, or ``None`` (1 everywhere inside: a plain average of the overlapping tiles).
  Weights are normalized per pixel; pixels no tile covers are 0.
* The weighted sum runs in float64; integer outputs are rounded and clipped to the dtype.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Source", "fuse_block", "ramp"]


@dataclass(frozen=True)
class Source:
    """One tile's contribution to a block: ``window`` = tile[..., offset:offset + shape]."""

    window: np.ndarray  # (*lead, *spatial) the tile region the block needs
    offset: np.ndarray  # the window's first index in tile pixels, per spatial dim
    tile_shape: np.ndarray  # the full tile's spatial shape
    back: np.ndarray  # (d+1, d+1) output pixel coordinate -> tile pixel coordinate


def ramp(dist: np.ndarray, width: float, kind: str | None) -> np.ndarray:
    """Blending weight for a distance (tile pixels) to the tile edge."""
    if kind is None:
        return np.ones_like(dist)
    t = np.clip(dist / max(width, 1e-9), 0.0, 1.0)
    if kind == "linear":
        return t
    if kind == "cosine":
        return 0.5 * (1.0 - np.cos(np.pi * t))
    raise ValueError(f"unknown blending {kind!r}")


def _integer_shift(back: np.ndarray) -> np.ndarray | None:
    d = back.shape[0] - 1
    lin, t = back[:d, :d], back[:d, d]
    if np.allclose(lin, np.eye(d), atol=1e-9) and np.allclose(t, np.round(t), atol=1e-6):
        return np.round(t).astype(int)
    return None


def _edge_distance(coords: list[np.ndarray], shape: np.ndarray) -> np.ndarray:
    """Distance of tile points (coordinate arrays, broadcastable) to the tile's border."""
    dist = None
    for c, n in zip(coords, shape, strict=True):
        dk = np.minimum(c, n - c)
        dist = dk if dist is None else np.minimum(dist, dk)
    assert dist is not None
    return dist


#: output pixels resampled at once (bounds the temporaries of a block's resampling)
STRIP_PIXELS = 1 << 16


def fuse_block(
    lo: np.ndarray,
    shape: tuple[int, ...],
    lead: tuple[int, ...],
    dtype: np.dtype,
    sources: list[Source],
    blending: str | None,
    width: float,
) -> np.ndarray:
    """The output block whose first pixel is ``lo`` (output pixel index), of spatial ``shape``
    and leading (channel) shape ``lead``."""
    d = len(shape)
    acc = np.zeros((*lead, *shape))
    wsum = np.zeros(shape)
    for src in sources:
        shift = _integer_shift(src.back)
        if shift is not None:
            _add_copy(acc, wsum, src, lo, shape, shift, blending, width)
        else:
            _add_resampled(acc, wsum, src, lo, shape, d, blending, width)
    out = np.divide(acc, wsum, out=np.zeros_like(acc), where=wsum > 0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(dtype)


def _add_copy(
    acc: np.ndarray,
    wsum: np.ndarray,
    src: Source,
    lo: np.ndarray,
    shape: tuple[int, ...],
    shift: np.ndarray,
    blending: str | None,
    width: float,
) -> None:
    # output pixel u -> tile pixel u + shift (integer)
    out_sl, win_sl, centres = [], [], []
    for k, n in enumerate(shape):
        t0 = lo[k] + shift[k]  # tile index of the block's first pixel
        a = max(0, int(src.offset[k] - t0))
        b = min(n, int(src.offset[k] + src.window.shape[-len(shape) + k] - t0))
        a = max(a, int(-t0))
        b = min(b, int(src.tile_shape[k] - t0))
        if b <= a:
            return
        out_sl.append(slice(a, b))
        win_sl.append(slice(int(t0 + a - src.offset[k]), int(t0 + b - src.offset[k])))
        centres.append(np.arange(t0 + a, t0 + b, dtype=np.float64) + 0.5)
    grids = np.meshgrid(*centres, indexing="ij", sparse=True)
    w = ramp(_edge_distance(list(grids), src.tile_shape), width, blending)
    vals = np.asarray(src.window[(Ellipsis, *win_sl)], dtype=np.float64)
    acc[(Ellipsis, *out_sl)] += vals * w
    wsum[tuple(out_sl)] += w


def _add_resampled(
    acc: np.ndarray,
    wsum: np.ndarray,
    src: Source,
    lo: np.ndarray,
    shape: tuple[int, ...],
    d: int,
    blending: str | None,
    width: float,
) -> None:
    # only the part of the block the tile's placed box covers (a block meets many tiles; a
    # full-block grid per tile made fusing 1,000 small tiles quadratic)
    fwd = np.linalg.inv(src.back)
    corners = np.array(list(itertools.product(*[(0.0, float(n)) for n in src.tile_shape])))
    placed = corners @ fwd[:d, :d].T + fwd[:d, d] - lo
    b_lo = np.clip(np.floor(placed.min(axis=0)).astype(int) - 1, 0, shape)
    b_hi = np.clip(np.ceil(placed.max(axis=0)).astype(int) + 1, 0, shape)
    if np.any(b_hi <= b_lo):
        return
    win = src.window
    lead = win.shape[: win.ndim - d]
    planes = {c: np.asarray(win[c], dtype=np.float64) for c in itertools.product(*map(range, lead))}
    # strips along the first axis: the sampling temporaries (~15 float64 values per output
    # pixel) stay a few MB instead of ~130 MB for a 1024^2 block
    rows = max(1, STRIP_PIXELS // max(1, int(np.prod(b_hi[1:] - b_lo[1:]))))
    for r0 in range(int(b_lo[0]), int(b_hi[0]), rows):
        s_lo, s_hi = b_lo.copy(), b_hi.copy()
        s_lo[0], s_hi[0] = r0, min(int(b_hi[0]), r0 + rows)
        _add_resampled_box(acc, wsum, src, planes, lo, s_lo, s_hi, d, blending, width)


def _add_resampled_box(
    acc: np.ndarray,
    wsum: np.ndarray,
    src: Source,
    planes: dict[tuple[int, ...], np.ndarray],
    lo: np.ndarray,
    b_lo: np.ndarray,
    b_hi: np.ndarray,
    d: int,
    blending: str | None,
    width: float,
) -> None:
    from scipy.ndimage import map_coordinates

    sub = tuple(slice(int(i), int(j)) for i, j in zip(b_lo, b_hi, strict=True))
    sub_shape = tuple(int(j - i) for i, j in zip(b_lo, b_hi, strict=True))
    grids = np.meshgrid(
        *[np.arange(n, dtype=np.float64) + lo[k] + b_lo[k] + 0.5 for k, n in enumerate(sub_shape)],
        indexing="ij",
    )
    pts = np.stack([g.ravel() for g in grids])  # output pixel centres (d, n)
    tp = src.back[:d, :d] @ pts + src.back[:d, d : d + 1]  # tile pixel coordinates
    inside = np.all((tp >= 0) & (tp < src.tile_shape[:, None]), axis=0)
    if not np.any(inside):
        return
    tp_in = tp[:, inside]
    w = ramp(_edge_distance(list(tp_in), src.tile_shape), width, blending)
    idx = tp_in - 0.5 - src.offset[:, None]  # window array indices of the sample points
    flat_out = np.nonzero(inside)[0]
    w_sub = np.zeros(sub_shape)
    w_sub.reshape(-1)[flat_out] = w
    wsum[sub] += w_sub
    for c, plane in planes.items():
        vals = map_coordinates(plane, idx, order=1, mode="nearest")
        v_sub = np.zeros(sub_shape)
        v_sub.reshape(-1)[flat_out] = vals * w
        acc[c][sub] += v_sub
