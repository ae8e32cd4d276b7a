"""The SpatialData 0.8 zarr layout (container "0.2", zarr v3), and reading the legacy "0.1" (v2).

Everything here follows what spatialdata 0.8 itself writes and reads (see FORMAT.md): rasters as
OME-Zarr multiscales with ``ome.version == "0.5-dev-spatialdata"``, points as a dask parquet
directory, shapes as one GeoParquet file (WKB), tables in the AnnData zarr encoding, and the
root's consolidated metadata kept in sync.

Raster and table *nodes* are written through the zarr API onto any zarr store, so the native
Icechunk layout (io/native.py, jobs/) reuses :func:`create_raster_nodes` and
:func:`write_table`; parquet parts only exist in a plain directory or object store.

Reading is lazy: rasters become dask arrays over the zarr arrays, points a dask DataFrame with
one partition per parquet part (bounds taken from the parquet statistics), shapes one partition
per row group. Categories of the feature column are read from the parquet dictionaries (one
column, once) so the feature is a *known* categorical, as the element model requires.
"""

from __future__ import annotations

import contextlib
import re
import uuid
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
from spatialflow.elements import KINDS, Image, Labels, Points, RasterElement, Shapes, Table
from spatialflow.elements.base import check_name
from spatialflow.errors import FormatError, SpatialFlowError
from spatialflow.io.location import Location
from spatialflow.transforms import Transform
from spatialflow.transforms.ngff import from_spatialdata_dict, to_spatialdata_dict

__all__ = [
    "RASTER_OME_VERSION",
    "create_raster_nodes",
    "read_spatialdata",
    "read_table_group",
    "write_spatialdata",
    "write_table",
]

CONTAINER_VERSION = "0.2"
LEGACY_CONTAINER_VERSION = "0.1"
RASTER_OME_VERSION = "0.5-dev-spatialdata"
LEGACY_RASTER_VERSION = "0.4-dev-spatialdata"
RASTER_ATTRS_VERSION = "0.3"
POINTS_VERSION = "0.2"
SHAPES_VERSION = "0.3"
TABLE_VERSION = "0.2"
_TMP_PREFIX = "__spatialflow_tmp_"


class _Quiet:
    """Silence zarr's warnings about parquet directories and consolidated metadata."""

    def __enter__(self) -> None:
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="zarr.*")

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


# =========================================================================================
# reading
# =========================================================================================
def read_spatialdata(loc: Location, legacy: bool = False) -> Dataset:
    """Open a SpatialData store lazily (metadata only)."""
    fmt = 2 if legacy else 3
    meta_file = ".zattrs" if legacy else "zarr.json"
    root_meta = loc.read_json(meta_file) if loc.exists(meta_file) else {}
    attrs = root_meta if legacy else root_meta.get("attributes", {})
    sd_attrs = attrs.get("spatialdata_attrs")
    expected = LEGACY_CONTAINER_VERSION if legacy else CONTAINER_VERSION
    if not isinstance(sd_attrs, dict) or "version" not in sd_attrs:
        if legacy and not sd_attrs:
            sd_attrs = {"version": LEGACY_CONTAINER_VERSION}
        else:
            raise FormatError(
                f"{loc.url}: the root group has no 'spatialdata_attrs' with a 'version'; "
                "this is not a SpatialData store (or it was written by spatialdata < 0.2)"
            )
    if str(sd_attrs["version"]) != expected:
        raise FormatError(
            f"{loc.url}: unknown SpatialData container version {sd_attrs['version']!r} for a zarr "
            f"v{fmt} store (expected {expected!r})"
        )
    with _Quiet():
        try:
            root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=fmt)
        except Exception as e:  # zarr raises many kinds here
            raise FormatError(f"{loc.url}: cannot open the zarr root group ({e})") from e
        ds = Dataset()
        for kind in KINDS:
            if kind not in root:
                continue
            kind_group = root[kind]
            for name in sorted(kind_group.group_keys()):
                if name.startswith(_TMP_PREFIX):
                    continue  # an unfinished write; never an element
                path = f"{kind}/{name}"
                try:
                    check_name(name, kind[:-1])
                except SpatialFlowError as e:
                    raise FormatError(f"{loc.url}/{path}: {e}") from e
                el = _read_element(loc, kind, path, kind_group[name], legacy)
                getattr(ds, kind)[name] = el
    return ds


