"""Column sources: an element's partitions read straight into numpy, without pandas.

A Points element read from a store keeps, next to its dask DataFrame, a :class:`ColumnSource`
that reads partition k's columns as numpy arrays (categoricals as int32 codes into the
element's categories, -1 for missing). Hot paths (aggregation, viewport and box queries) read
through it, one task per unit of work, with no DataFrame built in between; everything else uses
the dask DataFrame. Sources are implemented by the formats (io/): parquet row groups of the
SpatialData layout, zarr partitions of the native layout. Element constructors that change the
data (transform, query) do not carry a source over, so a source always describes the data as
stored.

A Shapes element read from a store may likewise keep a :class:`FrameSource`: it reads several
partitions as one GeoDataFrame in one task and, given a box, may skip decoding the rows whose
geometry cannot meet it (small spatial queries use it instead of one task per partition).

A source must pickle (it travels to Dask workers) and must hold no open file handles.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ColumnSource", "FrameColumns", "FrameSource", "RowFilter"]

#: given columns by name (numbers as numpy, categoricals as int32 codes), the rows to keep
RowFilter = Callable[[Mapping[str, np.ndarray]], np.ndarray]


class FrameColumns(Mapping[str, np.ndarray]):
    """The columns of a pandas frame as a :class:`RowFilter` sees them, taken on access."""

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df

    def __contains__(self, name: object) -> bool:
        return name in self._df.columns

    def __getitem__(self, name: str) -> np.ndarray:
        col = self._df[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            return col.cat.codes.to_numpy().astype(np.int32)
        return col.to_numpy()

    def __iter__(self) -> Any:
        return iter(self._df.columns)

    def __len__(self) -> int:
        return len(self._df.columns)


class ColumnSource(ABC):
    """Reads the partitions of one stored points element as numpy columns."""

    #: whether :meth:`read_frame` gives exactly the element's frame (a source whose stored
    #: columns need more than renaming to become the element's says False)
    reads_frames: bool = True

    @property
    @abstractmethod
    def npartitions(self) -> int:
        """The number of partitions (the element's dask partitions, one for one)."""

    @abstractmethod
    def read(self, k: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Partition ``k``'s ``columns``: numbers as numpy arrays, categoricals as int32 codes
        into the element's categories (-1 where the value is missing or not a category)."""

    def read_many(self, ks: Sequence[int], columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Partitions ``ks`` concatenated in order (a source may batch the reads)."""
        pieces = [self.read(k, columns) for k in ks]
        if not pieces:
            raise ValueError("read_many: no partitions given")
        return {c: np.concatenate([p[c] for p in pieces]) for c in columns}

    @abstractmethod
    def read_frame(self, ks: Sequence[int], keep: RowFilter | None = None) -> pd.DataFrame:
        """Partitions ``ks`` with every column, concatenated, as the element's pandas frame
        (what the dask partitions would give), for batches of a selection read in one task.
        With ``keep``, only the rows it selects: it is called with the rows' columns (as
        :meth:`read` gives them, taken on access) before any pandas frame is built."""

    def rows(self, k: int) -> int | None:
        """Rows of partition ``k`` if known without reading it (else None)."""
        return None


class FrameSource(ABC):
    """Reads partitions of one stored shapes element as a GeoDataFrame, in one task."""

    @property
    @abstractmethod
    def npartitions(self) -> int:
        """The number of partitions (the element's dask partitions, one for one)."""

    @abstractmethod
    def read_frame(
        self, ks: Sequence[int], bbox: tuple[float, float, float, float] | None = None
    ) -> Any:
        """Partitions ``ks`` concatenated, as the element's GeoDataFrame (what the dask
        partitions would give). With ``bbox`` = (minx, miny, maxx, maxy) in the element's
        space, rows whose geometry (a circle: its disk) cannot meet the box may be left out;
        every row that meets it is kept, so callers still apply their exact test."""

    def rows(self, k: int) -> int | None:
        """Rows of partition ``k`` if known without reading it (else None)."""
        return None
