"""Stitching plans and their lowering to Dask: pairwise registration tasks and block fusion.

Design decisions:

* A tile is an Image plus one homogeneous matrix (array axis order, e.g. y, x) from its scale-0
  pixel coordinates to the target coordinate system. Everything geometric here is matrices.
* Pairs: two tiles form a pair when their placed bounding boxes overlap by at least 4 px in
  every axis and, in at least one axis, by half the smaller tile's side (which drops the corner
  overlaps of diagonal neighbours in a grid; they are implied by the row/column pairs and too
  small to register well). Candidates come from a k-d tree on the box centres (O(n log n)).
* One Dask task per pair, plus one gathering the list. A pair's windows are the predicted
  overlap grown by ``max_shift`` on every side, clipped to each tile, on the pyramid level
  chosen so the larger window stays under ``max_pixels`` (4 Mpx). The task reads its two
  windows itself (:class:`TileWindow`): no slicing graph per window is built while planning
  (~4,000 sliced arrays made planning 1,024 tiles take many seconds), and no tile chunk is held
  by the scheduler between its consumers. Tiles whose relative placement is not a pure translation have tile b's
  window resampled into tile a's grid inside the task. Tile geometry (shapes per level, pixel
  size) is computed once per tile.
* Fusion: one task per output chunk; it reads, for each tile whose placed box meets the chunk,
  only the tile window (scale 0) that the chunk maps back to, plus one pixel of margin.
  The output grid is the union of the placed tiles, ``output_spacing`` per pixel (default the
  first tile's pixel size), its origin snapped to a multiple of the spacing so integer
  placements stay integer.
* Pair and fusion tasks end by handing freed heap pages back to the OS (plan/heap.py): their
  5-20 MB temporaries otherwise stay resident once glibc's mmap threshold has risen (8x8 tiles
  of 2048^2, two threads: registration peak 0.74 -> 0.61 GB, fusion 0.70 -> 0.57 GB, together
  with windows kept in their stored dtype and in-place spectra in kernels/phasecorr.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from spatialflow.elements.raster import Image
from spatialflow.errors import PlanError
from spatialflow.kernels.blend import Source, fuse_block
from spatialflow.kernels.phasecorr import register_pair
from spatialflow.plan.heap import release_freed_memory
from spatialflow.plan.nodes import Node

__all__ = [
    "FuseGrid",
    "PairPlan",
    "RegisterNode",
    "Tile",
    "fuse_grid",
    "lower_fuse",
    "lower_register",
    "plan_pairs",
]


@dataclass(frozen=True, eq=False)
class Tile:
    name: str
    element: Image
    matrix: np.ndarray  # (d+1, d+1): scale-0 pixel coordinates (array axis order) -> target

    # geometry is asked for per pair and per output chunk: computed once per tile
    @cached_property
    def axes(self) -> tuple[str, ...]:
        return self.element.axes

    @cached_property
    def level_shapes(self) -> tuple[np.ndarray, ...]:
        out = []
        for k in range(self.element.n_scales):
            lv = self.element.scale(k)
            out.append(np.array([lv.sizes[a] for a in self.axes], dtype=np.float64))
        return tuple(out)

    @property
    def shape(self) -> np.ndarray:
        return self.level_shapes[0]

    def level_shape(self, k: int) -> np.ndarray:
        return self.level_shapes[k]

    def factor(self, k: int) -> np.ndarray:
        return self.shape / self.level_shape(k)

    def corners(self, matrix: np.ndarray | None = None) -> np.ndarray:
        m = self.matrix if matrix is None else matrix
        pts = np.array(list(itertools.product(*[(0.0, n) for n in self.shape])))
        return pts @ m[:-1, :-1].T + m[:-1, -1]

    @cached_property
    def pixel_size(self) -> float:
        d = len(self.axes)
        return float(abs(np.linalg.det(self.matrix[:d, :d])) ** (1.0 / d))


@dataclass(frozen=True, eq=False)
class PairPlan:
    a: int
    b: int
    level: int
    factor: np.ndarray  # level-k pixel size in scale-0 pixels, per axis
    box_a: tuple[np.ndarray, np.ndarray]  # level-k index window [lo, hi) of tile a
    box_b: tuple[np.ndarray, np.ndarray]
    expected: np.ndarray  # lag predicted by the stage (level-k pixels)
    max_shift: np.ndarray  # level-k pixels
    rel: np.ndarray  # (d+1, d+1): tile b scale-0 pixel -> tile a scale-0 pixel (stage)
    resample: np.ndarray | None  # a-window index -> b-window index, if not a translation
    overlap: tuple[np.ndarray, np.ndarray]  # predicted overlap box in a's scale-0 pixels

    @property
    def window_pixels(self) -> int:
        return int(np.prod(self.box_a[1] - self.box_a[0]))


def _candidate_pairs(tiles: list[Tile]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (a < b) whose placed bounding boxes may meet, and their overlap boxes
    (lo, hi): a k-d tree on the box centres with the largest box diagonal as radius, then the
    exact box test on those candidates only -- O(n log n), no n x n matrix."""
    from scipy.spatial import cKDTree

    corners = [t.corners() for t in tiles]
    lo = np.stack([c.min(axis=0) for c in corners])
    hi = np.stack([c.max(axis=0) for c in corners])
    centre = 0.5 * (lo + hi)
    radius = float(np.max(np.linalg.norm(hi - lo, axis=1)))
    cand = cKDTree(centre).query_pairs(radius * (1 + 1e-9), output_type="ndarray")
    if len(cand) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2, lo.shape[1]))
    a, b = cand.min(axis=1), cand.max(axis=1)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    box = np.stack([np.maximum(lo[a], lo[b]), np.minimum(hi[a], hi[b])], axis=1)
    return a, b, box


