"""Reading the SpatialData zarr layout: container "0.2" (zarr v3) and the legacy "0.1" (zarr v2).

Everything here follows what spatialdata 0.8 itself writes and reads (see FORMAT.md): rasters as
OME-Zarr multiscales, points as a dask parquet directory, shapes as one GeoParquet file (WKB or
geoarrow; the legacy shapes format 0.1 as ragged zarr arrays), tables in the AnnData zarr
encoding. Writing lives in io/sdwriter.py.

Reading is lazy and touches metadata only, with one exception: the categories of dictionary
(categorical) columns of points are read from the parquet dictionaries of every part (those
columns only, in parallel), so the feature column is a *known* categorical with the categories
in the order they were written, as the element model requires. Rasters become dask arrays over
the zarr arrays, points a dask DataFrame with one partition per parquet row group (bounds from
the parquet statistics, so queries can skip row groups; the writer bounds row groups at 64Ki
points), shapes one partition per row group.

Versions: every version string spatialdata 0.8 knows is accepted, anything else is a
FormatError naming the path and the version: container "0.2" (v3) / "0.1" (v2); raster
``ome.version`` "0.5-dev-spatialdata" (v3) and multiscales "0.4-dev-spatialdata" or "0.4" (v2);
points "0.2"/"0.1"; shapes "0.3"/"0.2"/"0.1"; tables "0.2"/"0.1".

Dtypes: spatialdata reads points with ``dask.dataframe.read_parquet`` (dask's string
conversion applies) and shapes with geopandas (no conversion); this reader does the same, so a
Dataset read here converts to exactly what ``spatialdata.read_zarr`` returns.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xarray as xr
import zarr

from spatialflow.dataset import Dataset
from spatialflow.elements import KINDS
from spatialflow.elements.base import check_name
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement, scale_key
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import FormatError, SpatialFlowError
from spatialflow.io.columns import ParquetRowGroups, points_frame, with_categories
from spatialflow.io.geoparquet import GeoParquetRowGroups, geopandas_frame, read_shapes_row_group
from spatialflow.io.guards import (
    check_chunk_count,
    check_links,
    damaged_metadata,
    unreadable_parquet,
)
from spatialflow.io.links import apply_links_attrs
from spatialflow.io.location import Location
from spatialflow.io.native import exact_dtypes
from spatialflow.io.sdtransforms import read_transforms

__all__ = [
    "CONTAINER_VERSION",
    "RASTER_OME_VERSION",
    "TMP_PREFIX",
    "Quiet",
    "element_groups",
    "read_raster_group",
    "read_spatialdata",
    "read_table_group",
]

CONTAINER_VERSION = "0.2"
LEGACY_CONTAINER_VERSION = "0.1"
RASTER_OME_VERSION = "0.5-dev-spatialdata"
LEGACY_RASTER_VERSIONS = ("0.4-dev-spatialdata", "0.4")
RASTER_ATTRS_VERSION = "0.3"
POINTS_VERSION = "0.2"
SHAPES_VERSION = "0.3"
TABLE_VERSION = "0.2"
KNOWN_POINTS_VERSIONS = ("0.2", "0.1")
KNOWN_SHAPES_VERSIONS = ("0.3", "0.2", "0.1")
KNOWN_TABLE_VERSIONS = ("0.2", "0.1")
TMP_PREFIX = "__spatialflow_tmp_"  # an element being written; never read as an element


_MOVED_TO_SDWRITER = frozenset(
    ["create_raster_nodes", "raster_attrs", "regular_chunks", "write_spatialdata", "write_table"]
)


def __getattr__(name: str) -> Any:
    """Writing moved to io/sdwriter.py; its names stay importable from here."""
    if name in _MOVED_TO_SDWRITER:
        from spatialflow.io import sdwriter

        return getattr(sdwriter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Quiet:
    """Silence zarr's warnings about parquet directories and consolidated metadata."""

    def __enter__(self) -> None:
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr.*")

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