def _read_element(loc: Location, kind: str, path: str, group: zarr.Group, legacy: bool) -> Any:
    where = f"{loc.url}/{path}"
    try:
        if kind in ("images", "labels"):
            return read_raster_group(group, kind, where, legacy)
        if kind == "points":
            return _read_points(loc, path, group, where)
        if kind == "shapes":
            return _read_shapes(loc, path, group, where)
        return read_table_group(group, where)
    except FormatError:
        raise
    except SpatialFlowError as e:
        raise FormatError(f"{where}: {e}") from e


def _transforms(entries: Any, where: str) -> dict[str, Transform]:
    if entries is None:
        raise FormatError(f"{where}: no coordinateTransformations")
    if not isinstance(entries, list):
        raise FormatError(f"{where}: coordinateTransformations must be a list")
    out: dict[str, Transform] = {}
    for entry in entries:
        try:
            cs, t = from_spatialdata_dict(entry)
        except SpatialFlowError as e:
            raise FormatError(f"{where}: {e}") from e
        out[cs] = t
    return out


def read_raster_group(
    group: zarr.Group, kind: str, where: str, legacy: bool = False
) -> RasterElement:
    attrs = group.attrs.asdict()
    if legacy:
        ome = attrs
        version_holder = (attrs.get("multiscales") or [{}])[0]
        expected = LEGACY_RASTER_VERSION
    else:
        ome = attrs.get("ome")
        if not isinstance(ome, dict):
            raise FormatError(f"{where}: not a raster element (no 'ome' attributes)")
        version_holder = ome
        expected = RASTER_OME_VERSION
    version = version_holder.get("version")
    if version != expected:
        raise FormatError(f"{where}: unknown OME-Zarr version {version!r} (expected {expected!r})")
    multiscales = ome.get("multiscales")
    if not multiscales:
        raise FormatError(f"{where}: not a raster element (no multiscales)")
    ms = multiscales[0]
    try:
        dims = tuple(a["name"] if isinstance(a, dict) else a for a in ms["axes"])
        paths = [d["path"] for d in ms["datasets"]]
    except (KeyError, TypeError) as e:
        raise FormatError(f"{where}: malformed multiscales metadata ({e})") from e
    levels = {}
    for k, p in enumerate(paths):
        if p not in group:
            raise FormatError(f"{where}: scale array {p!r} is missing")
        arr = da.from_zarr(group[p])
        if arr.ndim != len(dims):
            raise FormatError(f"{where}/{p}: {arr.ndim} dims but axes {dims}")
        levels[f"s{k}"] = xr.Dataset({"image": xr.DataArray(arr, dims=dims)})
    tree = xr.DataTree.from_dict(levels)
    transforms = _transforms(ms.get("coordinateTransformations"), where)
    if kind == "images":
        channels = None
        omero = ome.get("omero") or {}
        if omero.get("channels"):
            channels = [c.get("label", k) for k, c in enumerate(omero["channels"])]
        return Image(tree, transforms=transforms, channel_names=channels)
    return Labels(tree, transforms=transforms)


def _parts(loc: Location, directory: str) -> list[str]:
    try:
        files = [f for f in loc.fs.ls(directory, detail=False) if f.endswith(".parquet")]
    except FileNotFoundError as e:
        raise FormatError(f"{directory}: the parquet directory is missing") from e

    def key(f: str) -> tuple[int, str]:
        m = re.search(r"(\d+)\.parquet$", f)
        return (int(m.group(1)) if m else -1, f)

    return sorted(files, key=key)


