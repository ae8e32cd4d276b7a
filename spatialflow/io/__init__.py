"""Storage: the SpatialData 0.8 zarr layout, the native columnar layout in Icechunk, URLs.

``read`` detects the layout at a URL and opens it lazily; ``write`` dispatches on ``format``.
This package knows formats and nothing about operations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spatialflow.errors import FormatError
from spatialflow.io.location import Location, detect_layout, location

if TYPE_CHECKING:
    from spatialflow.dataset import Dataset

__all__ = ["Location", "detect_layout", "location", "read"]


def read(
    url: str | Path,
    *,
    branch: str = "main",
    snapshot: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Dataset:
    """Open the store at ``url`` (any layout) as a lazy Dataset."""
    loc = location(url, storage_options)
    layout = detect_layout(loc)
    if layout == "icechunk":
        from spatialflow.io.repository import read_repository

        return read_repository(loc, branch=branch, snapshot=snapshot)
    if snapshot is not None or branch != "main":
        raise FormatError(
            f"{url}: branch= and snapshot= apply to Icechunk repositories only; "
            f"this is a {layout} store"
        )
    from spatialflow.io.sdformat import read_spatialdata

    return read_spatialdata(loc, legacy=layout == "spatialdata-v2")
