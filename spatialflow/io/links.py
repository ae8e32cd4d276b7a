"""The format side of links: external files opened lazily, and the link graph in root attributes.

External files (``sf.link``): CSV or Parquet points (``dask.dataframe.read_csv/read_parquet``:
one partition per block or row group, so a linked file is read in parallel and only when a
computation needs it), GeoParquet shapes (dask-geopandas), OME-TIFF images (tifffile's zarr
interface, one task per chunk, each opening the file itself so the graph pickles) and h5ad /
zarr tables (AnnData, read whole on first use). Local paths or any fsspec URL.

A source records its ``fingerprint`` when the link is made: size and mtime, or the ETag of an
object store (a directory: the total size, the latest mtime, a hash of the ETags). Reading a
source whose fingerprint changed warns; a missing file is a FormatError naming the link.

Both layouts store the graph and the sources in the root group's attributes under
``spatialflow_links``: ``{"version", "links": [annotate links], "external": {name: source}}``.
spatialdata 0.8 keeps unknown root attributes in ``SpatialData.attrs`` and writes them back,
so the key survives its round trip; linked elements have no group of their own, so spatialdata
simply does not see them. Secrets (keys, tokens, passwords) in ``storage_options`` are never
written: pass them again when reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spatialflow.elements.linked import (
    LINKABLE_KINDS,
    ExternalSource,
    is_linked,
    linked_element,
)
from spatialflow.elements.links import Link
from spatialflow.errors import FormatError, SpatialFlowError, ValidationError
from spatialflow.io.location import location
from spatialflow.io.native import exact_dtypes
from spatialflow.io.sdtransforms import read_transforms, write_transforms

if TYPE_CHECKING:
    from spatialflow.dataset import Dataset
    from spatialflow.elements.base import Element

__all__ = [
    "ATTRS_KEY",
    "apply_links_attrs",
    "fingerprint",
    "links_attrs",
    "make_linked",
    "merged_links_attrs",
    "source_json",
    "written_elements",
]

log = logging.getLogger(__name__)
ATTRS_KEY = "spatialflow_links"
ATTRS_VERSION = "0.1"
_KIND_GROUP = {"points": "points", "shapes": "shapes", "image": "images", "table": "tables"}
_SECRET_WORDS = ("key", "secret", "token", "password", "credential")
POINTS_FORMATS = ("csv", "parquet")


# --- fingerprints --------------------------------------------------------------------------
def _mtime(info: Mapping[str, Any]) -> str | None:
    for k in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        v = info.get(k)
        if v is not None:
            return v.isoformat() if hasattr(v, "isoformat") else str(v)
    return None


def fingerprint(fs: Any, path: str) -> dict[str, Any]:
    """Size and mtime (or ETag) of a file, or the totals of a directory's files."""
    info = fs.info(path)
    files = list(fs.find(path, detail=True).values()) if info["type"] == "directory" else [info]
    out: dict[str, Any] = {"size": int(sum(int(f.get("size") or 0) for f in files))}
    mtimes = [m for f in files if (m := _mtime(f)) is not None]
    if mtimes:
        out["mtime"] = max(mtimes)
    etags = [str(e) for f in files if (e := f.get("ETag") or f.get("etag")) is not None]
    if etags:
        out["etag"] = (
            etags[0] if len(etags) == 1 else hashlib.sha1("".join(etags).encode()).hexdigest()
        )
    return out


def _check_source(name: str, src: ExternalSource) -> tuple[Any, str]:
    """The source's filesystem and path; FormatError if missing, a warning if it changed."""
    loc = location(src.url, dict(src.storage_options) or None)
    loc.fs.invalidate_cache()
    if not loc.fs.exists(loc.path):
        raise FormatError(
            f"lazy link {name!r}: {src.url} does not exist (moved or deleted?); restore the "
            f"file or link {name!r} again to its new location with sf.link(ds, {name!r}, url, "
            f"kind={src.kind!r})"
        )
    now = fingerprint(loc.fs, loc.path)
    then = dict(src.fingerprint)
    changed = {k: (then[k], now.get(k)) for k in then if now.get(k) != then[k]}
    if changed:
        warnings.warn(
            f"lazy link {name!r}: {src.url} changed since the link was made "
            f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); the data "
            "read now may differ from what the link pointed to",
            UserWarning,
            stacklevel=4,
        )
    return loc.fs, loc.path


