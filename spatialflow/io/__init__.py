"""Storage: formats, and nothing about operations.

Reading goes through one protocol (``readers/``): each format is a
:class:`~spatialflow.io.readers.base.Reader` with ``guess_can_open`` and ``open``, registered in
``readers/registry.py`` (built-ins: the native layout in an Icechunk repository and the
SpatialData zarr layout; third parties through the ``spatialflow.readers`` entry points).
:func:`read` picks the reader or uses the named one.

Writing: ``sdwriter.py`` writes the SpatialData zarr layout, ``icechunk_writer.py`` writes the
native layout into an Icechunk session (one fork, one commit). ``location.py`` turns paths and
fsspec URLs into Locations; ``sdformat.py``/``native.py``/``sdtransforms.py`` hold the format
details both directions share.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spatialflow.io.location import Location, detect_layout, location

if TYPE_CHECKING:
    from spatialflow.dataset import Dataset

__all__ = ["Location", "detect_layout", "location", "read", "write"]


def read(
    url: str | Path,
    reader: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> Dataset:
    """Open what is at ``url`` as a lazy Dataset.

    ``reader`` names the format (``sf.io.readers.registry.reader_names()`` lists them); when it
    is None, each reader is asked in turn whether it recognises ``url``. ``options`` go to the
    reader: ``branch=`` / ``snapshot=`` for Icechunk repositories, format options for the
    vendor readers. ``storage_options`` are fsspec's (e.g. S3 credentials and endpoint)."""
    from spatialflow.errors import FormatError
    from spatialflow.io.readers.registry import get_reader, guess_reader

    if reader is not None:
        return get_reader(reader).open(url, storage_options=storage_options, **options)
    loc = location(url, storage_options)
    if not loc.exists():
        raise FormatError(f"{loc.url}: no such directory")
    chosen = guess_reader(url, storage_options)
    return chosen.open(url, storage_options=storage_options, **options)


def write(
    ds: Dataset,
    url: str | Path,
    *,
    format: str = "spatialdata",
    message: str | None = None,
    branch: str = "main",
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    materialize: bool = False,
) -> str | None:
    """Write ``ds`` to ``url`` in ``format`` (see :meth:`spatialflow.Dataset.write`)."""
    from spatialflow.errors import ValidationError

    loc = location(url, storage_options)
    if format == "spatialdata":
        from spatialflow.io.sdwriter import write_spatialdata

        write_spatialdata(ds, loc, overwrite=overwrite, materialize=materialize)
        return None
    if format == "icechunk":
        from spatialflow.io.icechunk_writer import write_repository

        return write_repository(
            ds,
            loc,
            branch=branch,
            message=message or f"write {len(ds)} elements",
            materialize=materialize,
        )
    raise ValidationError(f"unknown format {format!r}; use 'spatialdata' or 'icechunk'")
