"""Ingest: an instrument's output folder (or any store) into an Icechunk repository, one commit.

Decisions:
- The folder is opened first (every cheap check: files, schemas, footers, pixel sizes), and the
  repository is opened or created only then, so a folder that fails those checks leaves the
  target untouched; a problem found while the data is read (a truncated CSV row, polygon
  vertices that are not contiguous) fails the write before its single commit, so readers of the
  repository never see part of a sample.
- Points and shapes keep the partitions the reader made (row groups or blocks of the vendor
  files, each with its bounding box); their bounds are stored with them, so the engine's
  queries and joins prune partitions at once.
- The commit's metadata names the source folder, the reader and a fingerprint of the folder's
  files (names, sizes, modification times), so the history says what was ingested.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from spatialflow.errors import FormatError
from spatialflow.io.location import location

__all__ = ["folder_identity", "ingest"]

log = logging.getLogger(__name__)


def folder_identity(path: str | Path) -> str:
    """A fingerprint of a folder's files: relative names, sizes and modification times."""
    root = Path(path)
    if not root.is_dir():
        raise FormatError(f"{root}: no such directory")
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()


def ingest(
    path: str | Path,
    repo_url: str | Path,
    *,
    reader: str | None = None,
    branch: str = "main",
    message: str | None = None,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    """Read ``path`` (``reader`` named or guessed) and commit it into ``repo_url``; the snapshot."""
    from spatialflow._version import __version__
    from spatialflow.io import read
    from spatialflow.io.icechunk_writer import commit_dataset
    from spatialflow.io.location import detect_layout
    from spatialflow.io.readers.registry import guess_reader
    from spatialflow.io.repository import open_repository

    name = reader or guess_reader(path).name
    ds = read(path, reader=name, **options)
    loc = location(repo_url, storage_options)
    if loc.exists() and loc.fs.ls(loc.path) and detect_layout(loc) != "icechunk":
        raise FormatError(
            f"{loc.url}: holds something other than an Icechunk repository; ingest into a new "
            "path or an existing repository"
        )
    repo = open_repository(loc, create=True)
    meta = {
        "spatialflow_version": __version__,
        "ingest": {
            "source": str(path),
            "reader": name,
            "options": json.loads(json.dumps(options, default=str)),
            "source_identity": folder_identity(path) if Path(path).is_dir() else None,
        },
        "elements": [n for n, _ in ds.items()],
    }
    log.info("ingesting %s (%s reader): %d elements", path, name, len(ds))
    return commit_dataset(
        repo, ds, branch=branch, message=message or f"ingest {name} {path}", metadata=meta
    )