# --- the container -----------------------------------------------------------------------
def _container_version(loc: Location, legacy: bool) -> None:
    meta_file = ".zattrs" if legacy else "zarr.json"
    meta = loc.read_json(meta_file) if loc.exists(meta_file) else {}
    if not isinstance(meta, dict) or (
        not legacy and (meta.get("zarr_format") != 3 or meta.get("node_type") != "group")
    ):
        raise FormatError(
            f"{loc.url}: {meta_file} does not describe a zarr v{2 if legacy else 3} group "
            f"(found {str(meta)[:80]!r}); the root metadata is damaged: restore or rewrite it"
        )
    attrs = meta if legacy else meta.get("attributes", {})
    sd_attrs = attrs.get("spatialdata_attrs") if isinstance(attrs, dict) else None
    if legacy and not sd_attrs:
        return  # stores of spatialdata < 0.1 carry no version: the legacy container
    expected = LEGACY_CONTAINER_VERSION if legacy else CONTAINER_VERSION
    if not isinstance(sd_attrs, dict) or "version" not in sd_attrs:
        raise FormatError(
            f"{loc.url}: the root group ({meta_file}) has no 'spatialdata_attrs' with a "
            "'version'; this is not a SpatialData store. Write it with spatialdata >= 0.2 or "
            "spatialflow, or add spatialdata_attrs.version"
        )
    if str(sd_attrs["version"]) != expected:
        raise FormatError(
            f"{loc.url}: unknown SpatialData container version {sd_attrs['version']!r} in "
            f"{meta_file} (a zarr v{2 if legacy else 3} store must say {expected!r}); it was "
            "written by a newer or a foreign library"
        )


def read_spatialdata(loc: Location, legacy: bool = False) -> Dataset:
    """Open a SpatialData store lazily (metadata only)."""
    _container_version(loc, legacy)
    with Quiet():
        try:
            root = zarr.open_group(
                loc.zarr_store(read_only=True), mode="r", zarr_format=2 if legacy else 3
            )
        except Exception as e:  # zarr raises many kinds here
            raise FormatError(f"{loc.url}: cannot open the zarr root group ({e})") from e
        ds = Dataset()
        for kind in KINDS:
            with damaged_metadata(f"{loc.url}/{kind}", "repair or remove the broken element"):
                groups = element_groups(root, kind, loc.url)
            for name, group in groups:
                where = f"{loc.url}/{kind}/{name}"
                el = _read_element(loc, kind, f"{kind}/{name}", group, legacy)
                try:
                    getattr(ds, kind)[name] = el
                except SpatialFlowError as e:
                    raise FormatError(f"{where}: {e}") from e
        apply_links_attrs(ds, root.attrs.asdict(), loc.url)  # links, linked elements
    check_links(ds, loc.url)
    return ds


def element_groups(root: zarr.Group, kind: str, url: str) -> list[tuple[str, zarr.Group]]:
    """(name, group) of every element of ``kind``; anything else there is a FormatError."""
    if kind not in root:
        return []
    kind_group = root[kind]
    where = f"{url}/{kind}"
    if not isinstance(kind_group, zarr.Group):
        raise FormatError(f"{where}: is an array, but must be a group holding {kind} elements")
    arrays = sorted(kind_group.array_keys())
    if arrays:
        raise FormatError(
            f"{where}/{arrays[0]}: an array where a {kind[:-1]} element (a group) must be; "
            "remove it or move it out of the SpatialData store"
        )
    out = []
    for name in sorted(kind_group.group_keys()):
        if name.startswith(TMP_PREFIX):
            continue  # an unfinished write; never an element
        try:
            check_name(name, kind[:-1])
        except SpatialFlowError as e:
            raise FormatError(f"{where}/{name}: {e}; rename the group") from e
        out.append((name, kind_group[name]))
    return out


def _read_element(loc: Location, kind: str, path: str, group: zarr.Group, legacy: bool) -> Any:
    where = f"{loc.url}/{path}"
    try:
        with damaged_metadata(where):
            return _read_kind(loc, kind, path, group, legacy, where)
    except FormatError:
        raise
    except SpatialFlowError as e:
        raise FormatError(f"{where}: {e}") from e


def _read_kind(
    loc: Location, kind: str, path: str, group: zarr.Group, legacy: bool, where: str
) -> Any:
    if kind in ("images", "labels"):
        return read_raster_group(group, kind, where, legacy)
    if kind == "points":
        return _read_points(loc, path, group, where)
    if kind == "shapes":
        return _read_shapes(loc, path, group, where)
    return read_table_group(group, where)