def _open_parquet(fs: Any, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except (OSError, pa.ArrowInvalid) as e:
        raise FormatError(f"{path}: unreadable parquet file ({e})") from e


def _read_parquet_part(
    fs: Any, path: str, categories: dict, columns: list[str] | None = None
) -> pd.DataFrame:
    """One parquet part as pandas (``columns``: Dask's column projection, pushed down)."""
    if columns is not None:
        columns = list(columns)
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=columns)
    except (OSError, pa.ArrowInvalid) as e:
        raise FormatError(f"{path}: unreadable parquet file ({e})") from e
    df = table.to_pandas()
    if "__null_dask_index__" in df.columns:  # dask's name for an unnamed index
        df = df.set_index("__null_dask_index__")
    if df.index.name == "__null_dask_index__":
        df.index.name = None
    for col, cats in categories.items():
        if col in df.columns:
            df[col] = pd.Categorical(df[col].astype(object), categories=cats)
    return df if columns is None else df[columns]


def _read_points(loc: Location, path: str, group: zarr.Group, where: str) -> Points:
    attrs = group.attrs.asdict()
    if attrs.get("encoding-type") != "ngff:points":
        raise FormatError(
            f"{where}: not a points element (encoding-type {attrs.get('encoding-type')!r})"
        )
    sd_attrs = attrs.get("spatialdata_attrs", {})
    if str(sd_attrs.get("version")) != POINTS_VERSION:
        raise FormatError(f"{where}: unknown points format version {sd_attrs.get('version')!r}")
    files = _parts(loc, loc.join(path, "points.parquet"))
    if not files:
        raise FormatError(f"{where}: points.parquet holds no parquet parts")
    feature_key = sd_attrs.get("feature_key")
    instance_key = sd_attrs.get("instance_key")
    first = _open_parquet(loc.fs, files[0])
    schema = first.schema_arrow
    dict_cols = [f.name for f in schema if pa.types.is_dictionary(f.type)]
    categories = _dictionary_values(loc.fs, files, dict_cols)
    meta = _read_parquet_part(loc.fs, files[0], categories).iloc[:0]
    _check_point_columns(meta, where)
    ddf = dd.from_map(
        _read_parquet_part,
        [loc.fs] * len(files),
        files,
        [categories] * len(files),
        meta=meta,
        enforce_metadata=False,
        label="read-points-parquet",
    )
    bounds = _parquet_bounds(loc.fs, files, ("x", "y", "z") if "z" in meta.columns else ("x", "y"))
    return Points(
        ddf,
        feature_key=feature_key,
        instance_key=instance_key,
        transforms=_transforms(attrs.get("coordinateTransformations"), where),
        partition_bounds=bounds,
    )


def _check_point_columns(meta: pd.DataFrame, where: str) -> None:
    for col in ("x", "y", "z"):
        if col in meta.columns and not pd.api.types.is_numeric_dtype(meta[col].dtype):
            raise FormatError(
                f"{where}: column {col!r} has dtype {meta[col].dtype}; coordinates must be numeric"
            )


def _dictionary_values(fs: Any, files: list[str], columns: list[str]) -> dict[str, list]:
    if not columns:
        return {}

    def one(path: str) -> dict[str, list]:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=columns)
        out = {}
        for c in columns:
            seen: dict[Any, None] = {}
            for chunk in table.column(c).chunks:
                for v in chunk.dictionary.to_pylist():
                    seen.setdefault(v, None)
            out[c] = list(seen)
        return out

    merged: dict[str, dict[Any, None]] = {c: {} for c in columns}
    for part in dask.compute(*[dask.delayed(one)(f) for f in files], scheduler="threads"):
        for c, values in part.items():
            for v in values:
                merged[c].setdefault(v, None)
    return {c: list(v) for c, v in merged.items()}


