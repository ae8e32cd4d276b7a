"""Shared machinery of the vendor readers: files that must exist, lazy blocks of parquet and
CSV tables with known categories, polygons from contiguous vertex tables, OME-TIFF images via
tifffile's zarr interface, 10x h5 count matrices, and the pyramids spatialdata builds.

Decisions:
- Every problem a folder can have is a FormatError naming the file and what is wrong: checked
  at open time where it is cheap (existence, schema, parquet footers, CSV header), and inside
  the block tasks where it needs the data (a truncated CSV row, an unknown gene, polygon
  vertices that are not contiguous). A failing task fails the whole job before its commit.
- Blocks are tasks built with ``dask.dataframe.from_map``; a task reads its rows only (one
  parquet row group, or one byte range of a CSV), so reading is parallel and memory per task
  is bounded by the block size. The client reads footers, headers and small tables only.
- Categorical columns get their categories from the format's own metadata (gene panel, matrix
  features), so no pass over the data is needed; a value outside them is an error.
- Pyramids are built as spatialdata 0.8 builds them, so pixels of every scale match it: images
  by xarray coarsen (mean, trimmed, cast back to the dtype), labels by nearest neighbour at
  ``floor((i + 0.5) * n_in / n_out)``.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr

from spatialflow.errors import FormatError

__all__ = [
    "DEFAULT_FACTORS",
    "cell_id_strings",
    "csv_blocks",
    "csv_header",
    "image_pyramid",
    "labels_pyramid",
    "parquet_file",
    "parquet_source",
    "pil_array",
    "read_10x_h5",
    "require",
    "require_columns",
    "tiff_array",
]

log = logging.getLogger(__name__)

#: spatialdata-io's default pyramid for large images and labels
DEFAULT_FACTORS = (2, 2, 2, 2)
DEFAULT_CSV_BLOCK = 64 * 2**20


def local_folder(
    reader: str, url: Any, storage_options: Any, options: dict[str, Any], known: set[str]
) -> Path:
    """The local folder at ``url`` after checking a vendor reader's options. ``branch="main"``
    and ``snapshot=None`` (what job runners pass to every input) are accepted and ignored."""
    from spatialflow.io.location import location

    if options.pop("branch", "main") != "main" or options.pop("snapshot", None) is not None:
        raise FormatError(f"{url}: branch= and snapshot= apply to Icechunk repositories only")
    unknown = sorted(set(options) - known)
    if unknown:
        raise FormatError(
            f"{url}: the {reader} reader takes no options {unknown}; known: {sorted(known)}"
        )
    loc = location(url, storage_options)
    if not loc.is_local:
        raise FormatError(f"{loc.url}: vendor folders are read from local paths only")
    path = Path(loc.path)
    if not path.is_dir():
        raise FormatError(f"{path}: no such directory")
    return path


def require(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, or a FormatError saying which file is missing and what it holds."""
    p = folder / name
    if not p.exists():
        raise FormatError(f"{p}: missing file ({what}); the folder is incomplete")
    return p


def require_columns(file: Path, found: Sequence[str], needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in found]
    if missing:
        raise FormatError(
            f"{file}: missing column(s) {missing} (found {list(found)}); was a column renamed "
            "or the file written by another tool?"
        )


