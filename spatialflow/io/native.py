"""The native columnar layout of points and shapes, for zarr stores (above all Icechunk).

Icechunk holds zarr arrays only, so points and shapes are stored column by column::

    points/<name>/                 group; attrs: encoding-type "spatialflow:points", axes,
                                   coordinateTransformations (spatialdata dialect),
                                   spatialdata_attrs (feature_key, instance_key), schema
                                   (columns with dtypes and categories, index), partitions
                                   (rows and bounding box of each)
      p00000/<column>              1-D arrays, one group per partition; categoricals as codes
      p00000/__index__             the index
    shapes/<name>/                 the same, encoding-type "spatialflow:shapes", plus geometry:
      p00000/coords (M, 2)         polygons as ragged arrays: ring_offsets (coords per ring),
      p00000/part_offsets ...      part_offsets (rings per polygon), geom_offsets (polygons per
                                   geometry), is_multi; circles as x, y (+ the radius column)

One partition is one group written by exactly one task, so no two tasks ever write the same
chunk, and a partition's length need not be known before it is computed. That is a deliberate
refinement of DESIGN.md section 6 ("the coordinator creates every output node first"): the
coordinator creates the element group and its schema; each writing task creates the arrays of
its own partition under a path no other task uses, which Icechunk merges without conflict; the
coordinator records the partition table (rows, bounds) after merging. A partition's arrays
are written whole, in chunks of up to 1M rows.
"""

from __future__ import annotations

from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import zarr

from spatialflow.errors import FormatError
from spatialflow.transforms import Transform
from spatialflow.transforms.ngff import to_spatialdata_dict

__all__ = [
    "frame_schema",
    "native_attrs",
    "partition_path",
    "read_native_frame",
    "write_frame_partition",
]

LAYOUT_VERSION = 1
CHUNK_ROWS = 1 << 20
INDEX = "__index__"


def partition_path(k: int) -> str:
    return f"p{k:05d}"


# --- schema ------------------------------------------------------------------------------
def frame_schema(meta: pd.DataFrame, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON description of a frame's columns and index (from its empty ``_meta``)."""
    cols = []
    for name in meta.columns:
        if name in skip:
            continue
        cols.append(
            {"name": str(name), **_dtype_spec(meta[name].dtype, f"{where}: column {name!r}")}
        )
    index = {"name": meta.index.name, **_dtype_spec(meta.index.dtype, f"{where}: index")}
    return {"columns": cols, "index": index}


def _dtype_spec(dtype: Any, where: str) -> dict[str, Any]:
    if isinstance(dtype, pd.CategoricalDtype):
        cats = dtype.categories
        values = [v.item() if isinstance(v, np.generic) else v for v in cats.tolist()]
        return {
            "kind": "categorical",
            "categories": values,
            "ordered": bool(dtype.ordered),
            "categories_dtype": "str" if _is_str(cats.dtype) else str(cats.dtype),
        }
    if _is_str(dtype):
        return {"kind": "string"}
    if pd.api.types.is_bool_dtype(dtype):
        return {"kind": "numeric", "dtype": "bool"}
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return {"kind": "numeric", "dtype": np.dtype(dtype).str}
    raise FormatError(
        f"{where}: dtype {dtype} cannot be stored in the native layout "
        "(numbers, booleans, strings and categoricals can)"
    )


def _is_str(dtype: Any) -> bool:
    return pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)


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
        "coordinateTransformations": [
            to_spatialdata_dict(t, axes, cs) for cs, t in transforms.items()
        ],
        "schema": schema,
        **extra,
    }


# --- writing one partition ---------------------------------------------------------------
def _put(group: zarr.Group, name: str, values: np.ndarray) -> None:
    n = values.shape[0]
    chunks = (max(1, min(n, CHUNK_ROWS)), *values.shape[1:])
    if values.dtype == object or values.dtype.kind in "US":
        arr = group.create_array(name, shape=values.shape, chunks=chunks, dtype=str)
        if n:
            arr[...] = np.asarray(values, dtype=object).astype(str)
        return
    arr = group.create_array(
        name, shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=0
    )
    if n:
        arr[...] = values


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
    for col in schema["columns"]:
        values = df[col["name"]]
        if col["kind"] == "categorical":
            codes = pd.Categorical(values, categories=pd.Index(col["categories"])).codes
            _put(g, col["name"], np.asarray(codes, dtype=np.int32))
        elif col["kind"] == "string":
            _put(g, col["name"], values.to_numpy(dtype=object))
        else:
            _put(g, col["name"], values.to_numpy(dtype=np.dtype(col["dtype"])))
    idx = df.index.to_numpy()
    _put(g, INDEX, idx.astype(object) if schema["index"]["kind"] == "string" else idx)
    if geometry is None:
        coords = df[list(axes)].to_numpy(dtype=np.float64)
        lo, hi = coords, coords
    else:
        lo, hi = _write_geometry(g, df, geometry)
    if len(df):
        bounds = np.concatenate([np.nanmin(lo, axis=0), np.nanmax(hi, axis=0)]).tolist()
    else:
        bounds = [float("nan")] * (2 * len(axes))
    return {"k": k, "rows": len(df), "bounds": bounds}