def _parquet_bounds(fs: Any, files: list[str], axes: tuple[str, ...]) -> np.ndarray | None:
    out = []
    for path in files:
        md = _open_parquet(fs, path).metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        lo = np.full(len(axes), np.inf)
        hi = np.full(len(axes), -np.inf)
        for rg in range(md.num_row_groups):
            row_group = md.row_group(rg)
            if row_group.num_rows == 0:
                continue
            for k, a in enumerate(axes):
                if a not in names:
                    return None
                st = row_group.column(names.index(a)).statistics
                if st is None or not st.has_min_max:
                    return None
                lo[k] = min(lo[k], float(st.min))
                hi[k] = max(hi[k], float(st.max))
        if not np.all(np.isfinite(lo)):
            lo[:] = np.nan
            hi[:] = np.nan
        out.append(np.concatenate([lo, hi]))
    return np.vstack(out)


def _read_shapes_row_group(fs: Any, path: str, rg: int, offset: int) -> Any:
    import geopandas as gpd
    import shapely

    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        table = pf.read_row_group(rg)
        pandas_meta = pf.schema_arrow.pandas_metadata or {}
    geo = table.column("geometry").to_numpy(zero_copy_only=False)
    df = table.drop(["geometry"]).to_pandas()
    for ix in pandas_meta.get("index_columns", []):
        if isinstance(ix, dict) and ix.get("kind") == "range":
            step = int(ix.get("step", 1))
            start = int(ix.get("start", 0)) + offset * step
            df.index = pd.RangeIndex(start, start + len(df) * step, step, name=ix.get("name"))
    if df.index.name == "__index_level_0__":
        df.index.name = None
    return gpd.GeoDataFrame(df, geometry=shapely.from_wkb(geo), crs=None)


def _read_shapes(loc: Location, path: str, group: zarr.Group, where: str) -> Shapes:
    import json as _json

    attrs = group.attrs.asdict()
    if attrs.get("encoding-type") != "ngff:shapes":
        raise FormatError(
            f"{where}: not a shapes element (encoding-type {attrs.get('encoding-type')!r})"
        )
    version = str(attrs.get("spatialdata_attrs", {}).get("version"))
    if version not in ("0.2", SHAPES_VERSION):
        raise FormatError(f"{where}: unknown shapes format version {version!r}")
    file = loc.join(path, "shapes.parquet")
    if not loc.fs.exists(file):
        raise FormatError(f"{where}: shapes.parquet is missing")
    pf = _open_parquet(loc.fs, file)
    geo = _json.loads((pf.metadata.metadata or {}).get(b"geo", b"{}") or b"{}")
    enc = geo.get("columns", {}).get("geometry", {}).get("encoding", "WKB")
    if str(enc).upper() != "WKB":
        raise FormatError(f"{where}: geometry encoding {enc!r} is not supported (only WKB)")
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    meta = _read_shapes_row_group(loc.fs, file, 0, 0).iloc[:0]
    ddf = dd.from_map(
        _read_shapes_row_group,
        [loc.fs] * len(sizes),
        [file] * len(sizes),
        list(range(len(sizes))),
        [int(o) for o in offsets],
        meta=meta,
        enforce_metadata=False,
        label="read-shapes-parquet",
    )
    return Shapes(ddf, transforms=_transforms(attrs.get("coordinateTransformations"), where))


def read_table_group(group: zarr.Group, where: str) -> Table:
    import anndata as ad

    attrs = group.attrs.asdict()
    if attrs.get("encoding-type") != "anndata":
        raise FormatError(f"{where}: not a table (encoding-type {attrs.get('encoding-type')!r})")
    try:
        adata = ad.io.read_elem(group)
    except Exception as e:  # anndata raises assorted errors for broken encodings
        raise FormatError(f"{where}: unreadable AnnData ({e})") from e
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


