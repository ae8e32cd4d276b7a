"""Column sources of stored points (see elements/sources.py): parquet row groups of the
SpatialData layout and zarr partitions of the native layout, read straight into numpy.

Categorical columns come back as int32 codes into the element's categories: a parquet row
group's dictionary is mapped onto them (the dictionary is small, so the map is built per row
group; the codes themselves are never turned into strings), and the native layout stores codes
into the element's categories already.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spatialflow.elements.sources import ColumnSource, FrameColumns, RowFilter
from spatialflow.errors import FormatError
from spatialflow.io.guards import unreadable_parquet

__all__ = [
    "NativePartitions",
    "ParquetRowGroups",
    "arrow_codes",
    "points_frame",
    "with_categories",
]


def arrow_codes(
    column: pa.ChunkedArray | pa.Array,
    categories: pd.Index,
    cache: dict[int, tuple[pa.Array, np.ndarray]] | None = None,
) -> np.ndarray:
    """int32 codes of ``column`` (dictionary-encoded or plain values) into ``categories``.

    A dictionary's map onto the categories is built once and reused for every chunk carrying
    an equal dictionary (dask writes the whole category list into every row group)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    last: tuple[pa.Array, np.ndarray] | None = None
    for chunk in chunks:
        if not pa.types.is_dictionary(chunk.type):
            out.append(categories.get_indexer(_text(chunk).to_pandas()).astype(np.int32))
            continue
        if last is None or not last[0].equals(chunk.dictionary):
            lookup = categories.get_indexer(_text(chunk.dictionary).to_pandas()).astype(np.int32)
            last = (chunk.dictionary, np.append(lookup, np.int32(-1)))  # [-1] -> -1 (null)
        lookup = last[1]
        indices = chunk.indices
        if indices.null_count:
            idx = indices.fill_null(-1).to_numpy(zero_copy_only=False)
        else:
            idx = indices.to_numpy(zero_copy_only=False)
        out.append(lookup[idx])  # index -1 picks the appended -1
    if not out:
        return np.empty(0, np.int32)
    return out[0] if len(out) == 1 else np.concatenate(out)


def points_frame(
    table: pa.Table, categories: dict, columns: list[str] | None = None
) -> pd.DataFrame:
    """A points parquet table as pandas: dask's index column restored, the dictionary columns
    with the categories of the whole element."""
    df = table.to_pandas()
    if "__null_dask_index__" in df.columns:  # dask's name for an unnamed index
        df = df.set_index("__null_dask_index__")
    if df.index.name == "__null_dask_index__":
        df.index.name = None
    df = with_categories(df, categories)
    return df if columns is None else df[columns]


def with_categories(df: pd.DataFrame, categories: dict[str, list]) -> pd.DataFrame:
    """``df`` with each column of ``categories`` a categorical of exactly those categories
    (a parquet row group's dictionary holds its own subset, in its own order)."""
    for col, cats in categories.items():
        if col not in df.columns:
            continue
        if isinstance(df[col].dtype, pd.CategoricalDtype):  # remap codes, no strings built
            df[col] = df[col].cat.set_categories(cats)
        else:
            df[col] = pd.Categorical(df[col].astype(object), categories=cats)
    return df


def _text(values: pa.Array) -> pa.Array:
    """Binary values (e.g. Xenium 1.x gene names) as UTF-8 strings; anything else unchanged."""
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        return values.cast(pa.string())
    return values


def _numbers(column: pa.ChunkedArray) -> np.ndarray:
    if column.null_count and pa.types.is_integer(column.type):
        return column.to_numpy(zero_copy_only=False).astype(np.float64)
    return column.to_numpy()  # one copy when there are several chunks


def _system_pool_reader() -> Any:
    """A parquet reader whose buffers come from the system allocator (None if this pyarrow's
    reader takes no pool). The columns read here are kept for a whole build (the points
    index's input); Arrow's default pool (mimalloc) returns freed memory to the OS soon after,
    so every build faulted its input's pages afresh: 0.03-0.46 s of system time, a third of
    the 10^7-point build's variance, against ~0.05 s through malloc, whose freed memory the
    next build reuses. ``pq.ParquetFile`` takes no pool, so its reader is built here."""
    try:
        from pyarrow._parquet import ParquetReader

        return ParquetReader(memory_pool=pa.system_memory_pool())
    except (ImportError, TypeError):  # pragma: no cover - another pyarrow's private API
        return None


