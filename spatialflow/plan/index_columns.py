"""The rows of the points-index shuffle as plain columns, and the sorted ranges as Arrow tables.

Decisions:

* **No pandas between the input and parquet.** An input partition is taken apart once into
  one array per column (``Layout.columns``, or ``read_state`` straight from parquet row
  groups): numpy arrays for numpy-typed columns and the index, the codes of categorical
  columns (their categories are the element's, known on the client), and Arrow arrays for
  anything else (strings, nullable extension types). Pieces and ranges move numeric arrays
  with numba gathers (kernels/rows.py ``gather``) that release the GIL, so the threaded
  scheduler runs them on both cores; ``np.take`` holds it, and pandas' ``take`` and
  ``concat`` cost about twice as much here (block managers, category checks).
* **Pieces by reference.** A piece (``Piece``) names rows of its input's columns; the range
  gathers them when it runs (``concat_units``), so splitting a kept input copies nothing
  and only one range's rows are copied at a time (fresh memory is slow to fault in; at 10^7
  points this saved ~1 s of system time). Pickled (sent to another process), a piece
  carries only its own rows.
* **A sorted range is an Arrow table** with the schema pandas would give the frame (its
  ``pandas`` metadata included: an unnamed index is the column ``__null_dask_index__``, as
  dask writes it), built zero-copy from the sorted columns; categorical columns become
  dictionary arrays of the element's categories. The writer (io/points_index.py) writes it
  as it is; a unit that must be a pandas frame (queries of a fresh index) is converted from
  its slice of the table.
* **Range columns reuse their memory** (``RangeBuffers``): a range's numeric columns are
  taken from buffers of the build that nothing references any more (an earlier range,
  written and released), so of the ranges of a build only about as many as run at once
  take fresh memory. Fresh pages cost ~2 ms a MB to fault in on this VM, and the
  allocator's reuse of freed memory was a matter of luck: the assembling's system time
  ranged 0.06-0.37 s from one 10^7-point build to the next.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from spatialflow.elements.points import Points
from spatialflow.elements.points_index import LEVEL
from spatialflow.kernels.morton import point_state
from spatialflow.kernels.rows import gather, gather_units, unit_destinations

__all__ = [
    "NULL_INDEX",
    "Layout",
    "Piece",
    "RangeBuffers",
    "concat_take",
    "concat_units",
    "read_state",
    "row_group_source",
    "table_frame",
    "take",
]

NULL_INDEX = "__null_dask_index__"


def _kind(dtype: Any) -> str:
    if isinstance(dtype, pd.CategoricalDtype):
        return "cat"
    if isinstance(dtype, np.dtype) and dtype.kind in "biufmM":
        return "num"
    return "arrow"


class Layout:
    """How a frame of ``meta``'s schema becomes columns and an Arrow table (built on the
    client from the element's meta, sent to every task; a plain class, not a dataclass, so
    Dask passes it through without traversing it)."""

    def __init__(
        self, names: list[str], kinds: list[str], schema: pa.Schema, dictionaries: dict
    ) -> None:
        self.names = names  # frame columns, then the index
        self.kinds = kinds  # "num" | "cat" | "arrow" per name
        self.schema = schema
        self.dictionaries = dictionaries  # position -> (categories as Arrow, as pandas)
        #: numpy dtype of each "num" column and of each "cat" column's codes (else None)
        self.dtypes: list[Any] = [None] * len(names)

    @classmethod
    def of(cls, meta: pd.DataFrame) -> Layout:
        named = meta if meta.index.name is not None else meta.rename_axis(NULL_INDEX)
        schema = pa.Schema.from_pandas(named, preserve_index=True)
        names = [*map(str, meta.columns), str(named.index.name)]
        kinds = [_kind(meta[c].dtype) for c in meta.columns] + [_kind(meta.index.dtype)]
        pandas_meta = schema.pandas_metadata
        dictionaries = {}
        for i, c in enumerate(meta.columns):
            if kinds[i] != "cat":
                continue
            # an empty meta's codes are int8 whatever its categories: take the codes type and
            # the values type pandas gives a frame of these categories
            cats = meta[c].cat.categories
            codes = pd.Categorical.from_codes(np.array([-1]), categories=cats).codes
            values = pa.array(cats, from_pandas=True)
            if pa.types.is_null(values.type):  # no categories at all
                values = values.cast(pa.string())
            kind = pa.dictionary(pa.from_numpy_dtype(codes.dtype), values.type)
            schema = schema.set(i, schema.field(i).with_type(kind))
            pandas_meta["columns"][i]["numpy_type"] = str(codes.dtype)
            dictionaries[i] = (values, cats)
        if [f.name for f in schema] != names:  # pragma: no cover - pandas' order is this one
            raise AssertionError(f"unexpected Arrow column order {schema.names} for {names}")
        schema = schema.with_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        out = cls(names, kinds, schema, dictionaries)
        dtypes = [meta[c].dtype for c in meta.columns] + [meta.index.dtype]
        for i, kind in enumerate(kinds):
            if kind == "num":
                out.dtypes[i] = dtypes[i]
            elif kind == "cat":
                out.dtypes[i] = field_codes_dtype(schema.field(i).type)
        return out

    def columns(self, df: pd.DataFrame, skip: str | None = LEVEL) -> list[Any]:
        """One array per name of ``df`` (a partition of the element); None for ``skip`` (the
        column the index adds, filled in later)."""
        out: list[Any] = []
        for i, name in enumerate(self.names[:-1]):
            if name == skip:
                out.append(None)
                continue
            s = df[name]
            if self.kinds[i] == "cat":
                cats = self.dictionaries[i][1]
                if not s.cat.categories.equals(cats):
                    s = s.cat.set_categories(cats)
                out.append(np.asarray(s.cat.codes))
            elif self.kinds[i] == "num":
                out.append(s.to_numpy())
            else:
                out.append(pa.Array.from_pandas(s, type=self.schema.field(name).type))
        if self.kinds[-1] == "num":
            out.append(df.index.to_numpy())
        else:
            out.append(pa.Array.from_pandas(df.index.to_series(), type=self.schema[-1].type))
        return out

    def table(self, cols: list[Any]) -> pa.Table:
        """The Arrow table of sorted columns (zero-copy for numeric ones)."""
        arrays = []
        for i, (col, field) in enumerate(zip(cols, self.schema, strict=True)):
            kind = self.kinds[i]
            if kind == "cat":
                codes = pa.array(col.astype(field.type.index_type.to_pandas_dtype(), copy=False))
                dictionary = self.dictionaries[i][0]
                arrays.append(pa.DictionaryArray.from_arrays(codes, dictionary, from_pandas=True))
            elif kind == "num":
                arrays.append(_numeric_array(col, field.type))
            else:
                arrays.append(col)
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _numeric_array(col: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A numpy column as Arrow, NaN (NaT) as null as pandas has it. Integers and floats
    without NaN are wrapped as they are: Arrow's pandas conversion scans every value for
    nulls, ~4x the cost of numpy's NaN test (~0.06 s of the 10^7-point build)."""
    if col.dtype.kind in "biu" or (col.dtype.kind == "f" and not np.isnan(col).any()):
        return pa.array(col, type=kind)
    return pa.array(col, type=kind, from_pandas=True)