# --- making links --------------------------------------------------------------------------
def make_linked(
    name: str,
    url: str,
    kind: str,
    *,
    options: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    transforms: Mapping[str, Any] | None = None,
    fingerprint_: Mapping[str, Any] | None = None,
) -> Element:
    """A linked element over ``url`` (its fingerprint taken now unless given)."""
    if kind not in LINKABLE_KINDS:
        raise ValidationError(
            f"lazy link {name!r}: unknown kind {kind!r}; use one of {list(LINKABLE_KINDS)}"
        )
    opts = dict(options or {})
    if kind == "points":
        fmt = opts.setdefault("format", _points_format(name, str(url)))
        if fmt not in POINTS_FORMATS:
            raise ValidationError(
                f"lazy link {name!r}: points format {fmt!r} unknown; use one of "
                f"{list(POINTS_FORMATS)}"
            )
    if fingerprint_ is None:
        loc = location(url, dict(storage_options or {}) or None)
        if not loc.fs.exists(loc.path):
            raise FormatError(
                f"lazy link {name!r}: {url} does not exist; check the path or URL "
                "(and storage_options for remote files)"
            )
        fingerprint_ = fingerprint(loc.fs, loc.path)
    src = ExternalSource(kind, str(url), opts, dict(storage_options or {}), dict(fingerprint_))
    table_links = {k: opts[k] for k in ("region", "region_key", "instance_key") if k in opts}
    return linked_element(
        src, _load, transforms=transforms, name=name, table_links=table_links or None
    )


def _points_format(name: str, url: str) -> str:
    low = url.lower().rstrip("/")
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        low = low.removesuffix(suffix)
    if low.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValidationError(
        f"lazy link {name!r}: cannot tell the points format of {url}; pass format='csv' or "
        "format='parquet'"
    )


# --- loading -------------------------------------------------------------------------------
def _load(el: Any) -> Element:
    """The loader of every linked element: open its source lazily (called on first use)."""
    src: ExternalSource = el.source
    name = el.name or "?"
    _check_source(name, src)
    so = dict(src.storage_options) or None
    try:
        if src.kind == "points":
            return _load_points(el, src, so)
        if src.kind == "shapes":
            return _load_shapes(el, src, so)
        if src.kind == "image":
            return _load_image(el, src, so)
        return _load_table(el, src, so)
    except SpatialFlowError as e:
        raise FormatError(f"lazy link {name!r} ({src.url}): {e}") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(
            f"lazy link {name!r}: cannot read {src.url} as {src.kind} "
            f"({type(e).__name__}: {e}); check the file and the link's options"
        ) from e


_POINT_OPTIONS = ("format", "x", "y", "z", "feature_key", "instance_key", "categories", "blocksize")


def _load_points(el: Any, src: ExternalSource, so: dict | None) -> Element:
    import dask.dataframe as dd

    from spatialflow.elements.points import Points

    opts = dict(src.options)
    read_options = dict(opts.get("read_options") or {})
    if opts["format"] == "csv":
        ddf = dd.read_csv(
            src.url, blocksize=opts.get("blocksize", "64MB"), storage_options=so, **read_options
        )
    else:
        ddf = _read_parquet_row_groups(src.url, so, geo=False)
    renames = {opts[a]: a for a in ("x", "y", "z") if opts.get(a) and opts[a] != a}
    if renames:
        ddf = ddf.rename(columns=renames)
    feature = opts.get("feature_key")
    if feature is not None:
        if feature not in ddf.columns:
            raise ValidationError(
                f"feature_key {feature!r} is not a column (columns: {list(ddf.columns)})"
            )
        cats = opts.get("categories")
        if cats is None:  # one pass over the column; recorded so later opens skip it
            log.info("lazy link %r: reading the categories of %r once", el.name, feature)
            values = ddf[feature].dropna().unique().compute()
            cats = sorted(values.tolist(), key=str)
            el.__dict__["_source"] = src.with_options(categories=_json_list(cats))
        ddf = ddf.assign(**{feature: ddf[feature].astype(pd.CategoricalDtype(list(cats)))})
    return Points(
        ddf,
        feature_key=feature,
        instance_key=opts.get("instance_key"),
        transforms=el.transforms,
    )