def plan_pairs(
    tiles: list[Tile],
    *,
    max_shift: float | None,
    level: int | None,
    max_pixels: float = 4e6,
) -> list[PairPlan]:
    """The pairs to register (see the module doc)."""
    a, b, box = _candidate_pairs(tiles)
    px = np.array([t.pixel_size for t in tiles])
    ext = (box[:, 1] - box[:, 0]) / np.minimum(px[a], px[b])[:, None]
    # the overlap's extent relative to the smaller tile, per axis: a row/column neighbour
    # shares (nearly) a full side, a diagonal neighbour only a corner
    sides = np.stack([t.shape * t.pixel_size for t in tiles])
    rel = (box[:, 1] - box[:, 0]) / np.minimum(sides[a], sides[b])
    keep = np.all(ext >= 4.0, axis=1) & (np.max(rel, axis=1) >= 0.5)
    return [
        _pair(tiles, int(i), int(j), max_shift, level, max_pixels)
        for i, j in zip(a[keep], b[keep], strict=True)
    ]


def _pair(
    tiles: list[Tile], a: int, b: int, max_shift: float | None, level: int | None, max_pixels: float
) -> PairPlan:
    ta, tb = tiles[a], tiles[b]
    d = len(ta.axes)
    rel = np.linalg.inv(ta.matrix) @ tb.matrix
    b_in_a = tb.corners(rel)
    ov_lo = np.maximum(0.0, b_in_a.min(axis=0))
    ov_hi = np.minimum(ta.shape, b_in_a.max(axis=0))
    ms = float(max_shift) if max_shift is not None else max(8.0, 0.15 * float(ta.shape.min()))
    e_lo, e_hi = ov_lo - ms, ov_hi + ms
    a_lo, a_hi = np.clip(e_lo, 0, ta.shape), np.clip(e_hi, 0, ta.shape)
    inv = np.linalg.inv(rel)
    e_corners = np.array(list(itertools.product(*zip(e_lo, e_hi, strict=True))))
    e_b = e_corners @ inv[:d, :d].T + inv[:d, d]
    b_lo, b_hi = np.clip(e_b.min(axis=0), 0, tb.shape), np.clip(e_b.max(axis=0), 0, tb.shape)
    n_levels = min(ta.element.n_scales, tb.element.n_scales)
    if level is not None:
        if level >= n_levels:
            raise PlanError(
                f"register: level {level} requested but tiles {ta.name!r} / {tb.name!r} have "
                f"only {n_levels} scale(s); use level < {n_levels} or level=None"
            )
        k = level
    else:
        k = 0
        pix = float(np.prod(a_hi - a_lo))
        while k + 1 < n_levels and pix / np.prod(ta.factor(k)) > max_pixels:
            k += 1
        if not np.allclose(ta.factor(k), tb.factor(k), rtol=1e-3):
            k = 0
    f = ta.factor(k)
    box_a = _index_box(a_lo, a_hi, f, ta.level_shape(k))
    box_b = _index_box(b_lo, b_hi, f, tb.level_shape(k))
    lin = rel[:d, :d]
    resample = None
    if np.allclose(lin, np.eye(d), atol=1e-9):
        expected = box_b[0] - box_a[0] + rel[:d, d] / f
    else:
        expected = np.zeros(d)
        s_a = _index_to_pixel(box_a[0], f)
        s_b = _index_to_pixel(box_b[0], f)
        resample = np.linalg.inv(s_b) @ inv @ s_a
    return PairPlan(
        a, b, k, f, box_a, box_b, expected, np.full(d, ms) / f, rel, resample, (ov_lo, ov_hi)
    )


