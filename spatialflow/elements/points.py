"""Points: a dask DataFrame with coordinate columns x, y, (z) and a known categorical feature.

Validation at construction checks the schema always and the values (NaN coordinates) when the
data is in memory; for Dask input it checks the schema (from ``_meta``) and leaves values to
:meth:`Points.validate_values`, so constructing an element over 10^9 rows reads nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.dataframe.utils import has_known_categories

from spatialflow.elements.partitioned import (
    DEFAULT_ROWS_PER_PARTITION,
    PartitionedElement,
    split_frame,
)
from spatialflow.elements.points_index import PointsIndex
from spatialflow.elements.sources import ColumnSource
from spatialflow.transforms.base import Transform

__all__ = ["Points"]


class Points(PartitionedElement):
    kind = "points"

    def __init__(
        self,
        data: pd.DataFrame | dd.DataFrame,
        *,
        feature_key: str | None = None,
        instance_key: str | None = None,
        transforms: Mapping[str, Transform] | None = None,
        name: str | None = None,
        partition_bounds: Any = None,
        rows_per_partition: int = DEFAULT_ROWS_PER_PARTITION,
        spatial_sort: bool = True,
        column_source: ColumnSource | None = None,
        index: PointsIndex | None = None,
    ) -> None:
        super().__init__(transforms=transforms, name=name)
        self.feature_key = feature_key
        self.instance_key = instance_key
        # the multiscale index (sf.index_points); operations that change the rows drop it
        self.index: PointsIndex | None = index
        if not isinstance(data, pd.DataFrame | dd.DataFrame):
            raise self.error(
                "data", f"expected a pandas or dask DataFrame, got {type(data).__name__}"
            )
        self._axes: tuple[str, ...] = ("x", "y", "z") if "z" in data.columns else ("x", "y")
        if isinstance(data, pd.DataFrame):
            data = self._from_pandas(data, rows_per_partition, spatial_sort)
            partition_bounds = self._pending_bounds
        self._check_schema(data._meta)
        self.data: dd.DataFrame = data
        self._set_bounds(partition_bounds)
        if column_source is not None and column_source.npartitions != self.npartitions:
            raise self.error(
                "column_source",
                f"the column source has {column_source.npartitions} partitions, the data "
                f"{self.npartitions}",
            )
        #: reads partitions straight into numpy (set by readers; see elements/sources.py)
        self.column_source = column_source

    # --- validation ------------------------------------------------------------------
    def _check_schema(self, meta: pd.DataFrame) -> None:
        for col in ("x", "y"):
            if col not in meta.columns:
                raise self.error(
                    "columns", f"missing coordinate column {col!r} (columns: {list(meta.columns)})"
                )
        for col in self.axes:
            if not pd.api.types.is_numeric_dtype(meta[col].dtype) or pd.api.types.is_bool_dtype(
                meta[col].dtype
            ):
                raise self.error(col, f"coordinates must be numeric, got dtype {meta[col].dtype}")
        if self.feature_key is not None:
            if self.feature_key not in meta.columns:
                raise self.error(
                    "feature_key",
                    f"column {self.feature_key!r} not found (columns: {list(meta.columns)})",
                )
            dtype = meta[self.feature_key].dtype
            if not isinstance(dtype, pd.CategoricalDtype):
                raise self.error(
                    self.feature_key,
                    f"the feature column must be categorical, got "
                    f"{dtype}; convert it with .astype('category')",
                )
            if not has_known_categories(meta[self.feature_key]):
                raise self.error(
                    self.feature_key,
                    "categories are unknown; call .cat.as_known() on the column first",
                )
        if self.instance_key is not None and self.instance_key not in meta.columns:
            raise self.error(
                "instance_key",
                f"column {self.instance_key!r} not found (columns: {list(meta.columns)})",
            )

    def _check_values(self, frame: pd.DataFrame) -> None:
        coords = frame[list(self.axes)].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(coords)
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise self.error(
                "coordinates",
                f"{len(rows)} rows have NaN or infinite coordinates (first at "
                f"index {frame.index[rows[0]]!r}); drop or fix them before building the element",
            )

    def validate_values(self) -> None:
        """Check every partition's values (computes the data)."""
        import dask

        dask.compute(*[dask.delayed(self._check_values)(p) for p in self.data.to_delayed()])

    def _from_pandas(
        self, df: pd.DataFrame, rows_per_partition: int, spatial_sort: bool
    ) -> dd.DataFrame:
        df = df.copy()
        if (
            self.feature_key is not None
            and self.feature_key in df.columns
            and not isinstance(df[self.feature_key].dtype, pd.CategoricalDtype)
        ):
            df[self.feature_key] = df[self.feature_key].astype("category")
        self._check_schema(df)
        self._check_values(df)
        xy = df[["x", "y"]].to_numpy(dtype=np.float64)
        box = df[list(self.axes)].to_numpy(dtype=np.float64)
        parts, self._pending_bounds = split_frame(
            df, xy, box, box, rows_per_partition, spatial_sort
        )
        return dd.from_map(_identity, parts, meta=df.iloc[:0], enforce_metadata=False)

    # --- access ----------------------------------------------------------------------
    @property
    def axes(self) -> tuple[str, ...]:
        return self._axes

    @property
    def feature_categories(self) -> list[Any]:
        if self.feature_key is None:
            return []
        return list(self.data._meta[self.feature_key].cat.categories)

    def _row_boxes(self, part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        c = part[list(self.axes)].to_numpy(dtype=np.float64)
        return c, c

    def summary(self) -> str:
        cols = ", ".join(map(str, self.data.columns))
        feat = (
            f", feature {self.feature_key!r} ({len(self.feature_categories)} categories)"
            if self.feature_key
            else ""
        )
        idx = f", indexed ({self.index.n_levels} levels)" if self.index is not None else ""
        return f"{self.npartitions} partitions, columns [{cols}]{feat}{idx}"


def _identity(part: pd.DataFrame) -> pd.DataFrame:
    return part
