"""Where a store lives: local paths and fsspec URLs, and which layout is there.

A :class:`Location` pairs an fsspec filesystem with a path on it and makes the zarr store for
it (``LocalStore`` for local paths, ``FsspecStore`` otherwise). :func:`detect_layout` tells a
SpatialData zarr v3 store (container "0.2"), a legacy zarr v2 store ("0.1") and an Icechunk
repository apart by their marker files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fsspec
from fsspec.core import url_to_fs

from spatialflow.errors import FormatError

__all__ = ["Layout", "Location", "detect_layout", "location"]

Layout = Literal["spatialdata", "spatialdata-v2", "icechunk"]


@dataclass(frozen=True)
class Location:
    """A directory on some filesystem."""

    url: str
    fs: fsspec.AbstractFileSystem
    path: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    @property
    def protocol(self) -> str:
        return _protocols(self.fs)[0]

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts if p]])

    def child(self, *parts: str) -> Location:
        path = self.join(*parts)
        url = path if self.is_local else f"{self.protocol}://{path}"
        return Location(url, self.fs, path, self.storage_options)

    def exists(self, *parts: str) -> bool:
        from spatialflow.io.guards import storage_errors

        with storage_errors(self.url, "reach the store"):
            return bool(self.fs.exists(self.join(*parts)))

    def read_json(self, *parts: str) -> dict[str, Any]:
        p = self.join(*parts)
        try:
            with self.fs.open(p, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError as e:
            raise FormatError(f"{p}: not found") from e
        except (OSError, ValueError, RecursionError) as e:  # JSON and Unicode errors too
            raise FormatError(f"{p}: not valid JSON ({e})") from e

    def zarr_store(self, read_only: bool = False) -> Any:
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(
            self.url, storage_options=self.storage_options, read_only=read_only
        )


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def location(url: str | Path, storage_options: dict[str, Any] | None = None) -> Location:
    """The Location of a local path, ``file://``, ``memory://``, ``s3://`` ... URL."""
    opts = dict(storage_options or {})
    text = str(url)
    if "://" not in text:
        text = str(Path(text).expanduser().absolute())
    try:
        fs, path = url_to_fs(text, **opts)
    except (ImportError, ValueError) as e:
        raise FormatError(f"{url}: cannot open this URL ({e})") from e
    return Location(str(url), fs, path, opts)


def detect_layout(loc: Location) -> Layout:
    """Which layout is stored at ``loc``."""
    if not loc.exists():
        raise FormatError(f"{loc.url}: no such directory")
    if loc.exists("repo") and (loc.exists("snapshots") or loc.exists("refs")):
        return "icechunk"
    if loc.exists("zarr.json"):
        return "spatialdata"
    if loc.exists(".zgroup"):
        return "spatialdata-v2"
    raise FormatError(
        f"{loc.url}: neither a SpatialData zarr store (no zarr.json or .zgroup) nor an Icechunk "
        "repository"
    )
