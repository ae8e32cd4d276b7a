"""Icechunk repositories: storage from a URL, reading a Dataset from a snapshot, history.

Only read-only sessions are opened here; writable sessions belong to ``jobs/``.

Concurrent writers: on S3 any number of processes may commit to one branch (icechunk updates
refs with conditional writes; a commit that lost the race is rebased, see
io/icechunk_writer.py). On local disk icechunk cannot do that safely, so every ref update
through spatialflow takes :func:`ref_lock` (an flock inside the repository directory):
commits from several processes on one machine are serialized, never interleaved. Writers on
several machines sharing a network disk need object storage instead. Object-storage requests
are retried with backoff (``S3_MAX_TRIES``) and a hung attempt is abandoned after
``S3_ATTEMPT_TIMEOUT_MS``. A repository
lives in a local directory (``path`` or ``file://``) or an S3-compatible bucket
(``s3://bucket/prefix`` with ``storage_options`` as for s3fs: ``endpoint_url``, ``key``,
``secret``, ``region`` or ``client_kwargs={"region_name": ...}``; ``allow_http`` is inferred
from an ``http://`` endpoint, and a custom endpoint uses path-style addressing). Without options,
the standard environment variables apply (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``), so ``spatialflow run``
can commit to an S3-compatible server configured the usual way.

Inside, rasters and tables are laid out as in SpatialData, points and shapes in the native
columnar layout (io/native.py); the root group carries ``spatialdata_attrs`` and
``spatialflow: {"layout": "native"}``, which the reader requires.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import zarr

from spatialflow.dataset import Dataset
from spatialflow.elements import KINDS
from spatialflow.elements.points import Points
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import CommitConflictError, FormatError, SpatialFlowError
from spatialflow.io.columns import NativePartitions
from spatialflow.io.guards import damaged_metadata, storage_error, storage_errors
from spatialflow.io.links import apply_links_attrs
from spatialflow.io.location import Location
from spatialflow.io.native import NativeFrames, read_native_frame
from spatialflow.io.sdformat import element_groups, read_raster_group, read_table_group
from spatialflow.io.sdtransforms import read_transforms

__all__ = [
    "Commit",
    "branches",
    "history",
    "open_repository",
    "read_repository",
    "read_session",
    "ref_lock",
    "repository_storage",
    "repository_url",
]

os.environ.setdefault("ICECHUNK_LOG", "error")  # icechunk's Rust logs: keep warnings quiet
NATIVE_LAYOUT = "native"


def _short(e: BaseException) -> str:
    """An icechunk error's first line (the rest is a Rust span trace)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def repository_storage(loc: Location) -> Any:
    """The icechunk Storage for a local directory or an S3(-compatible) prefix."""
    import icechunk

    if loc.is_local:
        return icechunk.local_filesystem_storage(loc.path)
    if loc.protocol in ("s3", "s3a"):
        bucket, _, prefix = loc.path.partition("/")
        opts = loc.storage_options
        client = opts.get("client_kwargs", {}) or {}
        env = os.environ.get
        endpoint = (
            opts.get("endpoint_url")
            or client.get("endpoint_url")
            or env("AWS_ENDPOINT_URL_S3")
            or env("AWS_ENDPOINT_URL")
        )
        anonymous = bool(opts.get("anon"))
        # static keys from the options or the environment are resolved here, so the forks
        # handed to workers (other processes, other machines) carry them
        key = opts.get("key") or opts.get("aws_access_key_id") or env("AWS_ACCESS_KEY_ID")
        secret = (
            opts.get("secret") or opts.get("aws_secret_access_key") or env("AWS_SECRET_ACCESS_KEY")
        )
        if not (key and secret) or anonymous:
            key = secret = None
        return icechunk.s3_storage(
            bucket=bucket,
            prefix=prefix.strip("/") or None,
            endpoint_url=endpoint,
            region=opts.get("region") or client.get("region_name") or "us-east-1",
            allow_http=bool(endpoint and str(endpoint).startswith("http://")),
            access_key_id=key,
            secret_access_key=secret,
            session_token=opts.get("token") or (env("AWS_SESSION_TOKEN") if key else None),
            anonymous=anonymous or None,
            force_path_style=bool(endpoint),
            from_env=None if (key or anonymous) else True,
        )
    raise FormatError(
        f"{loc.url}: Icechunk repositories can live on local disk or S3, not "
        f"'{loc.protocol}://'; use a local path or an s3:// URL"
    )


