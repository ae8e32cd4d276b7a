"""The SpatialData zarr layout as a reader: container "0.2" (zarr v3) and the legacy "0.1" (v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialflow.dataset import Dataset
from spatialflow.errors import FormatError
from spatialflow.io.location import location
from spatialflow.io.readers.base import Reader
from spatialflow.io.sdformat import read_spatialdata

__all__ = ["SpatialDataReader"]


class SpatialDataReader(Reader):
    name = "spatialdata"
    description = "a SpatialData 0.8 zarr store (zarr.json, or .zgroup for the legacy v2 layout)"

    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        loc = location(url, storage_options)
        return loc.exists("zarr.json") or loc.exists(".zgroup")

    def open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> Dataset:
        branch = options.pop("branch", "main")
        snapshot = options.pop("snapshot", None)
        if snapshot is not None or branch != "main":
            raise FormatError(
                f"{url}: branch= and snapshot= apply to Icechunk repositories only; "
                "this is a SpatialData store"
            )
        if options:
            raise FormatError(
                f"{url}: the spatialdata reader takes no options {sorted(options)}; "
                "remove them (branch/snapshot are for Icechunk repositories)"
            )
        loc = location(url, storage_options)
        if not loc.exists():
            raise FormatError(f"{loc.url}: no such directory")
        legacy = not loc.exists("zarr.json") and loc.exists(".zgroup")
        return read_spatialdata(loc, legacy=legacy)
