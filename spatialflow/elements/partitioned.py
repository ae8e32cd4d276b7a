"""Shared machinery of Points and Shapes: spatial partitioning and partition bounding boxes.

In-memory input is ordered along a Z-curve and cut into partitions of about
``rows_per_partition`` rows; each partition's bounding box ``[min_x, min_y, (min_z,) max_x,
max_y, (max_z)]`` is kept (``partition_bounds``), so queries and joins can skip partitions.
For input that is already a Dask collection the partitioning is kept, and the bounds are either
given or computed once on demand by :meth:`PartitionedElement.compute_partition_bounds`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import dask
import numpy as np
import pandas as pd

from spatialflow.elements.base import Element
from spatialflow.kernels.spatial import block_bounds, spatial_order
from spatialflow.transforms.base import Transform

__all__ = ["PartitionedElement", "split_frame"]

DEFAULT_ROWS_PER_PARTITION = 1_000_000


def split_frame(
    frame: pd.DataFrame,
    xy: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
    rows_per_partition: int,
    spatial_sort: bool,
) -> tuple[list[pd.DataFrame], np.ndarray]:
    """Order ``frame`` spatially (by ``xy``) and cut it into partitions with their bounds."""
    n = len(frame)
    if spatial_sort and n > 1:  # callers keep frame.index to restore the given order
        order = spatial_order(xy[:, 0], xy[:, 1])
        frame, mins, maxs = frame.iloc[order], mins[order], maxs[order]
    nparts = max(1, -(-n // max(1, rows_per_partition)))
    starts = np.linspace(0, n, nparts + 1).astype(np.int64)[:-1]
    ends = np.append(starts[1:], n)
    parts = [frame.iloc[s:e] for s, e in zip(starts, ends, strict=True)]
    return parts, block_bounds(mins, maxs, starts)


class PartitionedElement(Element):
    """Base of Points and Shapes: a partitioned dask frame with partition bounding boxes."""

    def __init__(self, *, transforms: Mapping[str, Transform] | None, name: str | None) -> None:
        super().__init__(transforms=transforms, name=name)
        self._bounds: np.ndarray | None = None
        #: the index in the order the rows were given, when the partitions hold them in another
        #: (spatially sorted) order; results keyed by row (aggregated tables) follow it
        self.row_order: pd.Index | None = None

    data: Any

    @property
    def npartitions(self) -> int:
        return int(self.data.npartitions)

    def _set_bounds(self, bounds: Any) -> None:
        if bounds is None:
            self._bounds = None
            return
        b = np.asarray(bounds, dtype=np.float64)
        d = len(self.axes)
        if b.shape != (self.npartitions, 2 * d):
            raise self.error(
                "partition_bounds",
                f"expected shape ({self.npartitions}, {2 * d}) "
                f"for {self.npartitions} partitions on axes {self.axes}, got {b.shape}",
            )
        self._bounds = b

    @property
    def partition_bounds(self) -> np.ndarray | None:
        """Per-partition bounding boxes, or None if not known yet (see compute_partition_bounds)."""
        return self._bounds

    def compute_partition_bounds(self) -> np.ndarray:
        """Compute (once) and keep each partition's bounding box."""
        if self._bounds is None:
            parts = self.data.to_delayed()
            boxes = dask.compute(*[dask.delayed(self._partition_box)(p) for p in parts])
            self._bounds = np.vstack(boxes) if boxes else np.empty((0, 2 * len(self.axes)))
        return self._bounds

    def _partition_box(self, part: Any) -> np.ndarray:
        mins, maxs = self._row_boxes(part)
        d = len(self.axes)
        if len(mins) == 0:
            return np.full((1, 2 * d), np.nan)
        return np.concatenate([np.nanmin(mins, axis=0), np.nanmax(maxs, axis=0)])[None, :]

    @abstractmethod
    def _row_boxes(self, part: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per-row lower and upper corners, (N, D) each, of one in-memory partition."""

    def bounds(self) -> np.ndarray:
        """Bounding box of the whole element, [min..., max...]."""
        b = self.compute_partition_bounds()
        d = len(self.axes)
        return np.concatenate([np.nanmin(b[:, :d], axis=0), np.nanmax(b[:, d:], axis=0)])