# --- storage settings and the local-disk commit lock ----------------------------------------
S3_MAX_TRIES = 10  # per request, with exponential backoff: rides out 5xx bursts and resets
S3_ATTEMPT_TIMEOUT_MS = 30_000  # one attempt that hangs longer is abandoned and retried
LOCK_FILE = ".spatialflow-commit.lock"
LOCK_TIMEOUT_S = 600.0


def _config(loc: Location) -> Any:
    """Retries and per-attempt timeouts for object storage (icechunk's own client)."""
    import icechunk

    if loc.is_local:
        return None
    config = icechunk.RepositoryConfig.default()
    config.storage = icechunk.StorageSettings(
        retries=icechunk.StorageRetriesSettings(
            max_tries=S3_MAX_TRIES, initial_backoff_ms=100, max_backoff_ms=5_000
        ),
        timeouts=icechunk.StorageTimeoutSettings(
            connect_timeout_ms=10_000,
            read_timeout_ms=S3_ATTEMPT_TIMEOUT_MS,
            operation_attempt_timeout_ms=S3_ATTEMPT_TIMEOUT_MS,
        ),
    )
    return config


def _storage_fields(repo: Any) -> dict[str, str]:
    """``type``, ``path`` / ``bucket``, ``prefix`` ... of a repository's storage (its repr)."""
    out = {}
    for line in repr(repo.storage).splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def repository_url(repo: Any) -> str:
    """Where a repository lives, for messages: a local path or ``s3://bucket/prefix``."""
    f = _storage_fields(repo)
    if "path" in f:
        return f["path"]
    if "bucket" in f:
        return f"s3://{f['bucket']}/{f.get('prefix', '')}".rstrip("/")
    return "the repository"