# --- Xenium cell ids --------------------------------------------------------------------------
def cell_id_strings(prefix: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Xenium's cell id strings: the prefix's 8 hex digits spelled a..p, then ``-suffix``."""
    prefix = np.asarray(prefix, dtype=np.uint32)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    letters = (((prefix[:, None] >> shifts) & 0xF) + ord("a")).astype(np.uint8)
    head = letters.view("S8").ravel().astype("U8")
    return np.char.add(head, np.char.add("-", np.asarray(suffix).astype("U")))


# --- parquet ------------------------------------------------------------------------------------
def parquet_file(path: Path) -> pq.ParquetFile:
    """Open a parquet file's footer; a truncated or foreign file is a FormatError."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{path}: not a readable parquet file (truncated?): {e}") from e


def parquet_source(
    path: Path, pf: pq.ParquetFile, categories: dict[str, list[Any]], renamed: dict[str, str]
) -> Any:
    """A column source over every row group of ``path`` (one per dask partition, in order);
    ``renamed`` maps the file's column names to the element's."""
    from fsspec.implementations.local import LocalFileSystem

    from spatialflow.io.columns import ParquetRowGroups

    groups = [(str(path), g) for g in range(pf.num_row_groups)]
    rows = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    names = {ours: theirs for theirs, ours in renamed.items()}
    return ParquetRowGroups(LocalFileSystem(), groups, categories, rows=rows, names=names)


def read_row_group(path: Path, group: int, columns: list[str]) -> pa.Table:
    try:
        return pq.ParquetFile(path).read_row_group(group, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise FormatError(f"{path}: row group {group} cannot be read (truncated?): {e}") from e


def as_str(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A string or binary arrow column as a numpy object array of str."""
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        col = col.cast(pa.string())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def known_categorical(
    values: np.ndarray, categories: pd.Index, file: Path, column: str
) -> pd.Categorical:
    """``values`` as a categorical with the given categories; an unknown value is an error."""
    cat = pd.Categorical(values, categories=categories)
    bad = (cat.codes < 0) & pd.notna(values)
    if bad.any():
        raise FormatError(
            f"{file}: column {column!r} holds {sorted(set(values[bad]))[:5]} which the "
            f"format's feature list does not name; the folder's files do not belong together"
        )
    return cat


# --- CSV ----------------------------------------------------------------------------------------
def csv_header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        line = f.readline().decode()
    if not line.strip():
        raise FormatError(f"{path}: empty CSV file (no header line)")
    return next(iter(pd.read_csv(io.StringIO(line), nrows=0).columns.to_series().pipe(_cols)))


def _cols(s: pd.Series) -> list[list[str]]:
    return [[str(c) for c in s.index]]


def csv_blocks(
    path: Path,
    header: list[str],
    blocksize: int = DEFAULT_CSV_BLOCK,
) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of ``path`` cut at line ends (after the header line)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.readline()
        first = f.tell()
        bounds = [first]
        pos = first
        while pos + blocksize < size:
            f.seek(pos + blocksize)
            f.readline()
            pos = f.tell()
            if pos >= size:
                break
            bounds.append(pos)
    bounds.append(size)
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def read_csv_block(
    path: Path,
    start: int,
    end: int,
    header: list[str],
    dtype: dict[str, Any] | None,
    required: Sequence[str],
) -> pd.DataFrame:
    """One byte range of a CSV as a frame; a short or malformed row is a FormatError."""
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    if end == path.stat().st_size and raw and not raw.endswith(b"\n"):
        raise FormatError(f"{path}: the last line has no line end; the file is truncated")
    try:
        frame = pd.read_csv(
            io.BytesIO(raw), header=None, names=header, dtype=dtype, on_bad_lines="error"
        )
    except (ValueError, pd.errors.ParserError) as e:
        raise FormatError(f"{path}: bytes {start}-{end} cannot be parsed: {e}") from e
    nulls = frame[list(required)].isna().any(axis=1) if len(required) else None
    if nulls is not None and nulls.any():
        raise FormatError(
            f"{path}: {int(nulls.sum())} row(s) in bytes {start}-{end} miss values of "
            f"{list(required)} (a truncated or damaged file?)"
        )
    return frame


# --- images -------------------------------------------------------------------------------------
class LazyZarr:
    """A picklable array-like over one zarr array that each process opens for itself: a TIFF
    (level 0 through tifffile's zarr store) or an array inside a zipped zarr (``key``). Open
    file handles never travel to the workers; each task reads only its chunk."""

    def __init__(self, path: Path, key: str | None = None) -> None:
        self.path, self.key = Path(path), key
        self._z: Any = None
        z = self._open()
        self.shape, self.dtype, self.ndim = tuple(z.shape), z.dtype, z.ndim
        self.chunks = tuple(getattr(z, "chunks", z.shape))

    def _open(self) -> Any:
        if self._z is None:
            import zarr

            try:
                if self.key is None:
                    import tifffile

                    z = zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
                    if isinstance(z, zarr.Group):
                        z = z["0"]
                else:
                    store = zarr.storage.ZipStore(self.path, mode="r", read_only=True)
                    z = zarr.open_array(store, path=self.key, mode="r")
            except FormatError:
                raise
            except Exception as e:
                what = "TIFF image" if self.key is None else f"zarr array {self.key!r}"
                raise FormatError(f"{self.path}: cannot read the {what}: {e}") from e
            self._z = z
        return self._z

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_z": None}

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._open()[key])


def lazy_array(path: Path, key: str | None = None, chunks: Any = None) -> da.Array:
    """A TIFF image (level 0) or a zipped zarr array as a lazy dask array."""
    src = LazyZarr(path, key)
    return da.from_array(src, chunks=chunks or src.chunks, name=f"vendor-{key or 'tiff'}-{path}")


def tiff_array(path: Path, chunks: Any = None) -> da.Array:
    """Level 0 of a (OME-)TIFF as a dask array through tifffile's zarr interface (lazy)."""
    return lazy_array(path, None, chunks)


def ome_physical_size(path: Path) -> float | None:
    """PhysicalSizeX of an OME-TIFF's first image (micrometres), or None if not recorded."""
    import re

    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            xml = tf.ome_metadata
    except Exception as e:
        raise FormatError(f"{path}: not a readable TIFF image: {e}") from e
    if not xml:
        return None
    m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    return float(m.group(1)) if m else None


def pil_array(file: Path) -> da.Array:
    """A JPEG/PNG image as a dask array, read whole by one task (PIL gives no tiles)."""
    from dask import delayed
    from PIL import Image as PILImage

    try:
        with PILImage.open(file) as im:
            w, h = im.size
            bands = len(im.getbands())
            probe = np.asarray(im.crop((0, 0, 1, 1)))
    except OSError as e:
        raise FormatError(f"{file}: not a readable image: {e}") from e
    shape = (h, w) if bands == 1 else (h, w, bands)
    return da.from_delayed(delayed(_pil_read)(file), shape=shape, dtype=probe.dtype)


def _pil_read(file: Path) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(file) as im:
        return np.asarray(im)


def image_pyramid(arr: da.Array, factors: Sequence[int]) -> list[xr.DataArray]:
    """Scales of an image (dims c, y, x) as spatialdata 0.8 makes them (coarsen mean, cast)."""
    levels = [xr.DataArray(arr, dims=("c", "y", "x"))]
    for f in factors:
        prev = levels[-1]
        nxt = prev.coarsen({"y": f, "x": f}, boundary="trim", side="right").mean()
        levels.append(nxt.astype(prev.dtype))
    return levels


def labels_pyramid(arr: da.Array, factors: Sequence[int]) -> list[xr.DataArray]:
    """Scales of a label mask (dims y, x) by nearest neighbour, as spatialdata 0.8 makes them."""
    levels = [arr]
    for f in factors:
        prev = levels[-1]
        picks = []
        for n in prev.shape:
            m = n // f if f <= n else n
            picks.append(np.minimum(np.floor((np.arange(m) + 0.5) * n / m).astype(np.int64), n - 1))
        levels.append(prev[picks[0]][:, picks[1]])
    return [xr.DataArray(lv, dims=("y", "x")) for lv in levels]


# --- 10x h5 -------------------------------------------------------------------------------------
def read_10x_h5(path: Path, *, gex_only: bool = True) -> Any:
    """A Cell Ranger v3 ``matrix`` h5 as AnnData (float32 CSR X), as scanpy.read_10x_h5 reads it."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise FormatError(f"{path}: no 'matrix' group; not a Cell Ranger v3+ h5 matrix")
            g = f["matrix"]
            need = ["barcodes", "data", "indices", "indptr", "shape", "features"]
            missing = [k for k in need if k not in g]
            if missing:
                raise FormatError(f"{path}: matrix lacks {missing}")
            n_cols, n_rows = g["shape"][()]
            data = g["data"][()]
            if data.dtype == np.int32:
                data = data.astype(np.float32)
            x = sp.csr_matrix((data, g["indices"][()], g["indptr"][()]), shape=(n_rows, n_cols))
            feats = g["features"]
            var = {"gene_ids": feats["id"][()].astype(str)}
            if "gene_id" in feats:
                var = {
                    "gene_ids": feats["gene_id"][()].astype(str),
                    "probe_ids": feats["id"][()].astype(str),
                }
            var["feature_types"] = feats["feature_type"][()].astype(str)
            for k, v in feats.items():
                if isinstance(v, h5py.Dataset) and k not in (
                    "name",
                    "feature_type",
                    "id",
                    "gene_id",
                    "_all_tag_keys",
                ):
                    var[k] = v[()].astype(bool if v.dtype.kind == "b" else str)
            names = feats["name"][()].astype(str)
            barcodes = g["barcodes"][()].astype(str)
    except OSError as e:
        raise FormatError(f"{path}: not a readable HDF5 file (truncated?): {e}") from e
    adata = ad.AnnData(x, obs=pd.DataFrame(index=barcodes), var=pd.DataFrame(var, index=names))
    if gex_only:
        adata = adata[:, adata.var["feature_types"] == "Gene Expression"].copy()
    return adata


def from_blocks(fn: Callable[..., Any], args: Sequence[Any], meta: Any, label: str) -> dd.DataFrame:
    return dd.from_map(fn, list(args), meta=meta, enforce_metadata=False, label=label)