def field_codes_dtype(kind: pa.DataType) -> np.dtype:
    return np.dtype(kind.index_type.to_pandas_dtype())


def read_state(
    source: Any, k: int, lo: tuple, hi: tuple, seed: int, fk: str | None, layout: Layout
) -> tuple:
    """The slim state of a partition (plan/points_index.py ``_slim``) and its columns,
    reading partition ``k`` of a parquet row-group source straight into numpy (no pandas
    frame, no Python file object between Arrow's reads)."""
    names = [n for n in layout.names[:-1] if n != LEVEL]
    got = source.read(k, [*names, NULL_INDEX], threads=False)  # one read per core already
    cols: list[Any] = []
    for i, name in enumerate(layout.names):
        if name == LEVEL:
            cols.append(None)
            continue
        cols.append(np.asarray(got[NULL_INDEX if i == len(layout.names) - 1 else name]))
        cols[-1] = cols[-1].astype(layout.dtypes[i], copy=False)
    idx = cols[-1]
    at = layout.names.index(fk) if fk else -1
    if fk and layout.kinds[at] == "cat":  # its codes, as they are
        codes = cols[at]
    else:
        codes = np.asarray(got[fk], dtype=np.int32) if fk else np.zeros(len(idx), np.int16)
    # the columns as kept (in the element's dtypes), so ranges that compute keys and hashes
    # again from them (plan/index_shuffle.py ``rekey_of``) get these very values
    x, y = cols[layout.names.index("x")], cols[layout.names.index("y")]
    key = idx.astype(np.int64, copy=False).view(np.uint64)  # an int64 index: no copy
    ix, iy, h = point_state(x, y, codes, key, lo, hi, seed)
    small = codes.size == 0 or codes.max() < 2**15
    return ix, iy, h, codes.astype(np.int16 if small else np.int32, copy=False), cols