# =========================================================================================
# writing
# =========================================================================================
def write_spatialdata(ds: Dataset, loc: Location, overwrite: bool = False) -> None:
    """Write ``ds`` in the SpatialData 0.8 layout (each element under a temporary name first)."""
    if loc.exists() and loc.fs.ls(loc.path) and not overwrite:
        raise FormatError(
            f"{loc.url}: already exists and is not empty; pass overwrite=True or choose a new path"
        )
    with _Quiet():
        store = loc.zarr_store()
        root = zarr.open_group(store, mode="a", zarr_format=3)
        if loc.exists("zarr.json"):
            _drop_consolidated(loc)
        root.attrs.update(
            {
                "spatialdata_attrs": {
                    "version": CONTAINER_VERSION,
                    "spatialdata_software_version": f"spatialflow-{_version()}",
                }
            }
        )
        for kind in KINDS:
            elements = getattr(ds, kind)
            if not len(elements):
                continue
            kind_group = root.require_group(kind)
            for name, el in elements.items():
                _write_element_atomically(loc, kind_group, kind, name, el)
            if kind == "labels":
                names = sorted(
                    set(kind_group.attrs.get("ome", {}).get("labels", [])) | set(elements)
                )
                kind_group.attrs.update({"ome": {"labels": names}})
        zarr.consolidate_metadata(store)


def _version() -> str:
    from spatialflow import __version__

    return __version__


def _drop_consolidated(loc: Location) -> None:
    meta = loc.read_json("zarr.json")
    if "consolidated_metadata" in meta:
        meta.pop("consolidated_metadata")
        import json

        with loc.fs.open(loc.join("zarr.json"), "w") as f:
            f.write(json.dumps(meta))


def _write_element_atomically(
    loc: Location, kind_group: zarr.Group, kind: str, name: str, el: Any
) -> None:
    tmp = f"{_TMP_PREFIX}{name}_{uuid.uuid4().hex[:8]}"
    final = loc.join(kind, name)
    tmp_path = loc.join(kind, tmp)
    try:
        group = kind_group.create_group(tmp)
        if kind in ("images", "labels"):
            pairs = create_raster_nodes(group, el, name)
            da.store([s for s, _ in pairs], [t for _, t in pairs], lock=False)
        elif kind == "points":
            _write_points(loc, group, tmp_path, el)
        elif kind == "shapes":
            _write_shapes(loc, group, tmp_path, el)
        else:
            write_table(kind_group, tmp, el)
    except BaseException:
        with contextlib.suppress(Exception):
            loc.fs.rm(tmp_path, recursive=True)
        raise
    if loc.fs.exists(final):
        loc.fs.rm(final, recursive=True)
    loc.fs.mv(tmp_path, final, recursive=True)


def raster_attrs(el: RasterElement, name: str) -> dict[str, Any]:
    """The group attributes spatialdata 0.8 writes for a raster element."""
    dims = el.dims
    datasets = []
    for k in range(el.n_scales):
        factors = [
            1.0 if d == "c" else el.shape[i] / el.scale(k).shape[i] for i, d in enumerate(dims)
        ]
        datasets.append(
            {
                "path": f"s{k}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": factors},
                    {
                        "type": "translation",
                        "translation": [
                            (f - 1) / 2 if d != "c" else 0.0
                            for f, d in zip(factors, dims, strict=True)
                        ],
                    },
                ],
            }
        )
    ms: dict[str, Any] = {
        "datasets": datasets,
        "name": name,
        "axes": [{"name": d, "type": "channel" if d == "c" else "space"} for d in dims],
        "coordinateTransformations": [
            to_spatialdata_dict(t, dims, cs) for cs, t in el.transforms.items()
        ],
    }
    ome: dict[str, Any] = {"version": RASTER_OME_VERSION, "multiscales": [ms]}
    if isinstance(el, Image):
        ome["omero"] = {"channels": [{"label": _json_scalar(c)} for c in el.channel_names]}
    else:
        ome["image-label"] = {"version": "0.5"}
    return {"ome": ome, "spatialdata_attrs": {"version": RASTER_ATTRS_VERSION}}


