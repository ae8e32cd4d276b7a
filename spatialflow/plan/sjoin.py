"""Spatial joins between two partitioned elements: the pairs behind an ``sjoin`` link.

``sjoin_pairs`` lowers both elements into one coordinate system (Read -> Transform), pairs each
left partition with the right partitions whose boxes meet its own (every right partition when
either side's bounds are unknown), and in each pair queries an STRtree of the right rows with
the left geometries and ``predicate``: ``predicate(left, right)``, as geopandas' ``sjoin``
evaluates it. Points are point geometries; circles are polygonized with ``resolution`` segments
per quarter circle (spatialflow's and spatialdata's default, 16), so a circle joins as its
disc. The result is one pandas DataFrame ``(left, right)`` of index values, ordered by left
partition then row, computed on the active scheduler.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd

from spatialflow.elements.points import Points
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import PlanError
from spatialflow.plan.aggregate.join import boxes_meet
from spatialflow.plan.compiler import lower_frame
from spatialflow.plan.nodes import Read, TransformNode
from spatialflow.transforms.base import Transform

__all__ = ["sjoin_pairs"]


def _geometries(part: Any, resolution: int) -> np.ndarray:
    import shapely

    if "geometry" not in part.columns:  # points
        return shapely.points(part["x"].to_numpy(np.float64), part["y"].to_numpy(np.float64))
    geoms = np.asarray(part.geometry.values)
    if "radius" in part.columns:
        geoms = shapely.buffer(geoms, part["radius"].to_numpy(np.float64), quad_segs=resolution)
    return geoms


def _pair_block(left: Any, rights: list[Any], predicate: str, resolution: int) -> pd.DataFrame:
    import shapely

    lgeoms = _geometries(left, resolution)
    li_all, ri_all = [], []
    for right in rights:
        if len(left) == 0 or len(right) == 0:
            continue
        tree = shapely.STRtree(_geometries(right, resolution))
        li, ri = tree.query(lgeoms, predicate=predicate)
        li_all.append(left.index.to_numpy()[li])
        ri_all.append(right.index.to_numpy()[ri])
    if not li_all:
        return pd.DataFrame({"left": left.index[:0].to_numpy(), "right": np.empty(0, dtype=object)})
    out = pd.DataFrame({"left": np.concatenate(li_all), "right": np.concatenate(ri_all)})
    return out


def _concat(blocks: list[pd.DataFrame], left_dtype: Any, right_dtype: Any) -> pd.DataFrame:
    frames = [b for b in blocks if len(b)]
    if not frames:
        return pd.DataFrame(
            {
                "left": pd.Series([], dtype=left_dtype),
                "right": pd.Series([], dtype=right_dtype),
            }
        )
    out = pd.concat(frames, ignore_index=True)
    return out.astype({"left": left_dtype, "right": right_dtype})


def sjoin_pairs(
    left: tuple[str, Points | Shapes, Transform],
    right: tuple[str, Points | Shapes, Transform],
    coordinate_system: str,
    predicate: str = "intersects",
    resolution: int = 16,
) -> Any:
    """A Delayed DataFrame of ``(left, right)`` index pairs where ``predicate(left, right)``;
    each side is ``(name, element, transform to coordinate_system)``."""
    frames = []
    for name, el, t in (left, right):
        if not isinstance(el, Points | Shapes):
            raise PlanError(
                f"sjoin: {name!r} is a {type(el).__name__}; a spatial join needs points or shapes"
            )
        columns = ("x", "y") if isinstance(el, Points) else None
        frames.append(
            lower_frame(TransformNode(Read(name, el, columns=columns), t, coordinate_system))
        )
    lf, rf = frames
    rparts = rf.data.to_delayed()
    blocks = []
    for p, lpart in enumerate(lf.data.to_delayed()):
        if lf.bounds is not None and rf.bounds is not None:
            ks = [k for k in range(len(rparts)) if boxes_meet(lf.bounds[p], rf.bounds[k])]
        else:
            ks = list(range(len(rparts)))
        if ks:
            blocks.append(
                dask.delayed(_pair_block)(lpart, [rparts[k] for k in ks], predicate, resolution)
            )
    ldtype = lf.data._meta.index.dtype
    rdtype = rf.data._meta.index.dtype
    return dask.delayed(_concat)(blocks, ldtype, rdtype)