# --- rasters -----------------------------------------------------------------------------
def _raster_ome(attrs: dict[str, Any], where: str, legacy: bool) -> dict[str, Any]:
    """The OME metadata of a raster group, its version checked."""
    if legacy:
        ms = attrs.get("multiscales")
        if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
            raise FormatError(f"{where}: not a raster element (no 'multiscales' attributes)")
        version = ms[0].get("version")
        if version not in LEGACY_RASTER_VERSIONS:
            raise FormatError(
                f"{where}: unknown OME-Zarr version {version!r} in a zarr v2 store "
                f"(expected one of {list(LEGACY_RASTER_VERSIONS)})"
            )
        return attrs
    ome = attrs.get("ome")
    if not isinstance(ome, dict):
        raise FormatError(f"{where}: not a raster element (no 'ome' attributes)")
    if ome.get("version") != RASTER_OME_VERSION:
        raise FormatError(
            f"{where}: unknown OME-Zarr version {ome.get('version')!r} "
            f"(spatialdata 0.8 writes and reads {RASTER_OME_VERSION!r})"
        )
    if not ome.get("multiscales"):
        raise FormatError(f"{where}: not a raster element (no multiscales)")
    return ome


def read_raster_group(
    group: zarr.Group, kind: str, where: str, legacy: bool = False
) -> RasterElement:
    """An Image or Labels from its OME-Zarr multiscale group."""
    ome = _raster_ome(group.attrs.asdict(), where, legacy)
    ms = ome["multiscales"][0]
    try:
        dims = tuple(a["name"] if isinstance(a, dict) else a for a in ms["axes"])
        paths = [d["path"] for d in ms["datasets"]]
    except (KeyError, TypeError) as e:
        raise FormatError(f"{where}: malformed multiscales metadata (missing {e})") from e
    for a in ms["axes"]:
        if isinstance(a, dict) and a.get("type", "space") not in ("space", "channel"):
            raise FormatError(
                f"{where}: axis {a.get('name')!r} has type {a.get('type')!r}; a SpatialData "
                "raster has 'space' axes (z, y, x) and an optional 'channel' axis (c)"
            )
    levels = {}
    for k, p in enumerate(paths):
        with damaged_metadata(f"{where}/{p}"):
            if not isinstance(p, str) or p not in group or not isinstance(group[p], zarr.Array):
                raise FormatError(f"{where}/{p}: the scale array is missing")
            check_chunk_count(group[p].shape, group[p].chunks, f"{where}/{p}")
            arr = da.from_zarr(group[p])
        if arr.ndim != len(dims):
            raise FormatError(f"{where}/{p}: {arr.ndim} dims but the axes are {dims}")
        levels[scale_key(k)] = xr.Dataset({"image": xr.DataArray(arr, dims=dims)})
    tree = xr.DataTree.from_dict(levels)
    transforms = read_transforms(ms.get("coordinateTransformations"), where)
    if kind == "labels":
        return Labels(tree, transforms=transforms)
    channels = None
    omero = ome.get("omero") or {}
    if omero.get("channels"):
        channels = [c.get("label", k) for k, c in enumerate(omero["channels"])]
    return Image(tree, transforms=transforms, channel_names=channels)


# --- points ------------------------------------------------------------------------------
def _parts(loc: Location, directory: str, where: str) -> list[str]:
    try:
        files = [f for f in loc.fs.ls(directory, detail=False) if f.endswith(".parquet")]
    except FileNotFoundError as e:
        raise FormatError(f"{where}: the parquet directory {directory} is missing") from e

    def key(f: str) -> tuple[int, str]:
        m = re.search(r"(\d+)\.parquet$", f)
        return (int(m.group(1)) if m else -1, f)

    return sorted(files, key=key)


def _open_parquet(fs: Any, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except (OSError, pa.ArrowException, ValueError) as e:
        raise unreadable_parquet(path, e, fs) from e


def _read_table(fs: Any, path: str, columns: list[str] | None = None) -> pa.Table:
    """Columns of one parquet part, decoded by one thread (callers read parts in parallel)."""
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).read(columns=columns, use_threads=False)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise unreadable_parquet(path, e, fs) from e


