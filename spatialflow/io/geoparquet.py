"""GeoParquet shapes of the SpatialData layout, read row group by row group.

A shapes element's ``shapes.parquet`` is read as one dask partition per row group (so box
queries prune row groups by their stored bounds), and through :class:`GeoParquetRowGroups`, its
:class:`~spatialflow.elements.sources.FrameSource`: several row groups in one task, which, for a
box, decodes only the rows that can meet it. Decoding WKB into shapely geometries is most of
the cost of reading shapes; the bounds of every row come first from the bytes
(:func:`~spatialflow.kernels.wkb.wkb_bounds`), and only candidate rows are decoded. A selection
is decoded whole (the caller's exact test filters it) while the process has not started numba's
JIT and the rows it decoded whole so far stay under ``KERNEL_MIN_ROWS``: about what starting the
JIT costs (0.25 s, ~150k polygons). Like renting skis until their price is spent, this never
costs more than about twice the better choice made in hindsight: a few small queries never wait for
the JIT, a long interactive session or one large selection pays it once.

Frames are built as ``geopandas.read_parquet`` builds them (WKB or GeoArrow geometry, the index
from the pandas metadata, a range index continued across row groups), with categorical columns
given the categories of the whole element.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spatialflow.elements.sources import FrameSource
from spatialflow.io.columns import with_categories
from spatialflow.io.guards import unreadable_parquet
from spatialflow.kernels.wkb import column_bounds, wkb_bounds_loaded

__all__ = ["KERNEL_MIN_ROWS", "GeoParquetRowGroups", "geopandas_frame", "read_shapes_row_group"]

#: rows a process decodes whole before it starts the JIT for the bounds kernel (break-even)
KERNEL_MIN_ROWS = 150_000
_decoded_whole = 0  # rows decoded whole so far in this process (a statistic; races are benign)


def read_shapes_row_group(
    fs: Any, path: str, rg: int, offset: int, geo: dict, categories: dict | None = None
) -> Any:
    """Row group ``rg`` of a GeoParquet file (the first row is row ``offset`` of the file),
    its categorical columns with the categories of the whole element."""
    try:
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(rg)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise unreadable_parquet(path, e, fs) from e
    return with_categories(geopandas_frame(table, geo, offset), categories or {})


def geopandas_frame(table: pa.Table, geo: dict, rows: int | np.ndarray) -> Any:
    """A GeoDataFrame as geopandas.read_parquet makes it. A range index in the pandas metadata
    is continued from file row ``rows`` (an int: the first row of ``table``), or taken at the
    file rows ``rows`` (an array: the row of each row of ``table``)."""
    from geopandas.io.arrow import _arrow_to_geopandas  # what geopandas.read_parquet uses

    gdf = _arrow_to_geopandas(table, geo)
    pandas_meta = table.schema.pandas_metadata or {}
    for ix in pandas_meta.get("index_columns", []):
        if isinstance(ix, dict) and ix.get("kind") == "range":
            step = int(ix.get("step", 1))
            start = int(ix.get("start", 0))
            if isinstance(rows, np.ndarray):
                gdf.index = pd.Index(start + rows * step, name=ix.get("name"))
            else:
                first = start + rows * step
                gdf.index = pd.RangeIndex(first, first + len(gdf) * step, step, name=ix.get("name"))
    if gdf.index.name == "__index_level_0__":
        gdf.index.name = None
    return gdf


class GeoParquetRowGroups(FrameSource):
    """The row groups of one GeoParquet file, one partition each."""

    def __init__(
        self, fs: Any, path: str, sizes: Sequence[int], geo: dict, categories: dict
    ) -> None:
        self.fs = fs
        self.path = path
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])
        self.geo = geo
        self.categories = categories

    @property
    def npartitions(self) -> int:
        return len(self.sizes)

    def rows(self, k: int) -> int | None:
        return self.sizes[k]

    def read_frame(
        self, ks: Sequence[int], bbox: tuple[float, float, float, float] | None = None
    ) -> Any:
        ks = [int(k) for k in ks]
        try:
            with self.fs.open(self.path, "rb") as f:
                table = pq.ParquetFile(f).read_row_groups(ks)
        except (OSError, pa.ArrowException, ValueError) as e:
            raise unreadable_parquet(f"{self.path} (row groups {ks})", e, self.fs) from e
        rows = np.concatenate(
            [np.arange(self.offsets[k], self.offsets[k + 1]) for k in ks] or [np.empty(0, int)]
        )
        keep = self._meets(table, bbox) if bbox is not None else None
        if keep is not None:
            table, rows = table.filter(pa.array(keep)), rows[keep]
        frame = geopandas_frame(table, self.geo, rows)
        return with_categories(frame, self.categories)

    def _meets(self, table: pa.Table, bbox: tuple[float, float, float, float]) -> np.ndarray | None:
        """Rows whose geometry's bounds (a circle's grown by its radius) meet ``bbox``; None
        (decode every row) when the geometry is not WKB or decoding costs less than the JIT."""
        column = self.geo.get("primary_column", "geometry")
        encoding = str(self.geo.get("columns", {}).get(column, {}).get("encoding", ""))
        if encoding.upper() != "WKB" or column not in table.column_names:
            return None
        global _decoded_whole
        if not wkb_bounds_loaded() and _decoded_whole + table.num_rows < KERNEL_MIN_ROWS:
            _decoded_whole += table.num_rows
            return None  # decoding these rows costs less than starting the JIT
        bounds = _column_bounds(table.column(column))
        if "radius" in table.column_names:
            r = table.column("radius").to_numpy(zero_copy_only=False).astype(np.float64)
            bounds[:, :2] -= r[:, None]
            bounds[:, 2:] += r[:, None]
        minx, miny, maxx, maxy = bbox
        with np.errstate(invalid="ignore"):
            return (
                (bounds[:, 0] <= maxx)
                & (bounds[:, 2] >= minx)
                & (bounds[:, 1] <= maxy)
                & (bounds[:, 3] >= miny)
            )  # NaN (empty geometry) compares False: an empty geometry meets nothing


def _column_bounds(column: pa.ChunkedArray) -> np.ndarray:
    """(n, 4) bounds of a binary WKB column, chunk by chunk, straight from its buffers."""
    out = []
    for chunk in column.chunks:
        if pa.types.is_large_binary(chunk.type):
            width = np.int64
        elif pa.types.is_binary(chunk.type):
            width = np.int32
        else:  # e.g. a GeoArrow extension type over binary: its storage holds the bytes
            storage = getattr(chunk, "storage", None)
            if storage is None or not (
                pa.types.is_binary(storage.type) or pa.types.is_large_binary(storage.type)
            ):
                return np.tile([-np.inf, -np.inf, np.inf, np.inf], (len(column), 1))
            chunk = storage
            width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        _, offsets, data = chunk.buffers()
        offsets_np = np.frombuffer(offsets, width)[chunk.offset : chunk.offset + len(chunk) + 1]
        data_np = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        out.append(column_bounds(offsets_np, data_np))
    return np.concatenate(out) if out else np.empty((0, 4))