def _json_list(values: list[Any]) -> list[Any]:
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _load_shapes(el: Any, src: ExternalSource, so: dict | None) -> Element:
    from spatialflow.elements.shapes import Shapes

    return Shapes(_read_parquet_row_groups(src.url, so, geo=True), transforms=el.transforms)


def _read_row_group(url: str, so: dict | None, path: str, rg: int, offset: int, geo: bool) -> Any:
    """One row group as pandas/geopandas; a stored RangeIndex continues from ``offset``."""
    import pyarrow.parquet as pq

    fs = location(url, so).fs
    if rg < 0:  # a file without row groups: one empty partition
        with fs.open(path, "rb") as f:
            return _frame(pq.ParquetFile(f).schema_arrow.empty_table(), geo, 0)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        table = pf.read_row_group(rg)
    return _frame(table, geo, offset)


def _frame(table: Any, geo: bool, offset: int) -> Any:
    import json

    if geo:
        from geopandas.io.arrow import _arrow_to_geopandas  # what geopandas.read_parquet uses

        meta = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
        df = _arrow_to_geopandas(table, meta)
    else:
        df = table.to_pandas()
    pandas_meta = table.schema.pandas_metadata or {}
    for ix in pandas_meta.get("index_columns", []):
        if isinstance(ix, dict) and ix.get("kind") == "range":
            step = int(ix.get("step", 1))
            start = int(ix.get("start", 0)) + offset * step
            df.index = pd.RangeIndex(start, start + len(df) * step, step, name=ix.get("name"))
    if df.index.name in ("__index_level_0__", "__null_dask_index__"):
        df.index.name = None
    return df


def _read_parquet_row_groups(url: str, so: dict | None, geo: bool) -> Any:
    """A Parquet file or directory of parts as a Dask frame, one partition per row group
    (footers read now, rows when computed); a stored RangeIndex stays global."""
    import dask.dataframe as dd
    import pyarrow.parquet as pq

    loc = location(url, so)
    if loc.fs.isdir(loc.path):
        files = sorted(f for f in loc.fs.find(loc.path) if f.endswith(".parquet"))
    else:
        files = [loc.path]
    if not files:
        raise ValidationError(f"{url} holds no .parquet files")
    parts: list[tuple[str, int, int]] = []
    offset = 0
    schema = None
    for path in files:
        with loc.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            schema = schema or pf.schema_arrow
            for rg in range(pf.metadata.num_row_groups):
                parts.append((path, rg, offset))
                offset += pf.metadata.row_group(rg).num_rows
    assert schema is not None
    if geo and b"geo" not in (schema.metadata or {}):
        raise ValidationError(f"{url} is not GeoParquet (no 'geo' metadata)")
    meta = _frame(schema.empty_table(), geo, 0)
    if not parts:
        parts = [(files[0], -1, 0)]
    with exact_dtypes() if geo else contextlib.nullcontext():  # geopandas converts no strings
        return dd.from_map(
            _read_row_group,
            [url] * len(parts),
            [so] * len(parts),
            [p for p, _, _ in parts],
            [rg for _, rg, _ in parts],
            [o for _, _, o in parts],
            [geo] * len(parts),
            meta=meta,
            enforce_metadata=False,
            label="read-linked-parquet",
        )


class _TiffLevel:
    """One level of an OME-TIFF series as a lazily sliced array (picklable: it reopens the
    file in each task through fsspec and tifffile's zarr interface)."""

    def __init__(
        self, url: str, so: dict | None, series: int, level: int, shape: tuple, dtype: Any
    ):
        self.url, self.so, self.series, self.level = url, so, series, level
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        import tifffile
        import zarr

        loc = location(self.url, self.so)
        with loc.fs.open(loc.path, "rb") as f, tifffile.TiffFile(f) as tif:
            store = tif.aszarr(series=self.series, level=self.level)
            arr = zarr.open_array(store, mode="r")
            return np.asarray(arr[key])


