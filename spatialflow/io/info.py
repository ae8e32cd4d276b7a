"""What a store holds, from metadata only: the layout, each element's kind, size and coordinate
systems, bytes on disk, and for an Icechunk repository its branches and last commits.

Row counts of points and shapes come from metadata too (parquet footers, the native partition
table), so describing a store of a billion points reads no point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import zarr

from spatialflow.dataset import Dataset
from spatialflow.elements import KINDS
from spatialflow.elements.points import Points
from spatialflow.elements.raster import RasterElement
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import FormatError
from spatialflow.io.location import Location, detect_layout, location

__all__ = ["ElementInfo", "StoreInfo", "describe"]

LAYOUT_NAMES = {
    "spatialdata": "SpatialData zarr v3 store (container 0.2)",
    "spatialdata-v2": "SpatialData legacy zarr v2 store (container 0.1)",
    "icechunk": "Icechunk repository (spatialflow native layout)",
}


@dataclass(frozen=True)
class ElementInfo:
    kind: str
    name: str
    size: str
    coordinate_systems: list[str]
    rows: int | None = None


@dataclass
class StoreInfo:
    url: str
    layout: str
    elements: list[ElementInfo]
    coordinate_systems: list[str]
    bytes_on_disk: int | None
    branch: str | None = None
    snapshot: str | None = None
    branches: list[str] = field(default_factory=list)
    commits: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "layout": self.layout,
            "bytes_on_disk": self.bytes_on_disk,
            "coordinate_systems": self.coordinate_systems,
            "elements": [e.__dict__ for e in self.elements],
            "branch": self.branch,
            "snapshot": self.snapshot,
            "branches": self.branches,
            "commits": [
                {
                    "id": c.id,
                    "message": c.message,
                    "written_at": c.written_at.isoformat(),
                    "metadata": c.metadata,
                }
                for c in self.commits
            ],
        }

    def render(self) -> str:
        """A human-readable description."""
        lines = [f"{self.url}: {LAYOUT_NAMES.get(self.layout, self.layout)}"]
        if self.bytes_on_disk is not None:
            lines.append(f"  on disk: {_human_bytes(self.bytes_on_disk)}")
        if self.branch is not None:
            at = f" at snapshot {self.snapshot}" if self.snapshot else ""
            lines.append(f"  branch: {self.branch}{at} (branches: {', '.join(self.branches)})")
        for kind in KINDS:
            mine = [e for e in self.elements if e.kind == kind]
            if mine:
                lines.append(f"  {kind}:")
            for e in mine:
                cs = ", ".join(e.coordinate_systems) or "-"
                lines.append(f"    {e.name}: {e.size}  [coordinate systems: {cs}]")
        if not self.elements:
            lines.append("  (no elements)")
        lines.append(f"  coordinate systems: {', '.join(self.coordinate_systems) or '-'}")
        if self.commits:
            lines.append(f"  last commits on {self.branch}:")
            for c in self.commits:
                when = c.written_at.strftime("%Y-%m-%d %H:%M:%S")
                lines.append(f"    {c.id}  {when}  {c.message}")
        return "\n".join(lines)


def _human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


def describe(
    url: str | Path,
    *,
    branch: str = "main",
    snapshot: str | None = None,
    storage_options: dict[str, Any] | None = None,
    n_commits: int = 5,
) -> StoreInfo:
    """Describe the store at ``url`` (any layout) from its metadata."""
    from spatialflow.io import read

    loc = location(url, storage_options)
    layout = detect_layout(loc)
    ds = read(url, branch=branch, snapshot=snapshot, storage_options=storage_options)
    rows = _rows(loc, layout, ds, branch, snapshot)
    info = StoreInfo(
        url=str(url),
        layout=layout,
        elements=[_element_info(kind, name, el, rows.get(name)) for kind, name, el in _all(ds)],
        coordinate_systems=ds.coordinate_systems,
        bytes_on_disk=_du(loc),
    )
    if layout == "icechunk":
        from spatialflow.io.repository import branches, history

        info.branch = branch if snapshot is None else None
        info.snapshot = snapshot
        info.branches = branches(loc)
        if snapshot is None:
            info.commits = history(loc, branch, limit=n_commits)
            info.snapshot = info.commits[0].id if info.commits else None
    return info


def _all(ds: Dataset) -> list[tuple[str, str, Any]]:
    return [(kind, name, el) for kind in KINDS for name, el in getattr(ds, kind).items()]


def _du(loc: Location) -> int | None:
    try:
        return int(loc.fs.du(loc.path, total=True))
    except (OSError, NotImplementedError, TypeError, ValueError):
        return None


def _element_info(kind: str, name: str, el: Any, rows: int | None) -> ElementInfo:
    return ElementInfo(kind, name, _size(el, rows), sorted(el.transforms), rows)


def _size(el: Any, rows: int | None) -> str:
    if isinstance(el, RasterElement):
        shape = " x ".join(f"{el.scale(0).sizes[d]}{d}" for d in el.dims)
        extra = f", channels {list(map(str, el.channel_names))}" if el.kind == "images" else ""
        return f"{shape} {el.dtype}, {el.n_scales} scale(s){extra}"
    if isinstance(el, Table):
        return el.summary()
    n = f"{rows:,}" if rows is not None else "?"
    parts = f"{el.npartitions} partition(s)"
    if isinstance(el, Points):
        feat = (
            f", feature {el.feature_key!r} ({len(el.feature_categories)} categories)"
            if el.feature_key
            else ""
        )
        return f"{n} points in {parts}, columns {list(el.data.columns)}{feat}"
    if isinstance(el, Shapes):
        return f"{n} {el.geometry_kind} in {parts}"
    return el.summary()


def _rows(
    loc: Location, layout: str, ds: Dataset, branch: str, snapshot: str | None
) -> dict[str, int]:
    """Row counts of points and shapes, from metadata."""
    out: dict[str, int] = {}
    if layout == "icechunk":
        from spatialflow.io.repository import open_repository

        repo = open_repository(loc)
        session = (
            repo.readonly_session(snapshot_id=snapshot)
            if snapshot
            else repo.readonly_session(branch=branch)
        )
        root = zarr.open_group(session.store, mode="r", zarr_format=3)
        for kind in ("points", "shapes"):
            for name in getattr(ds, kind):
                parts = root[f"{kind}/{name}"].attrs.get("partitions", {})
                out[name] = int(sum(parts.get("rows", [])))
        return out
    for name in ds.points:
        directory = loc.join("points", name, "points.parquet")
        files = [f for f in loc.fs.ls(directory, detail=False) if f.endswith(".parquet")]
        out[name] = sum(_parquet_rows(loc, f) for f in files)
    for name in ds.shapes:
        file = loc.join("shapes", name, "shapes.parquet")
        if loc.fs.exists(file):
            out[name] = _parquet_rows(loc, file)
    return out


def _parquet_rows(loc: Location, path: str) -> int:
    try:
        with loc.fs.open(path, "rb") as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except OSError as e:
        raise FormatError(f"{path}: unreadable parquet file ({e})") from e
