"""Storing and restoring the multiscale points index (elements/points_index.py), both layouts.

SpatialData zarr layout: the element stays ordinary points that spatialdata 0.8 reads::

    points/<name>/zarr.json                  attrs as spatialdata writes them, plus
                                             spatialflow.points_index (the description and
                                             the unit tables of both copies; integer tables
                                             packed, elements/points_index.pack_ints)
    points/<name>/points.parquet/part.N      the spatial-first copy: each partition of the
                                             index is exactly one row group (one level, rows
                                             in Morton order, capped); consecutive row groups
                                             of one level share a file of up to FILE_ROWS rows
    points/<name>/points_by_feature.parquet/ the feature-first copy, the same way (spatialdata
                                             reads only points.parquet and ignores it)

Parquet statistics (min/max per row group) are written for level, x, y and every other
non-dictionary column but the index; numbers are stored uncompressed, an integer index delta-encoded (see
``_writer``); the feature column's range of codes per row group is in the unit tables
(which also carry the per-(level, feature) counts), not in string statistics, which cost four
times the column's encoding. Files are written in the pandas/dask parquet dialect
(``__null_dask_index__`` for an unnamed index) so dask, spatialdata and spatialflow read them
as they read what dask writes. A freshly built index is written range by range (a sorted
range is already an Arrow table with that dialect's schema, plan/index_columns.py; one Dask
task writes it as one file, one row group per unit, by zero-copy slices, Arrow writing a
local file itself), batch after batch (``PointsIndex.batches``), so at most one batch of
rows is in memory; an index read from storage is rewritten unit by unit.

Native Icechunk layout: the spatial-first copy is the element's own partitions; the
feature-first copy is a second partition table ``by_feature_partitions`` (its arrays in a
``feature-parts-<token>`` group); the description and unit tables go in ``points_index``.

A reader restores the index only when its unit tables match the stored row groups or
partitions; otherwise (the element was rewritten by another tool) it logs a warning and the
element reads as plain points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spatialflow.elements.points import Points
from spatialflow.elements.points_index import (
    INDEX_VERSION,
    LEVEL,
    IndexCopy,
    PointsIndex,
    unpack_ints,
)
from spatialflow.errors import FormatError

__all__ = [
    "FEATURE_DIR",
    "INDEX_ATTR",
    "restore_index",
    "write_index_parquet",
]

log = logging.getLogger(__name__)
INDEX_ATTR = "points_index"
FEATURE_DIR = "points_by_feature.parquet"
FILE_ROWS = 2_000_000
NULL_INDEX = "__null_dask_index__"


# --- writing parquet (SpatialData layout) --------------------------------------------------
def _file_groups(levels: np.ndarray, rows: np.ndarray) -> list[list[int]]:
    """Consecutive units grouped into files: one level range per file, up to FILE_ROWS rows."""
    groups: list[list[int]] = []
    cur = 0
    for i in range(len(rows)):
        if not groups or cur + rows[i] > FILE_ROWS or levels[i, 0] != levels[groups[-1][0], 0]:
            groups.append([])
            cur = 0
        groups[-1].append(i)
        cur += int(rows[i])
    return groups


def _writer(f: Any, schema: pa.Schema) -> pq.ParquetWriter:
    """A parquet writer that dictionary-encodes only dictionary and small integer columns
    (trying it on unique floats and ids costs more than the rest of the encoding) and keeps
    statistics of every column but the dictionary (feature) ones and the index: min/max of
    strings costs four times their encoding, the unit tables hold each unit's feature-code
    range, and nothing prunes by the index. Numbers are not compressed (snappy gains nothing
    on floats and costs a quarter of the encoding); the integer index and the level are
    delta-encoded (the index in a third of its plain size, for less CPU than snappy's two
    thirds; a unit's constant level in a few bytes, cheaper than a dictionary per row
    group); strings and dictionaries are snappy-compressed. Encoding buffers come from the
    system allocator: Arrow's default pool (mimalloc) takes fresh memory in every writing
    thread, ~0.2-0.3 s more system time for the 10^7-point build."""
    index = [
        c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    ]
    numbers = {
        fld.name
        for fld in schema
        if pa.types.is_integer(fld.type) or pa.types.is_floating(fld.type)
    }
    delta = {
        c: "DELTA_BINARY_PACKED"
        for c in [*index, LEVEL]
        if c in schema.names and pa.types.is_integer(schema.field(c).type)
    }
    dicts = [fld.name for fld in schema if pa.types.is_dictionary(fld.type)]
    small = dicts + [
        fld.name
        for fld in schema
        if pa.types.is_integer(fld.type) and fld.type.bit_width <= 16 and fld.name not in delta
    ]
    stats = [fld.name for fld in schema if fld.name not in dicts and fld.name not in index]
    codecs = {fld.name: "none" if fld.name in numbers else "snappy" for fld in schema}
    return pq.ParquetWriter(
        f,
        schema,
        compression=codecs,
        use_dictionary=small,
        write_statistics=stats,
        column_encoding=delta or None,
        memory_pool=pa.system_memory_pool(),
    )


def _write_file(fs: Any, path: str, *parts: pd.DataFrame) -> int:
    """Write ``parts`` as one parquet file, one row group each."""
    writer = None
    try:
        for df in parts:
            if df.index.name is None:
                df = df.rename_axis(NULL_INDEX)
            table = pa.Table.from_pandas(df, preserve_index=True)
            if writer is None:
                f = fs.open(path, "wb")
                writer = _writer(f, table.schema)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
    finally:
        if writer is not None:
            writer.close()
            f.close()
    return len(parts)


def _write_range(fs: Any, path: str, table: pa.Table, rows: np.ndarray) -> int:
    """Write one sorted range (an Arrow table with pandas metadata) as one parquet file, one
    row group per unit of ``rows``."""
    if table.num_rows != int(rows.sum()):  # pragma: no cover - a bug, not a user error
        raise FormatError(f"{path}: a range of {table.num_rows} rows for {int(rows.sum())}")
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    # a local file is written by Arrow directly; elsewhere encoded in memory, then one write
    sink = pa.OSFile(path, "wb") if local else pa.BufferOutputStream()
    with _writer(sink, table.schema) as w:
        offset = 0
        for n in rows:
            w.write_table(table.slice(offset, int(n)), row_group_size=int(n))
            offset += int(n)
    if local:
        sink.close()
    else:
        with fs.open(path, "wb") as f:
            f.write(sink.getvalue())
    return len(rows)


def _write_batches(loc: Any, path: str, index: PointsIndex) -> int:
    copies = {"spatial": ("points.parquet", index.spatial)}
    if index.by_feature is not None:
        copies["by_feature"] = (FEATURE_DIR, index.by_feature)
    for dirname, _ in copies.values():
        loc.fs.makedirs(f"{path}/{dirname}", exist_ok=True)
    written = 0
    for batch in index.batches or []:
        tasks = []
        for which, r in batch:
            dirname, copy = copies[which]
            assert copy.ranges is not None and copy.range_units is not None
            a, b = int(copy.range_units[r]), int(copy.range_units[r + 1])
            target = f"{path}/{dirname}/part.{r}.parquet"
            tasks.append(dask.delayed(_write_range)(loc.fs, target, copy.ranges[r], copy.rows[a:b]))
        written += sum(dask.compute(*tasks))
    return written


def write_index_parquet(loc: Any, path: str, el: Points) -> None:
    """Write both copies of an indexed element's rows under ``path``."""
    index = el.index
    assert index is not None
    expected = len(index.spatial.rows) + (
        len(index.by_feature.rows) if index.by_feature is not None else 0
    )
    if index.batches is not None:
        written = _write_batches(loc, path, index)
        if written != expected:  # pragma: no cover - a bug, not a user error
            raise FormatError(f"{path}: wrote {written} of {expected} index row groups")
        return
    copies = [("points.parquet", index.spatial)]
    if index.by_feature is not None:
        copies.append((FEATURE_DIR, index.by_feature))
    tasks = []
    for dirname, copy in copies:
        directory = f"{path}/{dirname}"
        loc.fs.makedirs(directory, exist_ok=True)
        parts = copy.data.to_delayed()
        for k, members in enumerate(_file_groups(copy.levels, copy.rows)):
            target = f"{directory}/part.{k}.parquet"
            tasks.append(dask.delayed(_write_file)(loc.fs, target, *[parts[i] for i in members]))
    written = dask.compute(*tasks)
    if sum(written) != expected:  # pragma: no cover - a bug, not a user error
        raise FormatError(f"{path}: wrote {sum(written)} of {expected} index row groups")