_TIFF_AXES = {"C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}


def _load_image(el: Any, src: ExternalSource, so: dict | None) -> Element:
    import dask.array as da
    import tifffile
    import xarray as xr

    from spatialflow.elements.raster import Image

    series = int(src.options.get("series", 0))
    loc = location(src.url, so)
    with loc.fs.open(loc.path, "rb") as f, tifffile.TiffFile(f) as tif:
        if series >= len(tif.series):
            raise ValidationError(f"series {series} requested, the file has {len(tif.series)}")
        s = tif.series[series]
        levels = [(lv.shape, lv.dtype, lv.axes) for lv in s.levels]
    arrays = []
    dims: tuple[str, ...] = ()
    for k, (shape, dtype, axes) in enumerate(levels):
        arr = da.from_array(
            _TiffLevel(src.url, so, series, k, shape, dtype),
            chunks=src.options.get("chunks", "auto"),
            meta=np.empty((0,) * len(shape), dtype=dtype),
            name=f"tiff-{hashlib.sha1(f'{src.url}|{series}|{k}'.encode()).hexdigest()[:16]}",
        )
        arr, dims = _standard_dims(arr, axes)
        arrays.append(arr)
    tree = xr.DataTree.from_dict(
        {f"s{k}": xr.Dataset({"image": xr.DataArray(a, dims=dims)}) for k, a in enumerate(arrays)}
    )
    return Image(tree, transforms=el.transforms, channel_names=src.options.get("channel_names"))


def _standard_dims(arr: Any, axes: str) -> tuple[Any, tuple[str, ...]]:
    """Squeeze axes of length 1 that images do not have, order as c, (z), y, x."""
    names: list[str] = []
    index: list[Any] = []
    for ax, n in zip(axes, arr.shape, strict=True):
        if ax in _TIFF_AXES and _TIFF_AXES[ax] not in names:
            names.append(_TIFF_AXES[ax])
            index.append(slice(None))
        elif n == 1:
            index.append(0)
        else:
            raise ValidationError(f"axis {ax!r} of length {n} (axes {axes!r}) is not c, z, y or x")
    arr = arr[tuple(index)]
    if "c" not in names:
        arr, names = arr[None], ["c", *names]
    order = [d for d in ("c", "z", "y", "x") if d in names]
    arr = arr.transpose([names.index(d) for d in order])
    return arr, tuple(order)


def _load_table(el: Any, src: ExternalSource, so: dict | None) -> Element:
    import anndata as ad

    from spatialflow.elements.table import Table

    loc = location(src.url, so)
    if loc.path.rstrip("/").endswith(".zarr") or loc.fs.isdir(loc.path):
        adata = ad.read_zarr(loc.zarr_store(read_only=True))
    elif loc.is_local:
        adata = ad.read_h5ad(loc.path)
    else:
        with loc.fs.open(loc.path, "rb") as f:
            adata = ad.read_h5ad(f)
    keys = {k: src.options.get(k) for k in ("region", "region_key", "instance_key")}
    return Table(adata, **keys)


# --- root attributes -----------------------------------------------------------------------
def written_elements(ds: Dataset, materialize: bool) -> set[str]:
    """Names of the elements a writer stores as data (linked ones only when materializing)."""
    return {n for n, el in ds.items() if materialize or not is_linked(el)}


def _public_options(so: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in so.items()
        if not any(w in k.lower() for w in _SECRET_WORDS) and _jsonable(v)
    }


def _jsonable(v: Any) -> bool:
    import json

    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def _serial_axes(kind: str, transforms: Mapping[str, Any]) -> tuple[str, ...]:
    has_z = any("z" in (getattr(t, "input_axes", None) or ()) for t in transforms.values())
    if kind == "image":
        return ("c", "z", "y", "x") if has_z else ("c", "y", "x")
    return ("x", "y", "z") if has_z else ("x", "y")


def source_json(el: Any) -> dict[str, Any]:
    src: ExternalSource = el.source
    out: dict[str, Any] = {
        "kind": src.kind,
        "url": src.url,
        "options": dict(src.options),
        "fingerprint": dict(src.fingerprint),
    }
    so = _public_options(src.storage_options)
    if so:
        out["storage_options"] = so
    if src.kind != "table":
        axes = _serial_axes(src.kind, el.transforms)
        out["axes"] = list(axes)
        out["coordinateTransformations"] = write_transforms(el.transforms, axes)
    if not _jsonable(out):
        raise ValidationError(
            f"lazy link {el.name!r}: its options must be JSON values to be written, got "
            f"{src.options!r}"
        )
    return out


def links_attrs(ds: Dataset, materialize: bool = False) -> dict[str, Any] | None:
    """The ``spatialflow_links`` root attribute for ``ds`` (None when it has no links)."""
    external = {
        name: source_json(el) for name, el in ds.items() if is_linked(el) and not materialize
    }
    explicit = []
    for lk in ds.links.explicit():
        try:
            ds.links.check(lk)
        except SpatialFlowError as e:  # an element was removed after the link was made
            log.warning("not writing the link %s: %s", lk.describe(), e)
            continue
        explicit.append(lk.to_json())
    if not external and not explicit:
        return None
    return {"version": ATTRS_VERSION, "links": explicit, "external": external}


def merged_links_attrs(old: Any, ds: Dataset, materialize: bool = False) -> dict[str, Any] | None:
    """The attribute after adding ``ds`` to a store that keeps elements ``ds`` lacks (Icechunk):
    sources and links of elements ``ds`` holds are replaced, the others kept."""
    new = links_attrs(ds, materialize) or {"links": [], "external": {}}
    old = old if isinstance(old, dict) else {}
    names = {n for n, _ in ds.items()}
    external = {k: v for k, v in (old.get("external") or {}).items() if k not in names}
    external.update(new["external"])
    kept = [
        lk
        for lk in old.get("links") or []
        if isinstance(lk, dict) and lk.get("table") not in names and lk.get("element") not in names
    ]
    links = kept + new["links"]
    if not external and not links:
        return None
    return {"version": ATTRS_VERSION, "links": links, "external": external}


def apply_links_attrs(ds: Dataset, attrs: Mapping[str, Any], where: str) -> None:
    """Mount the linked elements and add the annotate links a store's root attributes hold."""
    data = attrs.get(ATTRS_KEY)
    if data is None:
        return
    if not isinstance(data, dict):
        raise FormatError(f"{where}: root attribute {ATTRS_KEY!r} must be an object")
    for name, d in (data.get("external") or {}).items():
        here = f"{where}: {ATTRS_KEY}.external.{name}"
        if name in ds:
            continue  # written materialized, or replaced by data since
        try:
            kind = d["kind"]
            transforms = (
                read_transforms(d["coordinateTransformations"], here) if kind != "table" else None
            )
            el = make_linked(
                name,
                d["url"],
                kind,
                options=d.get("options") or {},
                storage_options=d.get("storage_options") or {},
                transforms=transforms,
                fingerprint_=d.get("fingerprint") or {},
            )
            getattr(ds, _KIND_GROUP[kind])[name] = el
        except (KeyError, TypeError) as e:
            raise FormatError(f"{here}: malformed link source ({e!r})") from e
        except SpatialFlowError as e:
            raise FormatError(f"{here}: {e}") from e
    for d in data.get("links") or []:
        if not isinstance(d, dict):
            raise FormatError(f"{where}: {ATTRS_KEY}.links holds {d!r}, not a link record")
        try:
            lk = Link.from_json(dict(d), f"{where}: {ATTRS_KEY}.links")
        except SpatialFlowError as e:
            raise FormatError(f"{where}: {e}") from e
        try:
            ds.links.add(lk)
        except SpatialFlowError as e:  # e.g. another tool removed an element of the link
            warnings.warn(f"{where}: link {lk.describe()} skipped: {e}", UserWarning, stacklevel=3)
