"""The native columnar layout of points and shapes, for zarr stores (above all Icechunk).

Icechunk holds zarr arrays only, so points and shapes are stored column by column::

    points/<name>/                 group; attrs: encoding-type "spatialflow:points", version,
                                   axes, coordinateTransformations (spatialdata dialect),
                                   spatialdata_attrs (feature_key, instance_key), schema
                                   (columns with names and dtypes, index), partitions (the
                                   parts group, rows and bounding box of each partition,
                                   recorded after all partitions are written)
      parts-<token>/p00000/c0 ...  one 1-D array per column, by position in schema["columns"]
                                   (so any column name is allowed); categoricals as codes
      .../c3_mask                  a uint8 null mask for nullable kinds (strings, Int64 ...)
      .../index                    the index (index_mask for a nullable one)
    shapes/<name>/                 the same, encoding-type "spatialflow:shapes", plus geometry:
      .../p00000/g_coords (M, 2)   polygons as ragged arrays: g_ring_offsets (coords per
      .../p00000/g_part_offsets    ring), g_part_offsets (rings per polygon), g_geom_offsets
                                   (polygons per geometry), g_is_multi; circles as g_x, g_y
                                   (plus the radius column)

Dtypes are kept exactly: numpy numbers and booleans, pandas' nullable numbers and booleans
(values + mask), every string dtype (``str``, ``string``, python or pyarrow storage, object),
and categoricals (codes in the smallest signed integer type, categories and their own dtype in
the schema). Anything else is refused with a FormatError when the write is planned.

One partition is one group written by exactly one task, so no two tasks ever write the same
chunk, and a partition's length need not be known before it is computed. That is a deliberate
refinement of DESIGN.md section 6 ("the coordinator creates every output node first"): the
coordinator creates the element group, its schema and an empty ``parts-<token>`` group; each
writing task creates the arrays of its own partition under a path no other task uses, which
Icechunk merges without conflict; the coordinator records the partition table (parts group,
rows, bounds) after merging. The token is new for every write, because Icechunk refuses to
merge a fork that creates arrays at paths the base session deleted (replacing an element
deletes its old partitions). A reader refuses an element without a partition table (an
unfinished write). A partition's arrays are written whole, in chunks of up to 1M rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import zarr

from spatialflow.elements.sources import FrameSource
from spatialflow.errors import FormatError
from spatialflow.io.sdtransforms import write_transforms
from spatialflow.transforms.base import Transform

__all__ = [
    "LAYOUT_VERSION",
    "NativeFrames",
    "exact_dtypes",
    "frame_schema",
    "map_in_threads",
    "native_attrs",
    "partition_path",
    "read_native_frame",
    "write_frame_partition",
]

LAYOUT_VERSION = 1
CHUNK_ROWS = 1 << 20
INDEX = "index"
_ALL_CHUNKS = {"write_empty_chunks": True}  # every chunk exists, even all-zero ones
_MASKED = frozenset(
    [*(f"{s}Int{b}" for s in ("", "U") for b in (8, 16, 32, 64)), "Float32", "Float64", "boolean"]
)


def exact_dtypes() -> Any:
    """Dask's ``dataframe.convert-string`` turned off while building a collection: dask would
    otherwise turn every ``str``/object column and index into ``string[pyarrow]`` (NA), and a
    store's dtypes would not come back as they were written."""
    return dask.config.set({"dataframe.convert-string": False})


