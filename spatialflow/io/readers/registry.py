"""The table of readers: built-in formats first, then the ``spatialflow.readers`` entry points.

A third-party package adds a format by exposing a :class:`~spatialflow.io.readers.base.Reader`
subclass under the entry-point group ``spatialflow.readers``, e.g. in its pyproject.toml::

    [project.entry-points."spatialflow.readers"]
    myformat = "mypackage.reader:MyFormatReader"

The entry point's name is the reader's name for ``sf.read(url, reader=...)``. When no reader is
named, they are asked in table order (built-ins first, so a plug-in cannot shadow a built-in
format by accident) and the first whose ``guess_can_open`` says yes opens the URL.

The entry points are looked up again only when the import path changes (an entry added to
``sys.path``, or a package installed into one of its folders, which changes the folder's
modification time and link count): scanning every installed distribution's metadata took ~16 ms of each
``sf.read``.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from spatialflow.errors import FormatError
from spatialflow.io.readers.base import Reader
from spatialflow.io.readers.cosmx import CosmxReader
from spatialflow.io.readers.merscope import MerscopeReader
from spatialflow.io.readers.repository import IcechunkReader
from spatialflow.io.readers.spatialdata import SpatialDataReader
from spatialflow.io.readers.visium_hd import VisiumHDReader
from spatialflow.io.readers.xenium import XeniumReader

__all__ = [
    "BUILTIN_READERS",
    "ENTRY_POINT_GROUP",
    "get_reader",
    "guess_reader",
    "reader_names",
    "readers",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "spatialflow.readers"

#: name -> reader class, in the order formats are guessed
BUILTIN_READERS: dict[str, type[Reader]] = {
    IcechunkReader.name: IcechunkReader,
    SpatialDataReader.name: SpatialDataReader,
    XeniumReader.name: XeniumReader,
    MerscopeReader.name: MerscopeReader,
    CosmxReader.name: CosmxReader,
    VisiumHDReader.name: VisiumHDReader,
}


_found: tuple[tuple, dict[str, type[Reader]]] | None = None


def _path_state() -> tuple:
    state = []
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
            # a new distribution adds a folder (its dist-info): the link count moves even
            # where the modification time is too coarse to
            state.append((entry, st.st_mtime_ns, st.st_nlink))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def _plugins() -> dict[str, type[Reader]]:
    """The plug-in readers, found again when the import path has changed since last time."""
    global _found
    state = _path_state()
    if _found is None or _found[0] != state:
        _found = (state, _load_plugins())
    return dict(_found[1])


def _load_plugins() -> dict[str, type[Reader]]:
    found: dict[str, type[Reader]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_READERS:
            log.warning("reader plug-in %r shadows a built-in reader and is ignored", ep.value)
            continue
        try:
            cls = ep.load()
        except Exception as e:  # a broken plug-in must not break reading everything else
            log.warning("reader plug-in %s = %r failed to load: %s", ep.name, ep.value, e)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Reader)):
            log.warning("reader plug-in %s = %r is not a Reader subclass", ep.name, ep.value)
            continue
        found[ep.name] = cls
    return found


def readers() -> dict[str, Reader]:
    """Every reader, by name, in guessing order (plug-ins found again when ``sys.path``
    or one of its folders changes)."""
    table = {**BUILTIN_READERS, **_plugins()}
    return {name: cls() for name, cls in table.items()}


def reader_names() -> list[str]:
    return list(readers())


def get_reader(name: str) -> Reader:
    table = readers()
    if name not in table:
        raise FormatError(f"no reader named {name!r}; known readers: {', '.join(table)}")
    return table[name]


def guess_reader(url: str | Path, storage_options: dict[str, Any] | None = None) -> Reader:
    """The first reader that recognises ``url``; a FormatError listing every reader tried."""
    table = readers()
    for reader in table.values():
        try:
            if reader.guess_can_open(url, storage_options=storage_options):
                return reader
        except FormatError:
            raise
        except Exception as e:  # a plug-in's guess failing means "not mine"
            log.debug("reader %r could not guess %s: %s", reader.name, url, e)
    tried = "; ".join(f"{r.name} ({r.description})" for r in table.values())
    raise FormatError(
        f"{url}: no reader recognises what is there (it is neither a SpatialData zarr store nor "
        f"an Icechunk repository, nor any other known format). Readers tried: {tried}. "
        "Name one with reader=... if the markers are missing."
    )