def _read_parquet_row_group(
    fs: Any, path: str, rg: int, categories: dict, columns: list[str] | None = None
) -> pd.DataFrame:
    """Row group ``rg`` of a parquet part: one partition (so queries prune row groups)."""
    if columns is not None:
        columns = list(columns)
    read_cols = columns
    if columns is not None:
        md = _open_parquet(fs, path).schema_arrow
        if "__null_dask_index__" in md.names:
            read_cols = [*columns, "__null_dask_index__"]
    try:
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(rg, columns=read_cols)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise unreadable_parquet(f"{path} (row group {rg})", e, fs) from e
    return points_frame(table, categories, columns)


def _row_groups(
    fs: Any, files: list[str], axes: tuple[str, ...], rows: list[int] | None = None
) -> list[tuple[str, int, np.ndarray | None]]:
    """(file, row group, bounds from the parquet statistics or None) of every row group; their
    row counts are appended to ``rows`` when given."""
    out: list[tuple[str, int, np.ndarray | None]] = []
    for path in files:
        md = _open_parquet(fs, path).metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        for rg in range(md.num_row_groups):
            row_group = md.row_group(rg)
            if rows is not None:
                rows.append(row_group.num_rows)
            box: np.ndarray | None = np.full(2 * len(axes), np.nan)
            if row_group.num_rows:
                stats = [
                    row_group.column(names.index(a)).statistics if a in names else None
                    for a in axes
                ]
                if any(st is None or not st.has_min_max for st in stats):
                    box = None
                else:
                    box = np.array(
                        [float(st.min) for st in stats] + [float(st.max) for st in stats]
                    )
            out.append((path, rg, box))
    if not out:  # an empty element: one empty partition
        out.append((files[0], 0, np.full(2 * len(axes), np.nan)))
        if rows is not None:
            rows.append(0)
    return out


def _check_version(attrs: dict[str, Any], known: tuple[str, ...], what: str, where: str) -> str:
    sd_attrs = attrs.get("spatialdata_attrs")
    version = sd_attrs.get("version") if isinstance(sd_attrs, dict) else None
    if str(version) not in known:
        raise FormatError(
            f"{where}: unknown {what} format version {version!r} in spatialdata_attrs "
            f"(spatialdata 0.8 knows {list(known)})"
        )
    return str(version)


def _check_encoding(attrs: dict[str, Any], expected: str, where: str) -> None:
    if attrs.get("encoding-type") != expected:
        raise FormatError(
            f"{where}: not a {expected.removeprefix('ngff:')} element (encoding-type "
            f"{attrs.get('encoding-type')!r}, expected {expected!r})"
        )


def _read_points(loc: Location, path: str, group: zarr.Group, where: str) -> Points:
    attrs = group.attrs.asdict()
    _check_encoding(attrs, "ngff:points", where)
    _check_version(attrs, KNOWN_POINTS_VERSIONS, "points", where)
    sd_attrs = attrs["spatialdata_attrs"]
    files = _parts(loc, loc.join(path, "points.parquet"), where)
    if not files:
        raise FormatError(f"{where}: points.parquet holds no parquet parts")
    schema = _open_parquet(loc.fs, files[0]).schema_arrow
    dict_cols = [f.name for f in schema if pa.types.is_dictionary(f.type)]
    categories = _stored_categories(attrs, dict_cols)
    missing = [c for c in dict_cols if c not in categories]
    categories.update(_dictionary_values(loc.fs, files, missing))
    meta = points_frame(schema.empty_table(), categories)  # from the footer: no row read
    _check_point_columns(meta, where)
    axes = ("x", "y", "z") if "z" in meta.columns else ("x", "y")
    stored = attrs.get("axes", list(axes))
    if not isinstance(stored, list) or not {"x", "y"} <= set(stored) <= set(axes):
        raise FormatError(
            f"{where}: axes {stored!r} must be a list like {list(axes)} naming coordinate "
            f"columns of the parquet data (it has {list(meta.columns)}); fix the group's axes"
        )
    rows: list[int] = []
    groups = _row_groups(loc.fs, files, axes, rows)
    ddf = dd.from_map(
        _read_parquet_row_group,
        [loc.fs] * len(groups),
        [f for f, _, _ in groups],
        [rg for _, rg, _ in groups],
        [categories] * len(groups),
        meta=meta,
        enforce_metadata=False,
        label="read-points-parquet",
    )
    bounds = [b for _, _, b in groups]
    el = Points(
        ddf,
        feature_key=sd_attrs.get("feature_key"),
        instance_key=sd_attrs.get("instance_key"),
        transforms=read_transforms(attrs.get("coordinateTransformations"), where),
        partition_bounds=None if any(b is None for b in bounds) else np.vstack(bounds),
        column_source=ParquetRowGroups(
            loc.fs, [(f, rg) for f, rg, _ in groups], categories, rows=rows
        ),
    )
    extra = attrs.get("spatialflow")
    if isinstance(extra, dict) and "points_index" in extra:  # a multiscale index
        from spatialflow.io.points_index import read_sd_index

        el.index = read_sd_index(loc, path, extra["points_index"], el, groups, categories, where)
    return el