@contextlib.contextmanager
def ref_lock(repo: Any, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialize ref updates (commits, tags, branch resets) of a repository on local disk.

    Icechunk's local-filesystem storage has no atomic compare-and-swap of refs, so two
    processes committing at once could both "win" and one update would be lost; object stores
    (S3) have conditional writes and need no lock. The lock is an ``flock`` on
    ``<repository>/.spatialflow-commit.lock``: held by one process (or thread) at a time on
    this machine, released by the kernel if its holder dies. Concurrent writers on several
    machines need object storage. Waiting longer than ``timeout`` is a CommitConflictError."""
    path = (
        _storage_fields(repo).get("path")
        if "local" in _storage_fields(repo).get("type", "")
        else None
    )
    if path is None:
        yield
        return
    import fcntl

    lock = os.path.join(path, LOCK_FILE)
    with storage_errors(path, "lock the repository for a commit"):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CommitConflictError(
                        f"{path}: another process has been committing to this repository for "
                        f"over {timeout:g} s (lock {LOCK_FILE}); nothing was committed; rerun "
                        "when it has finished"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_or_create(storage: Any, config: Any) -> Any:
    """``open_or_create`` that survives a race: when another process creates the repository
    between our look and our create, icechunk refuses the create ("clean prefixes only");
    the repository then exists and is opened."""
    import icechunk

    for attempt in range(3):
        try:
            return icechunk.Repository.open_or_create(storage, config=config)
        except icechunk.IcechunkError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
            with contextlib.suppress(icechunk.IcechunkError):
                return icechunk.Repository.open(storage, config=config)
    raise AssertionError("unreachable")  # pragma: no cover


def open_repository(loc: Location, create: bool = False) -> Any:
    """Open the repository at ``loc`` (``create``: make it if there is none)."""
    import icechunk

    storage = repository_storage(loc)
    if create and loc.is_local and not loc.exists():
        with storage_errors(loc.url, "create the repository"):
            os.makedirs(loc.path, exist_ok=True)
    try:
        if create:
            return _open_or_create(storage, _config(loc))
        return icechunk.Repository.open(storage, config=_config(loc))
    except icechunk.IcechunkError as e:
        if create and not loc.is_local:
            raise storage_error(loc.url, e, "open or create the repository") from e
        raise FormatError(f"{loc.url}: cannot open the Icechunk repository ({_short(e)})") from e


def read_repository(loc: Location, branch: str = "main", snapshot: str | None = None) -> Dataset:
    """The Dataset at the head of ``branch`` (or at ``snapshot``) of the repository."""
    import icechunk

    repo = open_repository(loc)
    try:
        session = (
            repo.readonly_session(snapshot_id=snapshot)
            if snapshot is not None
            else repo.readonly_session(branch=branch)
        )
    except (icechunk.IcechunkError, ValueError) as e:
        what = f"snapshot {snapshot!r}" if snapshot is not None else f"branch {branch!r}"
        raise FormatError(f"{loc.url}: no {what} in this repository ({_short(e)})") from e
    return read_session(session, loc.url)


def read_session(session: Any, where: str) -> Dataset:
    """A lazy Dataset over a (read-only) Icechunk session."""
    store = session.store
    try:
        root = zarr.open_group(store, mode="r", zarr_format=3)
    except Exception as e:  # an empty repository has no root group yet
        raise FormatError(f"{where}: the repository holds no dataset yet ({e})") from e
    layout = (root.attrs.get("spatialflow") or {}).get("layout")
    if layout != NATIVE_LAYOUT:
        raise FormatError(
            f"{where}: the repository's root group has no spatialflow.layout == "
            f"{NATIVE_LAYOUT!r} (found {layout!r}); it was not written by spatialflow"
        )
    ds = Dataset()
    for kind in KINDS:
        with damaged_metadata(f"{where}/{kind}", "repair or remove the broken element"):
            groups = element_groups(root, kind, where)
        for name, group in groups:
            loc = f"{where}/{kind}/{name}"
            try:
                with damaged_metadata(loc):
                    el = _read_element(store, kind, f"{kind}/{name}", group, loc)
                getattr(ds, kind)[name] = el
            except FormatError:
                raise
            except SpatialFlowError as e:
                raise FormatError(f"{loc}: {e}") from e
    apply_links_attrs(ds, root.attrs.asdict(), where)  # links, linked elements
    return ds


def _read_element(store: Any, kind: str, path: str, group: zarr.Group, where: str) -> Any:
    if kind in ("images", "labels"):
        return read_raster_group(group, kind, where)
    if kind == "tables":
        return read_table_group(group, where)
    return _read_frame(store, path, group.attrs.asdict(), kind, where)


def _read_frame(store: Any, path: str, attrs: dict[str, Any], kind: str, where: str) -> Any:
    expected = f"spatialflow:{kind}"
    if attrs.get("encoding-type") != expected:
        raise FormatError(
            f"{where}: not a native {kind} element (encoding-type "
            f"{attrs.get('encoding-type')!r}, expected {expected!r})"
        )
    transforms = read_transforms(attrs.get("coordinateTransformations"), where)
    ddf, bounds = read_native_frame(store, path, attrs, where)
    if kind == "points":
        sd = attrs.get("spatialdata_attrs", {})
        parts = attrs["partitions"]
        source = (
            NativePartitions(store, f"{path}/{parts['group']}", attrs["schema"], parts["rows"])
            if parts["rows"]
            else None
        )
        el = Points(
            ddf,
            feature_key=sd.get("feature_key"),
            instance_key=sd.get("instance_key"),
            transforms=transforms,
            partition_bounds=bounds,
            column_source=source,
        )
        if "points_index" in attrs:  # a multiscale index (io/points_index.py)
            from spatialflow.io.points_index import read_native_index

            el.index = read_native_index(store, path, attrs, el, where)
        return el
    parts = attrs["partitions"]
    frames = (
        NativeFrames(
            store, f"{path}/{parts['group']}", attrs["schema"], attrs.get("geometry"), parts["rows"]
        )
        if parts["rows"]
        else None
    )
    return Shapes(ddf, transforms=transforms, partition_bounds=bounds, frame_source=frames)


# --- history -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    """One snapshot in a branch's history."""

    id: str
    message: str
    written_at: datetime
    metadata: dict[str, Any]


def history(loc: Location, branch: str = "main", limit: int | None = None) -> list[Commit]:
    """The snapshots of ``branch``, newest first (at most ``limit``)."""
    import icechunk

    repo = open_repository(loc)
    out: list[Commit] = []
    try:
        for info in repo.ancestry(branch=branch):
            if limit is not None and len(out) >= limit:
                break
            out.append(Commit(info.id, info.message, info.written_at, dict(info.metadata or {})))
    except (icechunk.IcechunkError, ValueError) as e:
        raise FormatError(
            f"{loc.url}: no branch {branch!r} in this repository ({_short(e)})"
        ) from e
    return out


def branches(loc: Location) -> list[str]:
    """The repository's branch names, sorted."""
    return sorted(open_repository(loc).list_branches())