def _write_geometry(g: zarr.Group, gdf: Any, geometry: str) -> tuple[np.ndarray, np.ndarray]:
    import shapely

    geoms = gdf.geometry.values
    if geometry == "circles":
        xy = shapely.get_coordinates(geoms) if len(gdf) else np.empty((0, 2))
        _put(g, "x", xy[:, 0].copy())
        _put(g, "y", xy[:, 1].copy())
        r = gdf["radius"].to_numpy(dtype=np.float64)[:, None]
        return xy - r, xy + r
    is_multi = shapely.get_type_id(geoms) == shapely.GeometryType.MULTIPOLYGON
    as_multi = np.asarray(geoms, dtype=object).copy()
    if (~is_multi).any():  # each polygon becomes a one-part multipolygon (shape (n, 1))
        as_multi[~is_multi] = shapely.multipolygons(as_multi[~is_multi][:, None])
    if len(gdf):
        _, coords, (ring_off, part_off, geom_off) = shapely.to_ragged_array(as_multi)
    else:
        coords, ring_off, part_off, geom_off = (
            np.empty((0, 2)),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
        )
    _put(g, "coords", np.ascontiguousarray(coords[:, :2], dtype=np.float64))
    _put(g, "ring_offsets", np.asarray(ring_off, dtype=np.int64))
    _put(g, "part_offsets", np.asarray(part_off, dtype=np.int64))
    _put(g, "geom_offsets", np.asarray(geom_off, dtype=np.int64))
    _put(g, "is_multi", is_multi.astype(np.uint8))
    b = shapely.bounds(geoms) if len(gdf) else np.empty((0, 4))
    return b[:, :2], b[:, 2:]


# --- reading -------------------------------------------------------------------------------
def _meta(schema: dict[str, Any], geometry: str | None) -> pd.DataFrame:
    cols: dict[str, Any] = {}
    for col in schema["columns"]:
        cols[col["name"]] = _empty(col)
    index = _empty(schema["index"])
    df = pd.DataFrame(cols, index=pd.Index(index, name=schema["index"]["name"]))
    if geometry is not None:
        import geopandas as gpd

        df = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries([], index=df.index, crs=None))
    return df


def _empty(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "categorical":
        cats = pd.Index(
            spec["categories"],
            dtype="str" if spec["categories_dtype"] == "str" else spec["categories_dtype"],
        )
        return pd.Categorical([], categories=cats, ordered=spec.get("ordered", False))
    if spec["kind"] == "string":
        return pd.array([], dtype="str")
    return np.empty(0, dtype=np.dtype(spec["dtype"]))


def read_frame_partition(
    store: Any,
    path: str,
    k: int,
    schema: dict[str, Any],
    geometry: str | None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    g = zarr.open_group(store, path=f"{path}/{partition_path(k)}", mode="r", zarr_format=3)
    cols: dict[str, Any] = {}
    for col in schema["columns"]:
        if columns is not None and col["name"] not in columns:
            continue
        raw = g[col["name"]][...]
        if col["kind"] == "categorical":
            meta = _empty(col)
            cols[col["name"]] = pd.Categorical.from_codes(raw, dtype=meta.dtype)
        elif col["kind"] == "string":
            cols[col["name"]] = pd.array(raw.astype(object), dtype="str")
        else:
            cols[col["name"]] = raw
    idx_raw = g[INDEX][...]
    if schema["index"]["kind"] == "string":
        index = pd.Index(
            pd.array(idx_raw.astype(object), dtype="str"), name=schema["index"]["name"]
        )
    elif schema["index"]["kind"] == "categorical":
        index = pd.CategoricalIndex(idx_raw, name=schema["index"]["name"])
    else:
        index = pd.Index(idx_raw, name=schema["index"]["name"])
    df = pd.DataFrame(cols, index=index)
    if geometry is None:
        return df if columns is None else df[list(columns)]
    import geopandas as gpd

    return gpd.GeoDataFrame(df, geometry=_read_geometry(g, geometry), crs=None)


def _read_geometry(g: zarr.Group, geometry: str) -> np.ndarray:
    import shapely

    if geometry == "circles":
        return shapely.points(g["x"][...], g["y"][...])
    offsets = (g["ring_offsets"][...], g["part_offsets"][...], g["geom_offsets"][...])
    if len(offsets[2]) <= 1:
        return np.empty(0, dtype=object)
    geoms = shapely.from_ragged_array(shapely.GeometryType.MULTIPOLYGON, g["coords"][...], offsets)
    single = g["is_multi"][...] == 0
    if single.any():
        geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms


def read_native_frame(
    store: Any, path: str, attrs: dict[str, Any], where: str
) -> tuple[dd.DataFrame, np.ndarray | None]:
    """The partitioned frame stored at ``path`` and its partition bounds."""
    try:
        schema = attrs["schema"]
        parts = attrs["partitions"]
        rows, bounds = parts["rows"], parts["bounds"]
    except (KeyError, TypeError) as e:
        raise FormatError(
            f"{where}: native element metadata lacks {e}; the write did not finish"
        ) from e
    geometry = attrs.get("geometry")
    meta = _meta(schema, geometry)
    n = len(rows)
    if n == 0:
        return dd.from_pandas(meta, npartitions=1), None
    ddf = dd.from_map(
        read_frame_partition,
        [store] * n,
        [path] * n,
        list(range(n)),
        [schema] * n,
        [geometry] * n,
        meta=meta,
        enforce_metadata=False,
        label="read-native",
    )
    b = np.asarray(bounds, dtype=np.float64)
    return ddf, b
