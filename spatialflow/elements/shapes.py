"""Shapes: a dask-geopandas GeoDataFrame of polygons/multipolygons, or of circles.

Circles are Point geometries plus a positive ``radius`` column, as in SpatialData. One element
holds one kind: polygons and multipolygons may mix, points and polygons may not. In-memory input
is validated value by value (kinds, empty or missing geometries, NaN coordinates, radii) and
spatially partitioned; Dask input is checked by schema and kept as partitioned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import dask.dataframe as dd
import dask_geopandas
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from spatialflow.elements.partitioned import (
    PartitionedElement,
    split_frame,
)
from spatialflow.elements.sources import FrameSource
from spatialflow.transforms.base import Transform

__all__ = ["Shapes"]

_POLY = {shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON}
_POINT = {shapely.GeometryType.POINT}
GeometryKind = Literal["polygons", "circles"]


class Shapes(PartitionedElement):
    kind = "shapes"

    def __init__(
        self,
        data: gpd.GeoDataFrame | dask_geopandas.GeoDataFrame,
        *,
        transforms: Mapping[str, Transform] | None = None,
        name: str | None = None,
        partition_bounds: Any = None,
        rows_per_partition: int = 200_000,
        spatial_sort: bool = True,
        frame_source: FrameSource | None = None,
    ) -> None:
        super().__init__(transforms=transforms, name=name)
        if isinstance(data, gpd.GeoDataFrame):
            data = self._from_geopandas(data, rows_per_partition, spatial_sort)
            partition_bounds = self._pending_bounds
        elif not isinstance(data, dask_geopandas.GeoDataFrame):
            raise self.error(
                "data",
                f"expected a geopandas or dask-geopandas GeoDataFrame, got {type(data).__name__}",
            )
        self.geometry_kind: GeometryKind = "circles" if "radius" in data.columns else "polygons"
        self._check_schema(data._meta)
        self.data: dask_geopandas.GeoDataFrame = data
        self._set_bounds(partition_bounds)
        if frame_source is not None and frame_source.npartitions != self.npartitions:
            raise self.error(
                "frame_source",
                f"the frame source has {frame_source.npartitions} partitions, the data "
                f"{self.npartitions}",
            )
        #: reads several partitions in one task (set by readers; see elements/sources.py)
        self.frame_source = frame_source

    @property
    def axes(self) -> tuple[str, ...]:
        return ("x", "y")

    @property
    def is_circles(self) -> bool:
        return self.geometry_kind == "circles"

    # --- validation ------------------------------------------------------------------
    def _check_schema(self, meta: gpd.GeoDataFrame) -> None:
        if (
            "radius" in meta.columns
            and not pd.api.types.is_float_dtype(meta["radius"].dtype)
            and not pd.api.types.is_integer_dtype(meta["radius"].dtype)
        ):
            raise self.error("radius", f"must be numeric, got dtype {meta['radius'].dtype}")

    def _check_values(self, gdf: gpd.GeoDataFrame) -> None:
        geoms = gdf.geometry.values
        if len(geoms) == 0:
            return
        missing = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise self.error(
                "geometry",
                f"{int(missing.sum())} geometries are missing or empty "
                f"(first at index {gdf.index[i]!r})",
            )
        types = set(shapely.get_type_id(geoms).tolist())
        if types <= _POINT:
            if "radius" not in gdf.columns:
                raise self.error(
                    "radius",
                    "point geometries are circles and need a 'radius' column (positive numbers)",
                )
            r = gdf["radius"].to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(r)) or np.any(r <= 0):
                bad = np.flatnonzero(~(np.isfinite(r) & (r > 0)))
                raise self.error(
                    "radius",
                    f"{len(bad)} radii are not positive finite numbers "
                    f"(first {r[bad[0]]!r} at index {gdf.index[bad[0]]!r})",
                )
        elif types <= _POLY:
            if "radius" in gdf.columns:
                raise self.error(
                    "radius",
                    "a 'radius' column is only allowed for circles "
                    "(point geometries); drop it for polygons",
                )
        else:
            names = sorted(shapely.GeometryType(t).name.lower() for t in types)
            raise self.error(
                "geometry",
                f"mixed or unsupported geometry kinds {names}; an element "
                "holds either polygons/multipolygons or circles (points + radius)",
            )
        coords = shapely.get_coordinates(geoms)
        if not np.all(np.isfinite(coords)):
            raise self.error("geometry", "geometries have NaN or infinite coordinates")

    def validate_values(self) -> None:
        """Check every partition's values (computes the data)."""
        import dask

        dask.compute(*[dask.delayed(self._check_values)(p) for p in self.data.to_delayed()])

    def _from_geopandas(
        self, gdf: gpd.GeoDataFrame, rows_per_partition: int, spatial_sort: bool
    ) -> dask_geopandas.GeoDataFrame:
        if gdf.geometry.name != "geometry":
            gdf = gdf.rename_geometry("geometry")
        self._check_schema(gdf)
        self._check_values(gdf)
        mins, maxs = self._row_boxes(gdf)
        xy = (mins + maxs) / 2 if len(gdf) else np.empty((0, 2))
        parts, self._pending_bounds = split_frame(
            gdf, xy, mins, maxs, rows_per_partition, spatial_sort
        )
        if parts and not pd.Index(np.concatenate([p.index.to_numpy() for p in parts])).equals(
            gdf.index
        ):
            self.row_order = gdf.index
        return dd.from_map(_identity, parts, meta=gdf.iloc[:0], enforce_metadata=False)

    def _row_boxes(self, part: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
        b = shapely.bounds(part.geometry.values)
        if "radius" in part.columns and len(part):
            r = part["radius"].to_numpy(dtype=np.float64)[:, None]
            return b[:, :2] - r, b[:, 2:] + r
        return b[:, :2], b[:, 2:]

    def summary(self) -> str:
        return (
            f"{self.geometry_kind}, {self.npartitions} partitions, columns "
            f"[{', '.join(map(str, self.data.columns))}]"
        )


def _identity(part: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return part
