"""``sf.index_points`` and ``sf.viewport_query``: a multiscale points index and its queries.

``index_points(ds, name)`` returns a new Points element holding the same rows plus a ``level``
column, ordered by (level, Morton code), with the index in ``element.index`` (see
elements/points_index.py for what it holds and plan/points_index.py for how it is built). Its
level statistics are computed when it is called (a few small reductions); its rows stay lazy.
Assign it into a Dataset and write it (both layouts store the index), or query it directly.

``viewport_query(ds, name, min_coordinate=, max_coordinate=, target_coordinate_system=)``
returns a lazy result whose ``compute()`` is a pandas DataFrame of the points inside the
(closed) box, of levels up to ``max_level`` (all by default), optionally only ``genes``. With
``max_points`` and no ``max_level``, it picks the finest level whose expected number of points
in the box (from the index's per-level, per-feature counts and its units' boxes) fits; level 0
is always returned. An element without an index is scanned (row groups pruned by their
bounding boxes) with a warning; its rows are all level 0.

The row-group cap (``row_group_rows``, default ``DEFAULT_ROW_GROUP_ROWS`` = 8192) was chosen by
benchmarks/points_index.py at 10^7 points (1,000 genes): a query at the finest level of a small
box reads at least about one unit per level plus the units its box straddles, so Q3's bytes
grow with the cap: 1.0% of a full scan at 4096, 1.6% at 8192, 3.6% at 16384 and 5.9% at 32768
(the target is <= 2%); every query stays under 40 ms at any of these caps. 4096 halves Q3's
bytes but doubles the row groups: 1.45x the footer metadata (3.8 MB against 2.6 MB when
measured, with index version 1's JSON unit tables), a full scan twice as slow, and more
per-row-group work in the build. 8192 is the largest cap within the bytes target.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.points_index import IndexCopy, PointsIndex
from spatialflow.ops.query import QueryError
from spatialflow.plan.nodes import boxes_meet
from spatialflow.plan.points_index import build_index
from spatialflow.plan.viewport import LazyViewport, ViewportPlan, covers, plan_units
from spatialflow.transforms import get_transformation_between

__all__ = ["DEFAULT_ROW_GROUP_ROWS", "index_points", "viewport_query"]

DEFAULT_ROW_GROUP_ROWS = 1 << 13  # chosen by benchmarks/points_index.py (module docstring)


def _points(ds: Dataset, name: str, what: str) -> Points:
    if not isinstance(ds, Dataset):
        raise QueryError(f"{what}: expected a Dataset, got {type(ds).__name__}")
    if name not in ds.points:
        raise QueryError(
            f"{what}: no points element {name!r} in the dataset; it has {sorted(ds.points)}"
        )
    el = ds.points[name]
    el.name = el.name or name
    return el


def index_points(
    ds: Dataset,
    name: str,
    *,
    limit: int = 10_000,
    seed: int = 0,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> Points:
    """The points ``name`` of ``ds`` with a multiscale spatial index (rows lazy)."""
    el = _points(ds, name, "index_points")
    for what, v, low in (("limit", limit, 1), ("row_group_rows", row_group_rows, 16)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < low:
            raise QueryError(f"index_points: {what} must be an integer >= {low}, got {v!r}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise QueryError(f"index_points: seed must be a non-negative integer, got {seed!r}")
    return build_index(
        el, limit=int(limit), seed=int(seed), row_group_rows=int(row_group_rows), name=name
    )


def _codes(el: Points, genes: Sequence[Any] | None) -> np.ndarray | None:
    if genes is None:
        return None
    if isinstance(genes, str) or not isinstance(genes, Sequence | np.ndarray):
        genes = [genes]
    if el.feature_key is None:
        raise QueryError(
            f"viewport_query: points {el.name!r} have no feature column, so genes= cannot "
            "select anything; drop genes="
        )
    # the meta's categories: one Index, whose hash table pandas keeps between queries
    # (listing the categories and building a dict cost ~1.7 ms a query at 1,000 genes)
    cats = el.data._meta[el.feature_key].cat.categories
    genes = list(genes)
    try:
        found = cats.get_indexer(genes)
    except (TypeError, ValueError):  # names of another kind than the categories'
        found = np.full(len(genes), -1)
    unknown = [g for g, at in zip(genes, found, strict=True) if at < 0]
    if unknown:
        raise QueryError(
            f"viewport_query: unknown gene(s) {unknown[:5]} in points {el.name!r} (feature "
            f"{el.feature_key!r} has {len(cats)} categories, e.g. {list(cats[:5])}); check "
            "the names"
        )
    return np.unique(np.asarray(found, dtype=np.int64))


def _box(min_coordinate: Any, max_coordinate: Any) -> tuple[float, float, float, float]:
    lo = np.asarray(min_coordinate, dtype=np.float64).ravel()
    hi = np.asarray(max_coordinate, dtype=np.float64).ravel()
    if lo.size != 2 or hi.size != 2:
        raise QueryError(
            "viewport_query: min_coordinate and max_coordinate take two values (x, y), got "
            f"{lo.size} and {hi.size}"
        )
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or np.any(lo > hi):
        raise QueryError(
            f"viewport_query: the box {lo.tolist()}..{hi.tolist()} must be finite with "
            "min_coordinate <= max_coordinate"
        )
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def _expected(index: PointsIndex, box: tuple[float, ...], codes: np.ndarray | None) -> np.ndarray:
    """Expected points in ``box`` (element space) per level."""
    sp = index.spatial
    b = sp.bounds
    ix0, iy0 = np.maximum(b[:, 0], box[0]), np.maximum(b[:, 1], box[1])
    ix1, iy1 = np.minimum(b[:, 2], box[2]), np.minimum(b[:, 3], box[3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    hit = (ix1 >= ix0) & (iy1 >= iy0)
    frac = np.where(area > 0, inter / np.where(area > 0, area, 1), hit.astype(float))
    frac = np.nan_to_num(frac)
    per_level = np.bincount(sp.levels[:, 0], weights=sp.rows * frac, minlength=index.n_levels)[
        : index.n_levels
    ]
    fc = index.feature_counts
    if codes is not None and fc is not None:
        total = np.maximum(fc.sum(axis=1), 1)
        per_level = per_level * fc[:, codes].sum(axis=1) / total
    return per_level


def viewport_query(
    ds: Dataset,
    name: str,
    *,
    min_coordinate: Sequence[float],
    max_coordinate: Sequence[float],
    target_coordinate_system: str,
    max_level: int | None = None,
    max_points: int | None = None,
    genes: Sequence[Any] | None = None,
) -> LazyViewport:
    """The points of ``name`` in a box of ``target_coordinate_system`` (lazy, see module doc)."""
    el = _points(ds, name, "viewport_query")
    box = _box(min_coordinate, max_coordinate)
    if target_coordinate_system not in ds.coordinate_systems:
        raise QueryError(
            f"viewport_query: unknown coordinate system {target_coordinate_system!r}; the "
            f"dataset has {ds.coordinate_systems}"
        )
    try:
        t = get_transformation_between(ds, name, target_coordinate_system)
        m = t.to_affine_matrix(("x", "y"), ("x", "y"))
        inv = np.linalg.inv(m)
    except (Exception, np.linalg.LinAlgError) as e:
        raise QueryError(
            f"viewport_query: points {name!r} cannot be mapped to and from "
            f"{target_coordinate_system!r} ({e})"
        ) from e
    corners = shapely.box(*box)
    local = shapely.transform(corners, lambda c: c @ inv[:2, :2].T + inv[:2, 2])
    local_box = tuple(float(v) for v in shapely.bounds(local))
    codes = _codes(el, genes)
    index = el.index
    n_levels = index.n_levels if index is not None else 1
    if max_level is not None and (
        not isinstance(max_level, int | np.integer)
        or isinstance(max_level, bool)
        or not 0 <= max_level < n_levels
    ):
        raise QueryError(
            f"viewport_query: max_level={max_level!r} is out of range for points {name!r}, "
            f"which have {n_levels} level(s): use 0..{n_levels - 1}"
        )
    if max_points is not None and (not isinstance(max_points, int | np.integer) or max_points < 1):
        raise QueryError(
            f"viewport_query: max_points must be a positive integer, not {max_points!r}"
        )
    if index is None:
        warnings.warn(
            f"viewport_query: points {name!r} have no index (build one with sf.index_points); "
            "scanning the row groups that meet the box",
            UserWarning,
            stacklevel=2,
        )
        bounds = el.partition_bounds
        if bounds is None:
            units = np.arange(el.npartitions)
        else:
            units = np.flatnonzero(boxes_meet(bounds, local_box))
        plan = ViewportPlan(name, "scan", units, el.npartitions, 0, codes, local_box, box, m, -1)
        return LazyViewport(el, plan, None)
    if max_level is None:
        max_level = n_levels - 1
        if max_points is not None:
            cum = np.cumsum(_expected(index, local_box, codes))
            fits = np.flatnonzero(cum <= max_points)
            max_level = int(fits[-1]) if fits.size else 0
    choices: list[tuple[str, IndexCopy, np.ndarray]] = [
        ("spatial", index.spatial, plan_units(index.spatial, max_level, codes, local_box))
    ]
    if codes is not None and index.by_feature is not None:
        bf = index.by_feature
        choices.append(("by_feature", bf, plan_units(bf, max_level, codes, local_box)))
    kind, copy, units = min(choices, key=lambda c: int(copy_rows(c[1], c[2])))
    plan = ViewportPlan(
        name,
        kind,
        units,
        len(copy.rows),
        int(max_level),
        codes,
        local_box,
        box,
        m,
        int(copy_rows(copy, units)),
        covers(copy, units, int(max_level), codes, box, m),
    )
    return LazyViewport(el, plan, copy)


def copy_rows(copy: IndexCopy, units: np.ndarray) -> int:
    return int(copy.rows[units].sum()) if len(units) else 0