def row_group_source(el: Points, layout: Layout) -> Any:
    """The element's parquet row-group source when its partitions can be read straight into
    columns: stored names as the element's, numbers and categoricals only, an integer index
    stored as dask stores an unnamed one."""
    from spatialflow.io.columns import ParquetRowGroups

    source = el.column_source
    if not isinstance(source, ParquetRowGroups) or source.names or not source.groups:
        return None
    if layout.names[-1] != NULL_INDEX or layout.kinds[-1] != "num":
        return None
    if layout.dtypes[-1].kind not in "iu" or any(k not in ("num", "cat") for k in layout.kinds):
        return None
    try:
        schema = source.schema(0)
    except (OSError, ValueError, pa.ArrowException):  # any doubt: read the frames instead
        return None
    return source if set(layout.names[:-1]) - {LEVEL} | {NULL_INDEX} <= set(schema.names) else None


def take(col: Any, order: np.ndarray) -> Any:
    if isinstance(col, np.ndarray):
        return gather(col, order)
    return col.take(pa.array(order))


def concat_take(pieces: list[list[Any]], order: np.ndarray | None) -> list[Any]:
    """The columns of ``pieces`` concatenated (in order), rows taken by ``order``."""
    out = []
    for j in range(len(pieces[0])):
        parts = [p[j] for p in pieces]
        if isinstance(parts[0], np.ndarray):
            col = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:
            col = parts[0] if len(parts) == 1 else pa.concat_arrays(parts)
        out.append(col if order is None else take(col, order))
    return out


class Piece:
    """The rows ``rows`` of an input partition that go to one range, by reference: its
    columns, sort keys and hashes are the whole input's, and the unit offsets are the
    piece's. A range gathers its pieces' rows when it runs (``concat_units``), so the split
    of an input allocates no rows and a batch's rows are copied one range at a time; a piece
    sent to another process (pickled) carries only its own rows."""

    __slots__ = ("cols", "h", "key", "rows", "units")

    def __init__(
        self, cols: list[Any], rows: np.ndarray, key: np.ndarray, h: np.ndarray, units: Any
    ) -> None:
        self.cols, self.rows, self.key, self.h, self.units = cols, rows, key, h, units

    def __len__(self) -> int:
        return len(self.rows)

    def __reduce__(self) -> tuple:
        cols = [take(c, self.rows) for c in self.cols]
        own = np.arange(len(self.rows), dtype=np.int32)
        key, h = gather(self.key, self.rows), gather(self.h, self.rows)
        return (Piece, (cols, own, key, h, self.units))

    def __sizeof__(self) -> int:  # its own rows (Dask's memory accounting)
        width = sum(c.dtype.itemsize if isinstance(c, np.ndarray) else 16 for c in self.cols)
        return 64 + len(self.rows) * (width + 16)


