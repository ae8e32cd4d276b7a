"""Stitching: ``sf.register`` (pairwise phase correlation + global solve), ``sf.fuse`` (blended
fusion onto one grid) and ``sf.stitch`` (both), as lazy plans.

Design decisions:

* Tiles are Image elements of one Dataset; each must reach ``coordinate_system`` through the
  transform graph (any affine chain). The registered transform of a tile is its stage transform
  followed by a small world-space correction; it maps the tile's pixels to the coordinate
  system directly (a Translation when it is one, else an Affine), in x, y(, z) order.
* ``register(...)`` returns a :class:`LazyRegistration`; nothing is read until ``compute()``,
  which runs one Dask task per pair (on the active distributed client if any) and then the
  global solve on the caller's side (a few milliseconds even for 1,000+ tiles).
* Pairs are rejected below ``quality_threshold`` (NCC of the overlap, default 0.3; pure noise
  scores near 0), when another peak scores nearly as well (``ambiguity`` above 0.75: empty,
  noisy or repetitive overlaps) or when the peak sits at the ``max_shift`` limit; then the solve
  removes outlier edges (residual above ``residual_threshold`` px) while the graph stays
  connected, drops edges below quality 0.8 that alone hold a part of the mosaic (nothing can
  confirm them: on small tiles such single wrong edges put tiles 10+ px off) and resets any tile
  moved beyond ``max_shift``. A tile left without a usable edge keeps its stage position and is
  listed in ``result.unregistered``.
* The absolute placement of a registered mosaic is a gauge choice: the solve keeps the mean
  correction near zero, so the mosaic stays where the stage put it on average.
* ``fuse(...)`` returns a lazy multiscale Image (pyramid by 2x averaging from the fused scale 0);
  ``stitch(...).compute()`` runs the registration and returns the registration plus the fused
  image, still lazy, so that it can be streamed into a store (a job commit) chunk by chunk.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from dask.delayed import Delayed

from spatialflow.dataset import Dataset
from spatialflow.elements.raster import Image
from spatialflow.errors import PlanError, TransformError, ValidationError
from spatialflow.kernels.solve import Edge, solve_positions
from spatialflow.plan.stitch import (
    PairPlan,
    RegisterNode,
    Tile,
    fuse_grid,
    lower_fuse,
    lower_register,
    plan_pairs,
)
from spatialflow.transforms.base import Affine, Scale, Transform, Translation
from spatialflow.transforms.composite import Sequence as TSequence
from spatialflow.transforms.graph import Node

__all__ = [
    "LazyRegistration",
    "LazyStitch",
    "RegistrationResult",
    "StitchResult",
    "fuse",
    "register",
    "stitch",
]

log = logging.getLogger(__name__)
TRANSFORMS = ("translation", "rigid", "affine")
BLENDINGS = ("cosine", "linear", None)
AMBIGUITY = 0.75  # a pair whose second-best peak scores above this share of the best is rejected
BRIDGE_QUALITY = 0.8  # an edge that alone links two parts of the pair graph needs this quality


# --- inputs ---------------------------------------------------------------------------------------
def _tile_names(ds: Any, tiles: str | Sequence[str]) -> list[str]:
    if not isinstance(ds, Dataset):
        raise ValidationError(f"stitching takes a spatialflow Dataset, got {type(ds).__name__}")
    names = [n for n, _ in ds.items()]
    if isinstance(tiles, str):
        chosen = [n for n in names if fnmatch.fnmatchcase(n, tiles)]
        if not chosen:
            raise ValidationError(f"tiles pattern {tiles!r} matches no element; elements: {names}")
    else:
        chosen = list(tiles)
    if len(chosen) < 1:
        raise ValidationError("tiles: give at least one tile name")
    if len(set(chosen)) != len(chosen):
        raise ValidationError(f"tiles: names repeat in {chosen}")
    for n in chosen:
        if not isinstance(n, str) or n not in ds:
            raise ValidationError(f"tile {n!r}: no such element in the Dataset; elements: {names}")
        kind = ds.kind_of(n)
        if kind != "images":
            raise ValidationError(
                f"tile {n!r} is a {kind[:-1]} element, not an image; stitching takes Image elements"
            )
    return chosen


def _tiles(ds: Dataset, tiles: str | Sequence[str], cs: str) -> list[Tile]:
    names = _tile_names(ds, tiles)
    graph = ds.transform_graph()
    first: Image = ds.images[names[0]]
    out = []
    for n in names:
        el: Image = ds.images[n]
        if el.dims != first.dims:
            raise ValidationError(
                f"tile {n!r}: dims {el.dims} differ from tile {names[0]!r}'s {first.dims}"
            )
        if el.shape[0] != first.shape[0]:
            raise ValidationError(
                f"tile {n!r}: {el.shape[0]} channels, but tile {names[0]!r} has "
                f"{first.shape[0]}; all tiles must have the same channels"
            )
        if el.dtype != first.dtype:
            raise ValidationError(
                f"tile {n!r}: dtype {el.dtype} differs from tile {names[0]!r}'s {first.dtype}; "
                "cast the tiles to one dtype first"
            )
        try:
            t = graph.path(Node("element", n), Node("cs", cs))
            m = t.to_affine_matrix(el.axes, el.axes)
        except TransformError as e:
            raise TransformError(
                f"tile {n!r}: no usable transformation to coordinate system {cs!r} ({e}); "
                "give the tile one with set_transformation"
            ) from e
        if abs(np.linalg.det(m[:-1, :-1])) < 1e-12:
            raise TransformError(f"tile {n!r}: its transformation to {cs!r} is singular")
        out.append(Tile(n, el, m))
    return out


def matrix_to_transform(m: np.ndarray, axes: tuple[str, ...]) -> Transform:
    """A homogeneous matrix on ``axes`` (array order) as a Transform in x, y(, z) order."""
    order = sorted(axes, key=lambda a: "xyz".index(a) if a in "xyz" else 3)
    perm = [axes.index(a) for a in order]
    d = len(axes)
    p = np.eye(d + 1)[[*perm, d]]
    mm = p @ m @ p.T
    lin, t = mm[:d, :d], mm[:d, d]
    if np.allclose(lin, np.eye(d), atol=1e-12):
        return Translation(t, order)
    if np.allclose(lin, np.diag(np.diag(lin)), atol=1e-12):
        return TSequence([Scale(np.diag(lin), order), Translation(t, order)])
    return Affine(mm, order, order)


# --- registration ---------------------------------------------------------------------------------
@dataclass
class RegistrationResult:
    """``transforms``: tile name -> Transform (pixels -> ``coordinate_system``);
    ``pairs``: one row per pair; ``residuals``: per tile (px); ``unregistered``: tiles that kept
    their stage position for want of a usable edge."""

    transforms: dict[str, Transform]
    pairs: pd.DataFrame
    residuals: pd.Series
    unregistered: list[str]
    coordinate_system: str
    matrices: dict[str, np.ndarray]  # array-axis-order homogeneous matrices of ``transforms``

    def apply(self, ds: Dataset, coordinate_system: str = "registered") -> Dataset:
        """A new Dataset with every registered tile's transform to ``coordinate_system`` set
        (added, or replacing one of that name); other elements are shared unchanged."""
        if not isinstance(coordinate_system, str) or not coordinate_system:
            raise ValidationError("apply: coordinate_system must be a non-empty string")
        out = Dataset()
        for name, el in ds.items():
            if name in self.transforms:
                el = copy.copy(el)
                el.transforms = {**el.transforms, coordinate_system: self.transforms[name]}
            getattr(out, ds.kind_of(name))[name] = el
        return out

    def report(self) -> dict[str, Any]:
        """JSON-able summary: pairs, residuals, unregistered tiles."""
        pairs = self.pairs.astype(object).where(self.pairs.notna(), None)
        return {
            "coordinate_system": self.coordinate_system,
            "pairs": pairs.to_dict(orient="records"),
            "residuals": {
                k: (None if np.isnan(v) else float(v)) for k, v in self.residuals.items()
            },
            "unregistered": list(self.unregistered),
        }


class LazyRegistration:
    """The lazy result of ``sf.register``: ``explain()``, ``compute()``."""

    def __init__(
        self,
        node: RegisterNode,
        *,
        quality_threshold: float,
        residual_threshold: float,
    ) -> None:
        self.node = node
        self.quality_threshold = quality_threshold
        self.residual_threshold = residual_threshold
        self._delayed: Delayed | None = None

    def to_delayed(self) -> Delayed:
        """One Delayed computing the list of pair measurements."""
        if self._delayed is None:
            self._delayed = lower_register(self.node)
        return self._delayed

    @property
    def n_tasks(self) -> int:
        return len(self.to_delayed().__dask_graph__())

    def explain(self, print_: bool = True) -> str:
        lines = [
            "== plan ==",
            *self.node.explain_lines(),
            "== execution ==",
            f"pair tasks: {len(self.node.pairs)} (one per overlapping pair, fed only the tile "
            "chunks its overlap windows meet)",
            f"tasks: {self.n_tasks}",
            f"global solve: {self.node.transform}, sparse least squares on the client",
        ]
        text = "\n".join(lines)
        if print_:
            print(text)
        return text

    def compute(self, **kwargs: Any) -> RegistrationResult:
        import dask

        measured = dask.compute(self.to_delayed(), **kwargs)[0] if self.node.pairs else []
        return solve(self.node, list(measured), self.quality_threshold, self.residual_threshold)

    def __repr__(self) -> str:
        return "LazyRegistration:\n" + "\n".join(self.node.explain_lines(limit=10))


def _edge(node: RegisterNode, p: PairPlan, lag: np.ndarray, weight: float) -> Edge:
    ta, tb = node.tiles[p.a], node.tiles[p.b]
    d = len(ta.axes)
    delta = p.factor * (lag - p.expected)  # a's scale-0 pixels: b's content sits shifted by it
    lo, hi = p.overlap
    xa = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    inv = np.linalg.inv(p.rel)
    xb = (xa - delta) @ inv[:d, :d].T + inv[:d, d]
    qa = xa @ ta.matrix[:d, :d].T + ta.matrix[:d, d]
    qb = xb @ tb.matrix[:d, :d].T + tb.matrix[:d, d]
    return Edge(p.a, p.b, qa, qb, weight, ta.pixel_size)


def solve(
    node: RegisterNode,
    measured: list[dict[str, Any]],
    quality_threshold: float,
    residual_threshold: float,
) -> RegistrationResult:
    """Turn pair measurements into tile transforms (the global solve)."""
    tiles = node.tiles
    rows, edges, edge_rows = [], [], []
    for p, m in zip(node.pairs, measured, strict=True):
        delta = p.factor * (np.asarray(m["lag"]) - p.expected)
        reason = ""
        if m["overlap"] == 0:
            reason = "no common region within max_shift"
        elif m["quality"] < quality_threshold:
            reason = f"quality {m['quality']:.3f} < {quality_threshold}"
        elif m["at_limit"]:
            reason = "peak at the max_shift limit"
        elif m["ambiguity"] > AMBIGUITY:
            reason = f"ambiguous: another peak scores {m['ambiguity']:.2f} of the best"
        row = {"tile_a": tiles[p.a].name, "tile_b": tiles[p.b].name, "level": p.level}
        for k, ax in enumerate(tiles[0].axes):
            row[f"shift_{ax}"] = float(delta[k])
        row.update(quality=float(m["quality"]), ambiguity=float(m["ambiguity"]))
        row.update(overlap_px=int(m["overlap"]))
        row.update(status="rejected" if reason else "used", reason=reason, residual_px=np.nan)
        rows.append(row)
        if not reason:
            edge_rows.append(len(rows) - 1)
            edges.append(_edge(node, p, np.asarray(m["lag"]), max(m["quality"], 1e-3) ** 2))
    centres = np.stack([t.corners().mean(axis=0) for t in tiles])
    reach = max((float(np.max(p.max_shift * p.factor)) for p in node.pairs), default=0.0)
    sol = solve_positions(
        len(tiles),
        centres,
        edges,
        transform=node.transform,
        threshold=residual_threshold,
        min_bridge_weight=BRIDGE_QUALITY**2,
        max_correction=reach * min(t.pixel_size for t in tiles),
    )
    guarded = {tiles[i].name for i in sol.guarded}
    weak = set(sol.weak_bridges)
    per_tile: list[list[float]] = [[] for _ in tiles]
    for k, r in enumerate(edge_rows):
        rows[r]["residual_px"] = float(sol.residuals[k])
        if not sol.used[k]:
            rows[r]["status"] = "rejected"
            rows[r]["reason"] = f"outlier: residual {sol.residuals[k]:.2f} px"
            if k in weak:
                rows[r]["reason"] = (
                    f"unconfirmed: the only link between two parts, quality < {BRIDGE_QUALITY}"
                )
            elif k not in sol.removed_order and (
                rows[r]["tile_a"] in guarded or rows[r]["tile_b"] in guarded
            ):
                rows[r]["reason"] = "a tile of the pair moved beyond max_shift"
        else:
            per_tile[edges[k].a].append(sol.residuals[k])
            per_tile[edges[k].b].append(sol.residuals[k])
    matrices, transforms, unregistered = {}, {}, []
    for i, t in enumerate(tiles):
        m = sol.matrices[i] @ t.matrix if sol.connected[i] else t.matrix
        if not sol.connected[i]:
            unregistered.append(t.name)
        matrices[t.name] = m
        transforms[t.name] = matrix_to_transform(m, t.axes)
    if unregistered:
        log.warning(
            "register: %d tile(s) had no usable pair and keep their stage position: %s",
            len(unregistered),
            ", ".join(unregistered),
        )
    residuals = pd.Series(
        {
            t.name: float(np.sqrt(np.mean(np.square(r)))) if r else np.nan
            for t, r in zip(tiles, per_tile, strict=True)
        },
        name="residual_px",
    )
    cols = ["tile_a", "tile_b", "level", *[f"shift_{a}" for a in tiles[0].axes]]
    cols += ["quality", "ambiguity", "overlap_px", "status", "reason", "residual_px"]
    pairs = pd.DataFrame(rows, columns=cols)
    return RegistrationResult(
        transforms, pairs, residuals, unregistered, node.coordinate_system, matrices
    )


def _channel_index(tile: Tile, channel: int | str) -> int:
    names = tile.element.channel_names
    if isinstance(channel, int | np.integer) and not isinstance(channel, bool):
        if 0 <= channel < len(names):
            return int(channel)
    elif channel in names:
        return names.index(channel)
    raise ValidationError(
        f"register: channel {channel!r} of tile {tile.name!r} is not an index below "
        f"{len(names)} or one of {names}"
    )


def register(
    ds: Dataset,
    tiles: str | Sequence[str],
    *,
    coordinate_system: str = "global",
    transform: str = "translation",
    channel: int | str = 0,
    level: int | None = None,
    max_shift: float | None = None,
    quality_threshold: float = 0.3,
    residual_threshold: float = 1.5,
) -> LazyRegistration:
    """Register overlapping ``tiles`` (names or a glob pattern) placed in
    ``coordinate_system``; lazy (see the module doc). ``max_shift``: the largest correction
    searched, in scale-0 pixels (default 15% of the smallest tile side); ``level``: the pyramid
    level to register on (default: the finest keeping overlap windows under 4 Mpx)."""
    if transform not in TRANSFORMS:
        raise ValidationError(f"register: transform {transform!r} is not one of {TRANSFORMS}")
    if max_shift is not None and not max_shift > 0:
        raise ValidationError(f"register: max_shift must be positive, got {max_shift!r}")
    if level is not None and (not isinstance(level, int) or level < 0):
        raise ValidationError(f"register: level must be a non-negative integer, got {level!r}")
    tl = _tiles(ds, tiles, coordinate_system)
    if len(tl) < 2:
        raise ValidationError(f"register: needs at least two tiles, got {[t.name for t in tl]}")
    ch = _channel_index(tl[0], channel)
    pairs = plan_pairs(tl, max_shift=max_shift, level=level)
    paired = {t for p in pairs for t in (p.a, p.b)}
    lonely = [t.name for i, t in enumerate(tl) if i not in paired]
    if lonely:
        raise PlanError(
            f"register: tile(s) {lonely} overlap no other tile in {coordinate_system!r}; "
            "check their transforms or leave them out of `tiles`"
        )
    node = RegisterNode(tuple(tl), tuple(pairs), ch, coordinate_system, transform)
    return LazyRegistration(
        node, quality_threshold=quality_threshold, residual_threshold=residual_threshold
    )


# --- fusion ---------------------------------------------------------------------------------------
def _fuse_tiles(
    tiles: list[Tile],
    matrices: list[np.ndarray],
    coordinate_system: str,
    output_spacing: Any,
    blending: str | None,
    blending_width: float | None,
    chunks: int | None,
) -> Image:
    if blending not in BLENDINGS:
        raise ValidationError(f"fuse: blending {blending!r} is not one of {BLENDINGS}")
    if blending_width is not None and not blending_width > 0:
        raise ValidationError(f"fuse: blending_width must be positive, got {blending_width!r}")
    if chunks is not None and (not isinstance(chunks, int) or chunks < 16):
        raise ValidationError(f"fuse: chunks must be an integer >= 16, got {chunks!r}")
    grid = fuse_grid(tiles, matrices, output_spacing)
    spacing = float(np.mean(grid.spacing))
    if blending_width is None:
        smallest = min(float(t.shape.min()) * t.pixel_size for t in tiles) / spacing
        blending_width = max(1.0, 0.1 * smallest)
    if chunks is None:
        chunks = 1024
    arr, _ = lower_fuse(
        tiles, matrices, grid, blending=blending, width=float(blending_width), chunks=chunks
    )
    el0 = tiles[0].element
    factors: list[int] = []
    while min(grid.shape) // (2 ** (len(factors) + 1)) >= 64:
        factors.append(2)
    return Image(
        arr,
        dims=el0.dims,
        transforms={coordinate_system: matrix_to_transform(grid.matrix, el0.axes)},
        scale_factors=factors or None,
        channel_names=el0.channel_names,
    )


def fuse(
    ds: Dataset,
    tiles: str | Sequence[str],
    *,
    coordinate_system: str = "global",
    output_spacing: float | Sequence[float] | None = None,
    blending: str | None = "cosine",
    blending_width: float | None = None,
    chunks: int | None = None,
) -> Image:
    """A lazy multiscale Image of ``tiles`` fused on the union grid in ``coordinate_system``.

    ``blending_width`` is in output pixels (default 10% of the smallest tile side); ``chunks``
    the output chunk side (default 1024). Each output chunk reads only the tile windows that
    meet it."""
    tl = _tiles(ds, tiles, coordinate_system)
    return _fuse_tiles(
        tl,
        [t.matrix for t in tl],
        coordinate_system,
        output_spacing,
        blending,
        blending_width,
        chunks,
    )


# --- both -----------------------------------------------------------------------------------------
@dataclass
class StitchResult:
    registration: RegistrationResult
    image: Image  # lazy, in the registered coordinate system

    def to_dataset(
        self, ds: Dataset, name: str = "fused", registered: str = "registered"
    ) -> Dataset:
        """``ds`` with the registered transforms under ``registered`` and the fused image."""
        out = self.registration.apply(ds, registered)
        out.images[name] = self.image
        return out


class LazyStitch:
    """The lazy result of ``sf.stitch``: registration, then fusion with the registered
    transforms, as one plan."""

    def __init__(self, reg: LazyRegistration, registered: str, fuse_args: dict[str, Any]) -> None:
        self.registration = reg
        self.registered = registered
        self.fuse_args = fuse_args

    def explain(self, print_: bool = True) -> str:
        text = self.registration.explain(print_=False) + (
            f"\n== then ==\nFuse {len(self.registration.node.tiles)} tiles with the registered "
            f"transforms into {self.registered!r} ({self.fuse_args})"
        )
        if print_:
            print(text)
        return text

    def compute(self, **kwargs: Any) -> StitchResult:
        """Run the registration; return it with the (lazy) fused image."""
        reg = self.registration.compute(**kwargs)
        tiles = list(self.registration.node.tiles)
        image = _fuse_tiles(
            tiles, [reg.matrices[t.name] for t in tiles], self.registered, **self.fuse_args
        )
        return StitchResult(reg, image)


def stitch(
    ds: Dataset,
    tiles: str | Sequence[str],
    *,
    coordinate_system: str = "global",
    registered: str = "registered",
    transform: str = "translation",
    channel: int | str = 0,
    level: int | None = None,
    max_shift: float | None = None,
    quality_threshold: float = 0.3,
    residual_threshold: float = 1.5,
    output_spacing: float | Sequence[float] | None = None,
    blending: str | None = "cosine",
    blending_width: float | None = None,
    chunks: int | None = None,
) -> LazyStitch:
    """``register`` then ``fuse`` (see both); the fused image lives in ``registered``."""
    reg = register(
        ds,
        tiles,
        coordinate_system=coordinate_system,
        transform=transform,
        channel=channel,
        level=level,
        max_shift=max_shift,
        quality_threshold=quality_threshold,
        residual_threshold=residual_threshold,
    )
    if blending not in BLENDINGS:
        raise ValidationError(f"stitch: blending {blending!r} is not one of {BLENDINGS}")
    return LazyStitch(
        reg,
        registered,
        {
            "output_spacing": output_spacing,
            "blending": blending,
            "blending_width": blending_width,
            "chunks": chunks,
        },
    )
