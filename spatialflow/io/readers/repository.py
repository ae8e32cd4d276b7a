"""The native layout in an Icechunk repository as a reader (a branch, tag or snapshot of it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spatialflow.dataset import Dataset
from spatialflow.errors import FormatError
from spatialflow.io.location import location
from spatialflow.io.readers.base import Reader
from spatialflow.io.repository import read_repository

__all__ = ["IcechunkReader"]


class IcechunkReader(Reader):
    name = "icechunk"
    description = (
        "an Icechunk repository in spatialflow's native layout (options: branch, snapshot)"
    )

    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        loc = location(url, storage_options)
        return loc.exists("repo") and (loc.exists("snapshots") or loc.exists("refs"))

    def open(
        self,
        url: str | Path,
        *,
        storage_options: dict[str, Any] | None = None,
        branch: str = "main",
        snapshot: str | None = None,
        **options: Any,
    ) -> Dataset:
        if options:
            raise FormatError(
                f"{url}: the icechunk reader takes branch= and snapshot= only, not {sorted(options)}"
            )
        loc = location(url, storage_options)
        if not loc.exists():
            raise FormatError(f"{loc.url}: no such directory")
        return read_repository(loc, branch=branch, snapshot=snapshot)