def _stored_categories(attrs: dict[str, Any], columns: list[str]) -> dict[str, list]:
    """Categories spatialflow recorded when it wrote the element (so reading needs no pass
    over the dictionary columns); a store written by anything else has none."""
    extra = attrs.get("spatialflow")
    stored = extra.get("categories") if isinstance(extra, dict) else None
    if not isinstance(stored, dict):
        return {}
    return {c: list(v) for c, v in stored.items() if c in columns and isinstance(v, list)}


def _check_point_columns(meta: pd.DataFrame, where: str) -> None:
    for col in ("x", "y"):
        if col not in meta.columns:
            raise FormatError(f"{where}: the parquet parts have no coordinate column {col!r}")
    for col in ("x", "y", "z"):
        dtype = meta[col].dtype if col in meta.columns else None
        if dtype is not None and (
            not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        ):
            raise FormatError(
                f"{where}: column {col!r} is stored as {dtype}; coordinates must be numbers "
                "(rewrite the element with numeric x, y, z)"
            )


def _part_dictionaries(fs: Any, path: str, columns: list[str]) -> dict[str, list]:
    table = _read_table(fs, path, columns)
    out = {}
    for c in columns:
        if c not in table.column_names:
            raise FormatError(
                f"{path}: no column {c!r}, which the element's first part has; write the "
                "element again so that every part has the same columns"
            )
        seen: dict[Any, None] = {}
        last = None
        for chunk in table.column(c).chunks:  # dask writes one dictionary into every chunk
            if last is None or not chunk.dictionary.equals(last):
                last = chunk.dictionary
                seen.update(dict.fromkeys(last.to_pylist()))
        out[c] = list(seen)
    return out


def _dictionary_values(fs: Any, files: list[str], columns: list[str]) -> dict[str, list]:
    """The categories of each dictionary column: the union over all parts, in order."""
    if not columns:
        return {}
    tasks = [dask.delayed(_part_dictionaries)(fs, f, columns) for f in files]
    merged: dict[str, dict[Any, None]] = {c: {} for c in columns}
    for part in dask.compute(*tasks, scheduler="threads"):
        for c, values in part.items():
            merged[c].update(dict.fromkeys(values))
    return {c: list(v) for c, v in merged.items()}