# --- restoring ---------------------------------------------------------------------------
def _copy(
    table: dict[str, Any], data: Any, bounds: np.ndarray | None, reader: Callable | None
) -> IndexCopy:
    levels = unpack_ints(table["levels"]).reshape(-1, 2)
    codes = unpack_ints(table["codes"]).reshape(-1, 2)
    rows = unpack_ints(table["rows"]).reshape(-1)
    if bounds is None:
        bounds = np.full((len(rows), 4), -np.inf)
        bounds[:, 2:] = np.inf
    return IndexCopy(data, levels, codes, rows, np.asarray(bounds, np.float64), reader)


def _xy_bounds(bounds: np.ndarray | None, d: int) -> np.ndarray | None:
    if bounds is None:
        return None
    b = np.asarray(bounds, dtype=np.float64)
    return np.concatenate([b[:, :2], b[:, d : d + 2]], axis=1)


def restore_index(
    meta: Any,
    where: str,
    el: Points,
    spatial_reader: Callable[[int], pd.DataFrame] | None,
    by_feature: tuple | None,
) -> PointsIndex | None:
    """The index stored as ``meta`` for the element ``el`` read from storage (None if absent
    or stale). ``by_feature`` is the feature-first copy's (frame, bounds, reader[, read_many])."""
    if not isinstance(meta, dict):
        return None
    if meta.get("version") not in (1, INDEX_VERSION):
        raise FormatError(
            f"{where}: unknown points index version {meta.get('version')!r} (this spatialflow "
            f"reads version {INDEX_VERSION}); upgrade spatialflow or rebuild the index"
        )
    try:
        description = {k: v for k, v in meta.items() if k not in ("spatial_units", "feature_units")}
        description["version"] = INDEX_VERSION  # version 1 differs only in how tables are stored
        if isinstance(description.get("feature_counts"), dict):
            description["feature_counts"] = unpack_ints(description["feature_counts"]).tolist()
        d = len(el.axes)
        spatial = _copy(
            meta["spatial_units"], el.data, _xy_bounds(el.partition_bounds, d), spatial_reader
        )
        feature = None
        if meta.get("feature_units") is not None and by_feature is not None:
            data, bounds, reader, *many = by_feature
            feature = _copy(meta["feature_units"], data, _xy_bounds(bounds, d), reader)
            feature.read_many = many[0] if many else None
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: malformed points index metadata ({e})") from e
    if len(spatial.rows) != el.npartitions or (
        feature is not None and len(feature.rows) != feature.data.npartitions
    ):
        log.warning(
            "%s: the stored points index does not match the stored rows (rewritten by another "
            "tool?); reading the element without it",
            where,
        )
        return None
    return PointsIndex(description, spatial, feature)