def _index_box(lo: np.ndarray, hi: np.ndarray, f: np.ndarray, shape: np.ndarray) -> tuple:
    i0 = np.clip(np.floor(lo / f), 0, shape).astype(int)
    i1 = np.clip(np.ceil(hi / f), 0, shape).astype(int)
    return i0, i1


def _index_to_pixel(start: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Window index (centre convention) -> scale-0 pixel coordinate, homogeneous."""
    d = len(f)
    m = np.eye(d + 1)
    m[:d, :d] = np.diag(f)
    m[:d, d] = f * (start + 0.5)
    return m


# --- the plan node ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RegisterNode(Node):
    tiles: tuple[Tile, ...]
    pairs: tuple[PairPlan, ...]
    channel: int
    coordinate_system: str
    transform: str

    def describe(self) -> str:
        return (
            f"Register {len(self.tiles)} tiles -> {self.coordinate_system!r} "
            f"({self.transform}, channel {self.channel}): {len(self.pairs)} pairs"
        )

    def explain_lines(self, depth: int = 0, limit: int = 200) -> list[str]:
        pad = "  " * (depth + 1)
        lines = ["  " * depth + self.describe()]
        for p in self.pairs[:limit]:
            wa = "x".join(str(int(v)) for v in p.box_a[1] - p.box_a[0])
            wb = "x".join(str(int(v)) for v in p.box_b[1] - p.box_b[0])
            how = " resampled" if p.resample is not None else ""
            lines.append(
                f"{pad}{self.tiles[p.a].name} ~ {self.tiles[p.b].name}: level {p.level}, "
                f"windows {wa} / {wb} px{how}"
            )
        if len(self.pairs) > limit:
            lines.append(f"{pad}... {len(self.pairs) - limit} more pairs")
        return lines


# --- lowering: registration ----------------------------------------------------------------------
class TileWindow:
    """A window of a tile array, read inside the task that uses it.

    Tasks read their windows themselves (a synchronous compute of the window's few chunks)
    instead of depending on the tile's chunk tasks: a chunk shared by several pairs or output
    blocks would otherwise stay in memory until its last consumer ran, and on a large mosaic
    the scheduler then holds most of it at once (1 GB of tiles peaked at 1 GB). A chunk may be
    read more than once; memory stays at a few windows per running task. Slicing happens in
    the task too, so planning builds no graph per window. (A plain class, not a dataclass:
    ``dask.delayed`` would unpack a dataclass and make the array a dependency again.)"""

    __slots__ = ("array", "index")

    def __init__(self, array: da.Array, index: tuple[Any, ...]) -> None:
        self.array = array
        self.index = index

    def read(self) -> np.ndarray:
        return np.asarray(self.array[self.index].compute(scheduler="sync"))

    def __dask_tokenize__(self) -> tuple[str, str]:
        return (self.array.name, repr(self.index))


def _box_index(channel: int, box: tuple[np.ndarray, np.ndarray]) -> tuple[Any, ...]:
    return (channel, *(slice(int(lo), int(hi)) for lo, hi in zip(*box, strict=True)))


def _pair_task(
    win_a: TileWindow,
    win_b: TileWindow,
    expected: np.ndarray,
    max_shift: np.ndarray,
    resample: np.ndarray | None,
) -> dict[str, Any]:
    m = register_pair(win_a.read(), win_b.read(), expected, max_shift, resample=resample)
    release_freed_memory()
    return {
        "lag": m.lag,
        "quality": m.quality,
        "overlap": m.overlap,
        "at_limit": m.at_limit,
        "ambiguity": m.ambiguity,
    }


def lower_register(node: RegisterNode) -> Delayed:
    """One Delayed: the list of pair measurements (dicts: lag, quality, overlap, at_limit,
    ambiguity). One task per pair, which reads its two windows itself, plus one task
    gathering the list."""
    arrays: dict[tuple[int, int], da.Array] = {}
    for p in node.pairs:
        for t in (p.a, p.b):
            if (t, p.level) not in arrays:
                arrays[t, p.level] = node.tiles[t].element.scale(p.level).data
    token = tokenize(
        node.channel, [(arrays[p.a, p.level].name, arrays[p.b, p.level].name) for p in node.pairs]
    )
    token = tokenize(
        token,
        [(p.level, p.box_a, p.box_b, p.expected, p.max_shift, p.resample) for p in node.pairs],
    )
    name = f"register-pairs-{token}"
    layer: dict[Any, Any] = {}
    for k, p in enumerate(node.pairs):
        win_a = TileWindow(arrays[p.a, p.level], _box_index(node.channel, p.box_a))
        win_b = TileWindow(arrays[p.b, p.level], _box_index(node.channel, p.box_b))
        layer[(name, k)] = (_pair_task, win_a, win_b, p.expected, p.max_shift, p.resample)
    layer[name] = (list, [(name, k) for k in range(len(node.pairs))])
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return Delayed(name, graph)


# --- lowering: fusion ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FuseGrid:
    origin: np.ndarray  # target coordinates of output pixel corner (0, ..., 0)
    spacing: np.ndarray  # target units per output pixel, per axis
    shape: tuple[int, ...]

    @property
    def matrix(self) -> np.ndarray:
        d = len(self.shape)
        m = np.eye(d + 1)
        m[:d, :d] = np.diag(self.spacing)
        m[:d, d] = self.origin
        return m


def fuse_grid(tiles: list[Tile], matrices: list[np.ndarray], spacing: Any | None) -> FuseGrid:
    d = len(tiles[0].axes)
    pts = np.concatenate([t.corners(m) for t, m in zip(tiles, matrices, strict=True)])
    if spacing is None:
        sp_ = np.full(d, tiles[0].pixel_size)
    else:
        sp_ = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (d,)).copy()
        if np.any(sp_ <= 0) or not np.all(np.isfinite(sp_)):
            raise PlanError(f"fuse: output_spacing must be positive numbers, got {spacing!r}")
    lo = np.floor(pts.min(axis=0) / sp_ + 1e-9) * sp_
    shape = tuple(
        int(max(1, math.ceil((pts.max(axis=0)[k] - lo[k]) / sp_[k] - 1e-9))) for k in range(d)
    )
    return FuseGrid(lo, sp_, shape)


def _fuse_task(
    lo: np.ndarray,
    shape: tuple[int, ...],
    lead: tuple[int, ...],
    dtype: np.dtype,
    windows: list[TileWindow],
    metas: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]],
    blending: str | None,
) -> np.ndarray:
    sources = [
        Source(w.read(), off, ts, back)
        for w, (off, ts, back, _) in zip(windows, metas, strict=True)
    ]
    width = metas[0][3] if metas else 1.0
    block = fuse_block(lo, shape, lead, np.dtype(dtype), sources, blending, width)
    del sources
    release_freed_memory()
    return block


def lower_fuse(
    tiles: list[Tile],
    matrices: list[np.ndarray],
    grid: FuseGrid,
    *,
    blending: str | None,
    width: float,
    chunks: int,
) -> tuple[da.Array, int]:
    """The fused scale-0 array (c, *spatial) and the number of (tile window, chunk) reads."""
    d = len(grid.shape)
    el0 = tiles[0].element
    lead = tuple(el0.scale(0).shape[: el0.scale(0).ndim - d])
    dtype = el0.dtype
    backs = np.stack([np.linalg.inv(m) @ grid.matrix for m in matrices])  # (n, d+1, d+1)
    shapes = np.stack([t.shape for t in tiles])
    edges = [[*range(0, n, chunks), n] for n in grid.shape]
    blocks = np.empty([len(e) - 1 for e in edges], dtype=object)
    n_reads = 0
    for idx in itertools.product(*[range(len(e) - 1) for e in edges]):
        lo = np.array([edges[k][i] for k, i in enumerate(idx)], dtype=np.float64)
        hi = np.array([edges[k][i + 1] for k, i in enumerate(idx)], dtype=np.float64)
        shape = tuple(int(h - lo_) for lo_, h in zip(lo, hi, strict=True))
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
        tc = np.einsum("nij,kj->nki", backs[:, :d, :d], corners) + backs[:, None, :d, d]
        t_lo, t_hi = tc.min(axis=1), tc.max(axis=1)
        meets = np.all((t_hi > 0) & (t_lo < shapes), axis=1)
        windows, metas = [], []
        for i in np.nonzero(meets)[0]:
            w_lo = np.clip(np.floor(t_lo[i]) - 1, 0, shapes[i]).astype(int)
            w_hi = np.clip(np.ceil(t_hi[i]) + 1, 0, shapes[i]).astype(int)
            if np.any(w_hi <= w_lo):
                continue
            arr = tiles[i].element.scale(0).data
            index = (Ellipsis, *[slice(int(a), int(b)) for a, b in zip(w_lo, w_hi, strict=True)])
            windows.append(TileWindow(arr, index))
            tile_width = width * float(np.mean(grid.spacing)) / tiles[i].pixel_size
            metas.append((w_lo.astype(np.float64), shapes[i], backs[i], tile_width))
        n_reads += len(windows)
        if not windows:
            block = da.zeros(lead + shape, dtype=dtype, chunks=lead + shape)
        else:
            block = da.from_delayed(
                dask.delayed(_fuse_task, pure=True)(
                    lo, shape, lead, dtype.str, windows, metas, blending
                ),
                shape=lead + shape,
                dtype=dtype,
            )
        blocks[idx] = block
    arr = da.block(blocks.tolist()) if blocks.ndim else blocks.item()
    return arr, n_reads