def partition_path(k: int) -> str:
    return f"p{k:05d}"


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# --- schema ------------------------------------------------------------------------------
def frame_schema(meta: pd.DataFrame, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON description of a frame's columns and index (from its empty ``_meta``)."""
    cols = []
    for name in meta.columns:
        if name in skip:
            continue
        if not isinstance(name, str):
            raise FormatError(f"{where}: column name {name!r} is not a string; rename it")
        cols.append({"name": name, **dtype_spec(meta[name].dtype, f"{where}: column {name!r}")})
    index_name = meta.index.name
    if index_name is not None and not isinstance(index_name, str):
        raise FormatError(f"{where}: index name {index_name!r} is not a string; rename it")
    index = {"name": index_name, **dtype_spec(meta.index.dtype, f"{where}: index")}
    return {"columns": cols, "index": index}


def dtype_spec(dtype: Any, where: str) -> dict[str, Any]:
    """The JSON description of a pandas/numpy dtype the layout can store."""
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        return {
            "kind": "categorical",
            "categories": [_py(v) for v in cats.tolist()],
            "ordered": bool(dtype.ordered),
            "categories_dtype": dtype_spec(cats.dtype, f"{where} categories"),
        }
    if isinstance(dtype, pd.StringDtype):
        na = "NA" if dtype.na_value is pd.NA else "nan"
        return {"kind": "string", "storage": dtype.storage, "na": na}
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        return {"kind": "string", "storage": "object", "na": "None"}
    if str(dtype) in _MASKED:
        return {"kind": "masked", "dtype": str(dtype)}
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return {"kind": "numeric", "dtype": dtype.str}
    raise FormatError(
        f"{where}: dtype {dtype} cannot be stored in the native layout (numbers, booleans, "
        "nullable numbers, strings and categoricals can); convert the column first"
    )


def pandas_dtype(spec: dict[str, Any]) -> Any:
    """The dtype a :func:`dtype_spec` describes (a FormatError for a malformed spec)."""
    try:
        return _pandas_dtype(spec)
    except FormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise FormatError(
            f"malformed column spec {str(spec)[:120]} in a native schema ({type(e).__name__}: "
            f"{e}); the element's metadata is damaged"
        ) from e


def _pandas_dtype(spec: dict[str, Any]) -> Any:
    kind = spec.get("kind")
    if kind == "categorical":
        cats = pd.Index(spec["categories"], dtype=_pandas_dtype(spec["categories_dtype"]))
        return pd.CategoricalDtype(cats, ordered=bool(spec.get("ordered", False)))
    if kind == "string":
        if spec["storage"] == "object":
            return np.dtype(object)
        return pd.StringDtype(spec["storage"], na_value=pd.NA if spec["na"] == "NA" else np.nan)
    if kind == "masked":
        return pd.api.types.pandas_dtype(spec["dtype"])
    if kind == "numeric":
        return np.dtype(spec["dtype"])
    raise FormatError(f"unknown column kind {kind!r} in a native schema")


def native_attrs(
    kind: str,
    axes: tuple[str, ...],
    transforms: dict[str, Transform],
    schema: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "encoding-type": f"spatialflow:{kind}",
        "version": LAYOUT_VERSION,
        "axes": list(axes),
        "coordinateTransformations": write_transforms(transforms, axes),
        "schema": schema,
        **extra,
    }


# --- encoding values ---------------------------------------------------------------------
def _code_dtype(n_categories: int) -> np.dtype:
    for t in (np.int8, np.int16, np.int32):
        if n_categories <= np.iinfo(t).max:
            return np.dtype(t)
    return np.dtype(np.int64)


def encode(values: Any, spec: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """The arrays (``""`` = values, ``"mask"`` = nulls) that store ``values`` of ``spec``."""
    kind = spec["kind"]
    dtype = pandas_dtype(spec)
    if kind == "categorical":
        codes = pd.Categorical(values, dtype=dtype).codes
        return {"": codes.astype(_code_dtype(len(dtype.categories)))}
    if kind == "numeric":
        return {"": np.asarray(values, dtype=dtype)}
    if kind == "masked":
        arr = pd.array(values, dtype=dtype)
        mask = np.asarray(arr.isna())
        return {
            "": arr.to_numpy(dtype=dtype.numpy_dtype, na_value=0),
            "mask": mask.astype(np.uint8),
        }
    obj = np.asarray(values, dtype=object)
    mask = np.asarray(pd.isna(obj), dtype=bool)
    bad = [v for v in obj[~mask][:1000] if not isinstance(v, str)]
    if bad:
        raise FormatError(
            f"{where}: holds non-string values such as {bad[0]!r} ({type(bad[0]).__name__}); "
            "cast the column to str or category first"
        )
    text = obj.copy()
    text[mask] = ""
    return {"": text, "mask": mask.astype(np.uint8)}


def decode(arrays: dict[str, np.ndarray], spec: dict[str, Any]) -> Any:
    """The values (numpy or pandas array) stored as ``arrays`` for ``spec``."""
    kind = spec["kind"]
    dtype = pandas_dtype(spec)
    raw = arrays[""]
    if kind == "categorical":
        return pd.Categorical.from_codes(np.asarray(raw, dtype=np.int64), dtype=dtype)
    if kind == "numeric":
        return np.asarray(raw, dtype=dtype)
    mask = np.asarray(arrays["mask"], dtype=bool)
    if kind == "masked":
        out = pd.array(np.asarray(raw, dtype=dtype.numpy_dtype), dtype=dtype)
        out[mask] = pd.NA
        return out
    obj = np.asarray(raw, dtype=object)
    obj[mask] = None
    return obj if spec["storage"] == "object" else pd.array(obj, dtype=dtype)


# --- writing one partition ---------------------------------------------------------------
def _put(group: zarr.Group, name: str, values: np.ndarray) -> None:
    n = values.shape[0]
    chunks = (max(1, min(n, CHUNK_ROWS)), *values.shape[1:])
    if values.dtype == object:
        arr = group.create_array(
            name, shape=values.shape, chunks=chunks, dtype=str, config=_ALL_CHUNKS
        )
    else:
        arr = group.create_array(
            name,
            shape=values.shape,
            chunks=chunks,
            dtype=values.dtype,
            fill_value=0,
            config=_ALL_CHUNKS,
        )
    if n:
        arr[...] = values


def _put_encoded(group: zarr.Group, name: str, values: Any, spec: dict, where: str) -> None:
    for suffix, arr in encode(values, spec, where).items():
        _put(group, f"{name}_{suffix}" if suffix else name, arr)


def column_array(k: int) -> str:
    return f"c{k}"


def write_frame_partition(
    store: Any,
    path: str,
    k: int,
    df: pd.DataFrame,
    schema: dict[str, Any],
    geometry: str | None,
    axes: tuple[str, ...],
) -> dict[str, Any]:
    """Write partition ``k`` of a frame into ``store`` at ``path``; return its rows and bounds."""
    root = zarr.open_group(store, path=path, mode="r+", zarr_format=3)
    g = root.create_group(partition_path(k))
    where = f"{path}/{partition_path(k)}"
    for i, col in enumerate(schema["columns"]):
        _put_encoded(g, column_array(i), df[col["name"]], col, f"{where}: column {col['name']!r}")
    _put_encoded(g, INDEX, df.index, schema["index"], f"{where}: index")
    if geometry is None:
        coords = df[list(axes)].to_numpy(dtype=np.float64)
        lo, hi = coords, coords
    else:
        lo, hi = _write_geometry(g, df, geometry)
    if len(df):
        bounds = np.concatenate([np.nanmin(lo, axis=0), np.nanmax(hi, axis=0)]).tolist()
    else:  # JSON has no NaN: an empty partition has no bounds (read back as NaN)
        bounds = [None] * (2 * len(axes))
    return {"k": k, "rows": len(df), "bounds": bounds}


def _write_geometry(g: zarr.Group, gdf: Any, geometry: str) -> tuple[np.ndarray, np.ndarray]:
    import shapely

    geoms = gdf.geometry.values
    if geometry == "circles":
        xy = shapely.get_coordinates(geoms) if len(gdf) else np.empty((0, 2))
        _put(g, "g_x", xy[:, 0].copy())
        _put(g, "g_y", xy[:, 1].copy())
        r = gdf["radius"].to_numpy(dtype=np.float64)[:, None]
        return xy - r, xy + r
    is_multi = shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOLYGON
    as_multi = np.asarray(geoms, dtype=object).copy()
    if (~is_multi).any():  # each polygon becomes a one-part multipolygon (shape (n, 1))
        as_multi[~is_multi] = shapely.multipolygons(as_multi[~is_multi][:, None])
    if len(gdf):
        _, coords, (ring_off, part_off, geom_off) = shapely.to_ragged_array(as_multi)
    else:
        coords = np.empty((0, 2))
        ring_off = part_off = geom_off = np.zeros(1, np.int64)
    _put(g, "g_coords", np.ascontiguousarray(coords[:, :2], dtype=np.float64))
    _put(g, "g_ring_offsets", np.asarray(ring_off, dtype=np.int64))
    _put(g, "g_part_offsets", np.asarray(part_off, dtype=np.int64))
    _put(g, "g_geom_offsets", np.asarray(geom_off, dtype=np.int64))
    _put(g, "g_is_multi", is_multi.astype(np.uint8))
    b = shapely.bounds(geoms) if len(gdf) else np.empty((0, 4))
    return b[:, :2], b[:, 2:]


# --- reading -------------------------------------------------------------------------------
def _meta(schema: dict[str, Any], geometry: str | None) -> pd.DataFrame:
    cols = {c["name"]: pd.Series([], dtype=pandas_dtype(c)) for c in schema["columns"]}
    idx = schema["index"]
    index = pd.Index(pd.Series([], dtype=pandas_dtype(idx)), name=idx["name"])
    df = pd.DataFrame(cols, index=index)
    if geometry is not None:
        import geopandas as gpd

        df = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries([], index=df.index, crs=None))
    return df


def _read_encoded(g: zarr.Group, name: str, spec: dict[str, Any]) -> Any:
    arrays = {"": g[name][...]}
    if spec["kind"] in ("masked", "string"):
        arrays["mask"] = g[f"{name}_mask"][...]
    return decode(arrays, spec)


def read_frame_partition(
    store: Any,
    path: str,
    k: int,
    schema: dict[str, Any],
    geometry: str | None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Partition ``k`` of the frame at ``path`` (only ``columns`` if given)."""
    where = f"{path}/{partition_path(k)}"
    try:
        g = zarr.open_group(store, path=where, mode="r", zarr_format=3)
        cols: dict[str, Any] = {}
        for i, col in enumerate(schema["columns"]):
            if columns is None or col["name"] in columns:
                cols[col["name"]] = _read_encoded(g, column_array(i), col)
        idx = schema["index"]
        index = pd.Index(_read_encoded(g, INDEX, idx), name=idx["name"])
        geoms = _read_geometry(g, geometry) if geometry is not None else None
    except (KeyError, FileNotFoundError) as e:
        raise FormatError(f"{where}: a stored array is missing ({e}); the store is damaged") from e
    df = pd.DataFrame(cols, index=index)
    if geoms is None:
        return df if columns is None else df[list(columns)]
    import geopandas as gpd

    return gpd.GeoDataFrame(df, geometry=geoms, crs=None)


def _read_geometry(g: zarr.Group, geometry: str) -> np.ndarray:
    import shapely

    if geometry == "circles":
        return shapely.points(g["g_x"][...], g["g_y"][...])
    offsets = (g["g_ring_offsets"][...], g["g_part_offsets"][...], g["g_geom_offsets"][...])
    if len(offsets[2]) <= 1:
        return np.empty(0, dtype=object)
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.MULTIPOLYGON, g["g_coords"][...], offsets
    )
    single = g["g_is_multi"][...] == 0
    if single.any():
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms


def read_native_frame(
    store: Any, path: str, attrs: dict[str, Any], where: str
) -> tuple[dd.DataFrame, np.ndarray | None]:
    """The partitioned frame stored at ``path`` and its partition bounds."""
    if attrs.get("version") != LAYOUT_VERSION:
        raise FormatError(
            f"{where}: unknown native layout version {attrs.get('version')!r} "
            f"(this spatialflow reads version {LAYOUT_VERSION}); upgrade spatialflow"
        )
    try:
        schema = attrs["schema"]
        parts = attrs["partitions"]
        rows, bounds, parts_path = parts["rows"], parts["bounds"], f"{path}/{parts['group']}"
    except (KeyError, TypeError) as e:
        raise FormatError(
            f"{where}: native element metadata lacks {e}; the write did not finish"
        ) from e
    geometry = attrs.get("geometry")
    try:
        meta = _meta(schema, geometry)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: malformed schema ({e})") from e
    n = len(rows)
    with exact_dtypes():
        if n == 0:
            return dd.from_pandas(meta, npartitions=1), None
        ddf = dd.from_map(
            read_frame_partition,
            [store] * n,
            [parts_path] * n,
            list(range(n)),
            [schema] * n,
            [geometry] * n,
            meta=meta,
            enforce_metadata=False,
            label="read-native",
        )
    b = np.asarray(bounds, dtype=np.float64)
    return ddf, b


def map_in_threads(fn: Callable[[int], Any], ks: Sequence[int]) -> list[Any]:
    """``[fn(k) for k in ks]``, several at once (zarr and the codecs release the GIL)."""
    if len(ks) <= 1:
        return [fn(k) for k in ks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, len(ks))) as pool:
        return list(pool.map(fn, ks))


class NativeFrames(FrameSource):
    """The partitions of a native-layout shapes element, several read in one task (no rows
    are skipped for a box: the geometry is stored decoded, as ragged coordinates)."""

    def __init__(
        self, store: Any, parts_path: str, schema: dict[str, Any], geometry: str, rows: list[int]
    ) -> None:
        self.store = store
        self.parts_path = parts_path
        self.schema = schema
        self.geometry = geometry
        self._rows = list(rows)

    @property
    def npartitions(self) -> int:
        return len(self._rows)

    def rows(self, k: int) -> int | None:
        return self._rows[k]

    def read_frame(
        self, ks: Sequence[int], bbox: tuple[float, float, float, float] | None = None
    ) -> Any:
        frames = map_in_threads(
            lambda k: read_frame_partition(
                self.store, self.parts_path, k, self.schema, self.geometry
            ),
            list(ks),
        )
        return pd.concat(frames) if len(frames) > 1 else frames[0]