def parquet_readers(
    fs: Any, groups: list[tuple[str, int, Any]], categories: dict
) -> tuple[Callable[[int], pd.DataFrame], Callable[..., pd.DataFrame]]:
    """Readers (no Dask) of unit i = row group ``groups[i]``, and of several units at once
    filtered by a RowFilter before any pandas frame is built (``read_many(units, keep)``), both
    through one parquet source: each file's footer is parsed once and kept, and the row groups
    of each file are read by one call, files in parallel."""
    from spatialflow.io.columns import ParquetRowGroups

    source = ParquetRowGroups(fs, [(f, rg) for f, rg, _ in groups], categories)
    return partial(_read_unit, source), source.read_frame


def _read_unit(source: Any, i: int) -> pd.DataFrame:
    return source.read_frame([i])


def native_reader(
    read_partition: Callable[..., pd.DataFrame], store: Any, parts_path: str, schema: dict
) -> Callable[[int], pd.DataFrame]:
    return partial(_native_read, read_partition, store, parts_path, schema)


def _native_read(
    read_partition: Callable[..., pd.DataFrame], store: Any, parts_path: str, schema: dict, k: int
) -> pd.DataFrame:
    return read_partition(store, parts_path, k, schema, None)


def read_sd_index(
    loc: Any,
    path: str,
    meta: Any,
    el: Points,
    groups: list[tuple[str, int, Any]],
    categories: dict,
    where: str,
) -> PointsIndex | None:
    """The index of a points element of a SpatialData store (``groups``: its row groups)."""
    import dask.dataframe as dd

    from spatialflow.io.sdformat import _parts, _read_parquet_row_group, _row_groups

    reader, many = parquet_readers(loc.fs, groups, categories)
    by_feature = None
    directory = loc.join(path, FEATURE_DIR)
    if (
        isinstance(meta, dict)
        and meta.get("feature_units") is not None
        and loc.fs.exists(directory)
    ):
        files = _parts(loc, directory, where)
        fgroups = _row_groups(loc.fs, files, el.axes) if files else []
        n = len(fgroups)
        data = dd.from_map(
            _read_parquet_row_group,
            [loc.fs] * n,
            [f for f, _, _ in fgroups],
            [rg for _, rg, _ in fgroups],
            [categories] * n,
            meta=el.data._meta,
            enforce_metadata=False,
            label="read-points-by-feature",
        )
        fb = [b for _, _, b in fgroups]
        bounds = None if any(b is None for b in fb) else np.vstack(fb)
        by_feature = (data, bounds, *parquet_readers(loc.fs, fgroups, categories))
    index = restore_index(meta, where, el, reader, by_feature)
    if index is not None:
        index.spatial.read_many = many
    return index


def read_native_index(
    store: Any, path: str, attrs: dict[str, Any], el: Points, where: str
) -> PointsIndex | None:
    """The index of a points element of the native layout (attrs: the element group's)."""
    from spatialflow.io.native import read_frame_partition, read_native_frame

    meta = attrs["points_index"]
    try:
        schema = attrs["schema"]
        reader = native_reader(
            read_frame_partition, store, f"{path}/{attrs['partitions']['group']}", schema
        )
        by_feature = None
        ftable = attrs.get("by_feature_partitions")
        if isinstance(ftable, dict):
            data, bounds = read_native_frame(store, path, {**attrs, "partitions": ftable}, where)
            freader = native_reader(
                read_frame_partition, store, f"{path}/{ftable['group']}", schema
            )
            by_feature = (data, bounds, freader)
    except (KeyError, TypeError) as e:
        raise FormatError(f"{where}: malformed points index metadata ({e})") from e
    return restore_index(meta, where, el, reader, by_feature)
