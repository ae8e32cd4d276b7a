"""Icechunk repositories: storage from a URL, and reading a Dataset from a snapshot.

Only read-only sessions are opened here; writable sessions belong to ``jobs/``. A repository
lives in a local directory (``path`` or ``file://``) or an S3-compatible bucket
(``s3://bucket/prefix`` with ``storage_options`` such as ``endpoint_url``, ``key``, ``secret``;
``allow_http`` is inferred from an ``http://`` endpoint).

Inside, rasters and tables are laid out as in SpatialData, points and shapes in the native
columnar layout (io/native.py); the root group carries ``spatialdata_attrs`` and
``spatialflow: {"layout": "native"}``.
"""

from __future__ import annotations

import os
from typing import Any

import zarr

from spatialflow.dataset import Dataset
from spatialflow.elements import KINDS, Points, Shapes
from spatialflow.elements.base import check_name
from spatialflow.errors import FormatError, SpatialFlowError
from spatialflow.io.location import Location
from spatialflow.io.native import read_native_frame
from spatialflow.io.sdformat import read_raster_group, read_table_group
from spatialflow.transforms.ngff import from_spatialdata_dict

__all__ = ["open_repository", "read_repository", "read_session", "repository_storage"]

os.environ.setdefault("ICECHUNK_LOG", "error")  # icechunk's Rust logs: keep warnings quiet


def repository_storage(loc: Location) -> Any:
    import icechunk

    if loc.is_local:
        return icechunk.local_filesystem_storage(loc.path)
    if loc.protocol in ("s3", "s3a"):
        bucket, _, prefix = loc.path.partition("/")
        opts = loc.storage_options
        client = opts.get("client_kwargs", {}) or {}
        endpoint = opts.get("endpoint_url") or client.get("endpoint_url")
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix or None,
            endpoint_url=endpoint,
            region=opts.get("region") or client.get("region_name") or "us-east-1",
            allow_http=bool(endpoint and str(endpoint).startswith("http://")),
            access_key_id=opts.get("key"),
            secret_access_key=opts.get("secret"),
            anonymous=opts.get("anon"),
            force_path_style=bool(endpoint),
            from_env=None if opts.get("key") else True,
        )
    raise FormatError(
        f"{loc.url}: Icechunk repositories can live on local disk or S3, not '{loc.protocol}://'"
    )


def open_repository(loc: Location, create: bool = False) -> Any:
    import icechunk

    storage = repository_storage(loc)
    try:
        if create:
            return icechunk.Repository.open_or_create(storage)
        return icechunk.Repository.open(storage)
    except icechunk.IcechunkError as e:
        raise FormatError(f"{loc.url}: cannot open the Icechunk repository ({e})") from e


def read_repository(loc: Location, branch: str = "main", snapshot: str | None = None) -> Dataset:
    import icechunk

    repo = open_repository(loc)
    try:
        session = (
            repo.readonly_session(snapshot_id=snapshot)
            if snapshot is not None
            else repo.readonly_session(branch=branch)
        )
    except icechunk.IcechunkError as e:
        what = f"snapshot {snapshot!r}" if snapshot is not None else f"branch {branch!r}"
        raise FormatError(f"{loc.url}: no {what} in this repository ({e})") from e
    return read_session(session, loc.url)


def read_session(session: Any, where: str) -> Dataset:
    """A lazy Dataset over a (read-only) Icechunk session."""
    store = session.store
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3)
    except Exception as e:  # an empty repository has no root group yet
        raise FormatError(f"{where}: the repository holds no dataset yet ({e})") from e
    ds = Dataset()
    for kind in KINDS:
        if kind not in root:
            continue
        for name in sorted(root[kind].group_keys()):
            path = f"{kind}/{name}"
            loc = f"{where}/{path}"
            try:
                check_name(name, kind[:-1])
                group = root[path]
                if kind in ("images", "labels"):
                    el = read_raster_group(group, kind, loc)
                elif kind == "tables":
                    el = read_table_group(group, loc)
                else:
                    el = _read_frame(store, path, group.attrs.asdict(), kind, loc)
            except FormatError:
                raise
            except SpatialFlowError as e:
                raise FormatError(f"{loc}: {e}") from e
            getattr(ds, kind)[name] = el
    return ds


def _read_frame(store: Any, path: str, attrs: dict[str, Any], kind: str, where: str) -> Any:
    expected = f"spatialflow:{kind}"
    if attrs.get("encoding-type") != expected:
        raise FormatError(
            f"{where}: not a native {kind} element (encoding-type {attrs.get('encoding-type')!r})"
        )
    transforms = {}
    for entry in attrs.get("coordinateTransformations", []):
        cs, t = from_spatialdata_dict(entry)
        transforms[cs] = t
    ddf, bounds = read_native_frame(store, path, attrs, where)
    if kind == "points":
        sd = attrs.get("spatialdata_attrs", {})
        return Points(
            ddf,
            feature_key=sd.get("feature_key"),
            instance_key=sd.get("instance_key"),
            transforms=transforms,
            partition_bounds=bounds,
        )
    return Shapes(ddf, transforms=transforms, partition_bounds=bounds)