def _json_scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def regular_chunks(arr: da.Array) -> da.Array:
    """``arr`` rechunked so every chunk but the last per dim has the first chunk's size (zarr
    chunk grids are regular; writers must align to them)."""
    target = tuple(c[0] for c in arr.chunks)
    ok = all(all(x == c[0] for x in c[:-1]) and c[-1] <= c[0] for c in arr.chunks)
    return arr if ok else arr.rechunk(target)


def create_raster_nodes(
    group: zarr.Group, el: RasterElement, name: str
) -> list[tuple[da.Array, zarr.Array]]:
    """Create the multiscale arrays and attrs in ``group``; return (source, target) pairs to
    store (chunks aligned with the zarr chunks)."""
    group.attrs.update(raster_attrs(el, name))
    pairs = []
    for k in range(el.n_scales):
        src = regular_chunks(el.scale(k).data)
        arr = group.create_array(
            f"s{k}",
            shape=src.shape,
            chunks=tuple(c[0] for c in src.chunks),
            dtype=src.dtype,
            dimension_names=list(el.dims),
            fill_value=0,
        )
        pairs.append((src, arr))
    return pairs


def _table_attrs(table: Table) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "spatialdata-encoding-type": "ngff:regions_table",
        "version": TABLE_VERSION,
    }
    if table.region:
        region = table.data.uns["spatialdata_attrs"]["region"]
        attrs.update(
            {"region": region, "region_key": table.region_key, "instance_key": table.instance_key}
        )
    return attrs


def write_table(parent: zarr.Group, name: str, table: Table) -> None:
    """Write a table (AnnData zarr encoding + spatialdata attrs) as ``parent[name]``."""
    import anndata as ad

    adata = table.data
    if isinstance(adata.X, da.Array):  # a dask X written through a fork is silently lost
        adata = adata.copy()
        adata.X = adata.X.compute()
    ad.io.write_elem(parent, name, adata)
    parent[name].attrs.update(_table_attrs(table))


def _points_attrs(el: Points) -> dict[str, Any]:
    sd_attrs: dict[str, Any] = {"version": POINTS_VERSION}
    if el.feature_key:
        sd_attrs["feature_key"] = el.feature_key
    if el.instance_key:
        sd_attrs["instance_key"] = el.instance_key
    return {
        "encoding-type": "ngff:points",
        "axes": list(el.axes),
        "coordinateTransformations": [
            to_spatialdata_dict(t, el.axes, cs) for cs, t in el.transforms.items()
        ],
        "spatialdata_attrs": sd_attrs,
    }


def _write_points(loc: Location, group: zarr.Group, path: str, el: Points) -> None:
    group.attrs.update(_points_attrs(el))
    target = f"{path}/points.parquet"
    url = target if loc.is_local else f"{loc.protocol}://{target}"
    el.data.to_parquet(url, storage_options=loc.storage_options or None, write_index=True)


def _shapes_attrs(el: Shapes) -> dict[str, Any]:
    return {
        "encoding-type": "ngff:shapes",
        "axes": ["x", "y"],
        "coordinateTransformations": [
            to_spatialdata_dict(t, ("x", "y"), cs) for cs, t in el.transforms.items()
        ],
        "spatialdata_attrs": {"version": SHAPES_VERSION},
    }


def _write_shapes(loc: Location, group: zarr.Group, path: str, el: Shapes) -> None:
    group.attrs.update(_shapes_attrs(el))
    gdf = el.data.compute()
    with loc.fs.open(f"{path}/shapes.parquet", "wb") as f:
        gdf.to_parquet(f, geometry_encoding="WKB")