def _read_shapes(loc: Location, path: str, group: zarr.Group, where: str) -> Shapes:
    attrs = group.attrs.asdict()
    _check_encoding(attrs, "ngff:shapes", where)
    version = _check_version(attrs, KNOWN_SHAPES_VERSIONS, "shapes", where)
    transforms = read_transforms(attrs.get("coordinateTransformations"), where)
    if version == "0.1":
        return Shapes(_read_shapes_v01(group, attrs, where), transforms=transforms)
    file = loc.join(path, "shapes.parquet")
    if not loc.fs.exists(file):
        raise FormatError(f"{where}: shapes.parquet is missing")
    pf = _open_parquet(loc.fs, file)
    try:
        geo = json.loads((pf.metadata.metadata or {}).get(b"geo", b"{}") or b"{}")
        geo["columns"]["geometry"]["encoding"]
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(
            f"{file}: not GeoParquet (no valid 'geo' metadata with a 'geometry' column)"
        ) from e
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    offsets = [int(o) for o in np.concatenate([[0], np.cumsum(sizes)])[:-1]]
    dict_cols = [f.name for f in pf.schema_arrow if pa.types.is_dictionary(f.type)]
    categories = _stored_categories(attrs, dict_cols)
    missing = [c for c in dict_cols if c not in categories]
    categories.update(_dictionary_values(loc.fs, [file], missing))  # that column only
    meta = with_categories(geopandas_frame(pf.schema_arrow.empty_table(), geo, 0), categories)
    n = len(sizes)
    with exact_dtypes():  # spatialdata reads shapes with geopandas: no string conversion
        ddf = dd.from_map(
            read_shapes_row_group,
            [loc.fs] * n,
            [file] * n,
            list(range(n)),
            offsets,
            [geo] * n,
            [categories] * n,
            meta=meta,
            enforce_metadata=False,
            label="read-shapes-parquet",
        )
    return Shapes(
        ddf,
        transforms=transforms,
        partition_bounds=_stored_bounds(attrs, n),
        frame_source=GeoParquetRowGroups(loc.fs, file, sizes, geo, categories),
    )


def _stored_bounds(attrs: dict[str, Any], n: int) -> np.ndarray | None:
    """Row-group bounds spatialflow stored with the element (None when absent or stale)."""
    extra = attrs.get("spatialflow")
    bounds = extra.get("row_group_bounds") if isinstance(extra, dict) else None
    try:
        b = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return b if b.shape == (n, 4) else None


def _read_shapes_v01(group: zarr.Group, attrs: dict[str, Any], where: str) -> Any:
    """The legacy shapes format 0.1: ragged zarr arrays (coords, offset0.., Index, radius)."""
    import dask_geopandas
    import geopandas as gpd
    import shapely

    try:
        kind = shapely.GeometryType(int(attrs["spatialdata_attrs"]["geos"]["type"]))
        coords = group["coords"][...]
        index = group["Index"][...]
        keys = sorted((k for k in group.array_keys() if k.startswith("offset")), key=_suffix)
        offsets = tuple(np.asarray(group[k][...]).ravel() for k in keys)
        if kind == shapely.GeometryType.POINT:
            geoms = shapely.from_ragged_array(kind, coords)
            gdf = gpd.GeoDataFrame({"geometry": geoms, "radius": group["radius"][...]}, index=index)
        else:
            geoms = shapely.from_ragged_array(kind, coords, offsets)
            gdf = gpd.GeoDataFrame({"geometry": geoms}, index=index)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: malformed shapes (format 0.1): {e}") from e
    with exact_dtypes():
        return dask_geopandas.from_geopandas(gdf, npartitions=1, sort=False)


def _suffix(key: str) -> int:
    digits = "".join(ch for ch in key if ch.isdigit())
    return int(digits) if digits else -1


# --- tables ------------------------------------------------------------------------------
def read_table_group(group: zarr.Group, where: str) -> Table:
    """A Table from its AnnData group, with the spatialdata region links."""
    import anndata as ad

    attrs = group.attrs.asdict()
    if attrs.get("encoding-type") != "anndata":
        raise FormatError(
            f"{where}: not a table (encoding-type {attrs.get('encoding-type')!r}, expected "
            "'anndata')"
        )
    version = attrs.get("version")
    if version is not None and str(version) not in KNOWN_TABLE_VERSIONS:
        raise FormatError(
            f"{where}: unknown table format version {version!r} (spatialdata 0.8 knows "
            f"{list(KNOWN_TABLE_VERSIONS)})"
        )
    try:
        adata = ad.io.read_elem(group)
    except Exception as e:  # anndata raises assorted errors for broken encodings
        raise FormatError(f"{where}: unreadable AnnData ({type(e).__name__}: {e})") from e
    sd_attrs = adata.uns.get("spatialdata_attrs") or {}
    region = sd_attrs.get("region", attrs.get("region"))
    if isinstance(region, np.ndarray):
        region = region.tolist()
    return Table(
        adata,
        region=region,
        region_key=sd_attrs.get("region_key", attrs.get("region_key")),
        instance_key=sd_attrs.get("instance_key", attrs.get("instance_key")),
    )