def table_frame(table: pa.Table) -> pd.DataFrame:
    """A (slice of a) sorted range as the pandas frame of the element's meta."""
    df = table.to_pandas()
    if df.index.name == NULL_INDEX:
        df.index.name = None
    return df


def _idle_refs() -> int | None:
    """What ``sys.getrefcount`` says of a kept buffer nothing else holds, counted in the
    very loop ``RangeBuffers.take`` runs (the list's reference, the loop variable's and the
    call's argument, as this interpreter counts them: 3 on CPython 3.12, fewer where local
    loads are borrowed). None, so nothing is ever reused, where reference counts do not
    tell (a free-threaded build, another interpreter)."""
    if sys.implementation.name != "cpython" or not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    probe = [np.empty(1)]
    for buf in probe:
        return sys.getrefcount(buf)
    return None  # pragma: no cover - the list is not empty


_IDLE_REFS = _idle_refs()


class RangeBuffers:
    """Numeric buffers of one build's ranges, handed out again once nothing else holds them.

    ``take(n, dtype)`` returns a view of a kept buffer that no array, Arrow buffer or frame
    references any more (its reference count says so: every view, Arrow array and pandas
    block made from it keeps it alive), or of a new one. After ``ranges`` calls of ``done``
    (every range of the build assembled once) the buffers are let go, so nothing stays
    allocated after a write; a graph computed again starts a new round. A partial compute
    (a query of an index not yet written) leaves its ranges' buffers kept until the round
    ends or the element is dropped. Pickled (a task sent to another process) it is a pool
    that keeps nothing: processes share no memory."""

    _SLACK = 1 << 16  # rows a new buffer is rounded up to (ranges differ by a few units)

    def __init__(self, ranges: int) -> None:
        self._ranges = int(ranges)
        self._done = 0
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple:
        return (RangeBuffers, (0,))

    def take(self, n: int, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        if self._ranges <= 0 or _IDLE_REFS is None:
            return np.empty(n, dtype=dtype)
        with self._lock:
            for buf in self._kept:
                fits = n <= buf.size <= 2 * n + self._SLACK  # a smaller request: a new one
                if fits and buf.dtype == dtype and sys.getrefcount(buf) == _IDLE_REFS:
                    return buf[:n]
            buf = np.empty(n + (-n % self._SLACK), dtype=dtype)
            self._kept.append(buf)
            return buf[:n]

    def done(self) -> None:
        """One range assembled; after the last of a round, the buffers are let go."""
        if self._ranges <= 0:
            return
        with self._lock:
            self._done += 1
            if self._done >= self._ranges:
                self._kept, self._done = [], 0


def concat_units(pieces: list[Piece], buffers: RangeBuffers | None = None) -> list[Any]:
    """The columns of ``pieces``' rows joined unit by unit, each unit's rows in input order
    (piece by piece, each piece's rows as they are): one gather of each column straight from
    the inputs into its place, no sort keys (the feature-first copy's order). Numeric
    columns are written into ``buffers``' memory when given."""
    dest = unit_destinations(np.stack([p.units for p in pieces]))
    n = sum(len(p) for p in pieces)
    order = None

    def joined(arrays: list[Any]) -> Any:
        nonlocal order
        numeric = all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in arrays)
        if numeric:
            dtype = np.result_type(*arrays)
            out = np.empty(n, dtype) if buffers is None else buffers.take(n, dtype)
            for p, a, d in zip(pieces, arrays, dest, strict=True):
                gather_units(a, p.rows, p.units, d, out)
            return out
        if order is None:  # the rows of the piece-by-piece join, unit by unit
            order = np.empty(n, dtype=np.int64)
            start = 0
            for p, d in zip(pieces, dest, strict=True):
                own = np.arange(start, start + len(p), dtype=np.int64)
                gather_units(own, np.arange(len(p), dtype=np.int64), p.units, d, order)
                start += len(p)
        taken = [[take(a, p.rows)] for a, p in zip(arrays, pieces, strict=True)]
        return take(concat_take(taken, None)[0], order)

    return [joined([p.cols[j] for p in pieces]) for j in range(len(pieces[0].cols))]