class ParquetRowGroups(ColumnSource):
    """One partition per (parquet file, row group), as the SpatialData reader partitions.

    ``names`` maps element column names to the file's where they differ (a vendor reader
    renames ``x_location`` to ``x``); categorical columns are read dictionary-encoded."""

    def __init__(
        self,
        fs: Any,
        groups: Sequence[tuple[str, int]],
        categories: dict[str, list[Any]],
        rows: Sequence[int] | None = None,
        names: dict[str, str] | None = None,
    ) -> None:
        self.fs = fs
        self.groups = list(groups)
        self.categories = {c: list(v) for c, v in categories.items()}
        self._rows = list(rows) if rows is not None else None
        self.names = dict(names or {})
        self.reads_frames = not self.names  # stored names differ: frames come via dask
        self._index: dict[str, pd.Index] = {}
        self._footers: dict[str, Any] = {}  # each file's footer, parsed once

    @property
    def npartitions(self) -> int:
        return len(self.groups)

    def rows(self, k: int) -> int | None:
        return None if self._rows is None else self._rows[k]

    def _cats(self, name: str) -> pd.Index:
        if name not in self._index:
            self._index[name] = pd.Index(self.categories[name])
        return self._index[name]

    def _read_row_groups(
        self, path: str, rgs: list[int], columns: list[str] | None = None, threads: bool = True
    ) -> pa.Table:
        """Row groups ``rgs`` of one file (a local path opened by pyarrow itself; otherwise
        through the filesystem, whose file is closed after the read). ``threads=False``: one
        thread decodes (for callers already running one read per core: Arrow's threaded
        reads take fresh memory in every I/O thread, which costs more than they save)."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        dictionary = [self.names.get(c, c) for c in self.categories]
        try:
            if "file" in protocols:
                # plain reads, not a memory map: bytes read stay visible to the OS's I/O
                # accounting (what the benchmarks measure), at the cost of one copy
                return self._read_from(path, path, rgs, columns, threads, dictionary)
            with self.fs.open(path, "rb") as f:
                return self._read_from(f, path, rgs, columns, threads, dictionary)
        except (OSError, pa.ArrowException, ValueError) as e:
            raise unreadable_parquet(f"{path} (row groups {rgs[0]}..{rgs[-1]})", e, self.fs) from e

    def _read_from(
        self,
        source: Any,
        path: str,
        rgs: list[int],
        columns: list[str] | None,
        threads: bool,
        dictionary: list[str],
    ) -> pa.Table:
        footer = self._footers.get(path)
        reader = _system_pool_reader()
        if reader is None:  # pragma: no cover - a pyarrow without the reader's pool argument
            pf = pq.ParquetFile(source, read_dictionary=dictionary, metadata=footer)
            self._footers[path] = pf.metadata
            return pf.read_row_groups(rgs, columns=columns, use_threads=threads)
        reader.open(
            source, read_dictionary=dictionary, metadata=footer, arrow_extensions_enabled=True
        )
        try:
            self._footers[path] = reader.metadata
            indices = None  # as ParquetFile selects them: names the file lacks are left out
            if columns is not None:
                stored = set(reader.schema_arrow.names)
                indices = [reader.column_name_idx(c) for c in columns if c in stored]
            return reader.read_row_groups(rgs, column_indices=indices, use_threads=threads)
        finally:
            reader.close()

    def read(
        self, k: int, columns: Sequence[str], *, threads: bool = True
    ) -> dict[str, np.ndarray]:
        return self.read_many([k], columns, threads=threads)

    def schema(self, k: int) -> pa.Schema:
        """The Arrow schema of the file holding partition ``k`` (its footer, parsed once)."""
        path = self.groups[k][0]
        footer = self._footers.get(path)
        if footer is None:
            with self.fs.open(path, "rb") as f:
                footer = self._footers[path] = pq.ParquetFile(f).metadata
        return footer.schema.to_arrow_schema()

    def read_many(
        self, ks: Sequence[int], columns: Sequence[str], *, threads: bool = True
    ) -> dict[str, np.ndarray]:
        """Partitions ``ks`` at once, in order: one read per parquet file they fall in."""
        tables = []
        stored = [self.names.get(c, c) for c in columns]
        for path, rgs in self._runs(ks):
            tables.append(self._read_row_groups(path, rgs, stored, threads))
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return {
            name: arrow_codes(table.column(file_name), self._cats(name))
            if name in self.categories
            else _numbers(table.column(file_name))
            for name, file_name in zip(columns, stored, strict=True)
        }

    def read_frame(self, ks: Sequence[int], keep: RowFilter | None = None) -> pd.DataFrame:
        """Partitions ``ks`` with every column, as the element's pandas frame; the files are
        read in parallel (pyarrow releases the GIL), ``keep`` is applied to the Arrow table."""
        from concurrent.futures import ThreadPoolExecutor

        runs = self._runs(ks)

        def one(run: tuple[str, list[int]]) -> pa.Table:
            return self._read_row_groups(*run)

        if len(runs) == 1:
            tables = [one(runs[0])]
        else:
            with ThreadPoolExecutor(min(8, len(runs))) as pool:
                tables = list(pool.map(one, runs))
        table = pa.concat_tables(tables)
        if keep is not None:
            table = table.filter(pa.array(keep(_ArrowColumns(table, self))))
        return points_frame(table, self.categories)

    def _runs(self, ks: Sequence[int]) -> list[tuple[str, list[int]]]:
        runs: list[tuple[str, list[int]]] = []
        for k in ks:
            path, rg = self.groups[k]
            if runs and runs[-1][0] == path:
                runs[-1][1].append(rg)
            else:
                runs.append((path, [rg]))
        return runs

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_index"] = {}
        state["_footers"] = {}
        return state


class _ArrowColumns(Mapping[str, np.ndarray]):
    """The columns of a row-group table as a RowFilter sees them, taken on access."""

    def __init__(self, table: pa.Table, source: ParquetRowGroups) -> None:
        self._table = table
        self._source = source
        self._names = set(table.column_names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._source.names.get(name, name) in self._names

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self:
            raise KeyError(name)
        column = self._table.column(self._source.names.get(name, name))
        if name in self._source.categories:
            return arrow_codes(column, self._source._cats(name))
        return _numbers(column)

    def __iter__(self) -> Any:
        return iter(self._table.column_names)

    def __len__(self) -> int:
        return self._table.num_columns


class NativePartitions(ColumnSource):
    """The partitions of a native-layout element (one zarr group per partition)."""

    def __init__(self, store: Any, parts_path: str, schema: dict[str, Any], rows: list[int]):
        self.store = store
        self.parts_path = parts_path
        self.schema = schema
        self._rows = list(rows)
        self._position = {c["name"]: i for i, c in enumerate(schema["columns"])}

    @property
    def npartitions(self) -> int:
        return len(self._rows)

    def rows(self, k: int) -> int | None:
        return self._rows[k]

    def read(self, k: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
        import zarr

        from spatialflow.io.native import column_array, partition_path

        where = f"{self.parts_path}/{partition_path(k)}"
        try:
            g = zarr.open_group(self.store, path=where, mode="r", zarr_format=3)
            out: dict[str, np.ndarray] = {}
            for name in columns:
                i = self._position[name]
                values = g[column_array(i)][...]
                kind = self.schema["columns"][i].get("kind")
                if kind == "categorical":
                    values = values.astype(np.int32)
                elif kind == "masked":
                    mask = g[f"{column_array(i)}_mask"][...].astype(bool)
                    values = values.astype(np.float64)
                    values[mask] = np.nan
                elif kind != "numeric":
                    raise FormatError(
                        f"{where}: column {name!r} holds {kind} values, not numbers or codes"
                    )
                out[name] = values
        except KeyError as e:
            raise FormatError(
                f"{where}: a stored array is missing ({e}); the store is damaged"
            ) from e
        return out

    def read_frame(self, ks: Sequence[int], keep: RowFilter | None = None) -> pd.DataFrame:
        from spatialflow.io.native import map_in_threads, read_frame_partition

        def one(k: int) -> pd.DataFrame:
            df = read_frame_partition(self.store, self.parts_path, k, self.schema, None)
            return df if keep is None else df[keep(FrameColumns(df))]

        frames = map_in_threads(one, list(ks))
        return pd.concat(frames) if len(frames) > 1 else frames[0]
