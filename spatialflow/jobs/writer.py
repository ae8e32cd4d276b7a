"""Writing elements into an Icechunk repository: one writable session, one fork, one commit.

The coordinator (this process) opens one writable session, creates every node whose shape it
knows (raster arrays, element groups with their schema) and writes the tables (AnnData, small,
in memory). It forks the session once and builds one Dask graph whose tasks each take that
fork, write one raster chunk region or one points/shapes partition (io/native.py), and return
the fork (plus the partition's rows and bounds). Forks are merged by a tree reduction inside
the graph; the coordinator merges the result, records the partition tables and commits once.

Known traps this avoids (FORMAT.md): ``da.store``/``to_zarr`` into a fork on a distributed
cluster loses writes silently, so every writing task returns its fork; raster tasks write
exactly one zarr chunk-aligned region; jobs never rewrite shared group attributes except the
root's on the first commit. If any task fails, nothing is committed: the branch stays at its
previous snapshot and readers see no trace.
"""

from __future__ import annotations

import itertools
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import zarr

from spatialflow.dataset import Dataset
from spatialflow.elements import KINDS, Points, RasterElement, Shapes, Table
from spatialflow.errors import CommitConflictError, FormatError
from spatialflow.io.native import frame_schema, native_attrs, write_frame_partition
from spatialflow.io.sdformat import CONTAINER_VERSION, create_raster_nodes, write_table

__all__ = ["WritePlan", "commit_dataset", "plan_writes"]

log = logging.getLogger(__name__)
MERGE_FAN_IN = 8


@dataclass
class WritePlan:
    """The delayed work of one commit: write tasks and what to record after them."""

    tasks: list[Any] = field(default_factory=list)  # delayed -> (fork, [partition meta])
    frames: list[tuple[str, int]] = field(default_factory=list)  # (path, n partitions)


def _own(fork: Any) -> Any:
    """A private copy of the fork for this task. On a distributed cluster every task gets one
    by deserialization anyway; under the threaded scheduler tasks would otherwise share one
    ForkSession object across threads, which deadlocks in icechunk's store."""
    return pickle.loads(pickle.dumps(fork))


def _write_region(
    fork: Any, path: str, block: np.ndarray, region: tuple[slice, ...]
) -> tuple[Any, list[dict]]:
    fork = _own(fork)
    arr = zarr.open_array(fork.store, path=path, mode="r+", zarr_format=3)
    arr[region] = block
    return fork, []


def _write_partition(
    fork: Any, path: str, k: int, df: Any, schema: dict, geometry: str | None, axes: tuple[str, ...]
) -> tuple[Any, list[dict]]:
    fork = _own(fork)
    meta = write_frame_partition(fork.store, path, k, df, schema, geometry, axes)
    meta["path"] = path
    return fork, [meta]


def _merge(*results: tuple[Any, list[dict]]) -> tuple[Any, list[dict]]:
    """Merge (fork, metas) results of write tasks into one."""
    forks = [fork for fork, _ in results]
    metas = [m for _, ms in results for m in ms]
    if len(forks) > 1:
        forks[0].merge(*forks[1:])
    return forks[0], metas


def _tree_merge(tasks: list[Any]) -> Any:
    level = tasks
    while len(level) > 1:
        level = [
            dask.delayed(_merge)(*level[i : i + MERGE_FAN_IN])
            for i in range(0, len(level), MERGE_FAN_IN)
        ]
    return dask.delayed(_merge)(level[0]) if level else None


def plan_writes(session: Any, fork_holder: list[Any], ds: Dataset) -> WritePlan:
    """Create nodes for every element of ``ds`` in ``session``; return the delayed writes.

    ``fork_holder`` receives the one fork (created after all nodes exist)."""
    root = zarr.open_group(session.store, mode="a", zarr_format=3)
    if not root.attrs.get("spatialdata_attrs"):
        root.attrs.update(
            {
                "spatialdata_attrs": {"version": CONTAINER_VERSION},
                "spatialflow": {"layout": "native"},
            }
        )
    pending: list[tuple[str, Any]] = []
    for kind in KINDS:
        elements = getattr(ds, kind)
        if not len(elements):
            continue
        kind_group = root.require_group(kind)
        for name, el in elements.items():
            if name in kind_group:
                del kind_group[name]  # replaced by this commit
            path = f"{kind}/{name}"
            if isinstance(el, RasterElement):
                pairs = create_raster_nodes(kind_group.create_group(name), el, name)
                pending.append(("raster", (path, pairs)))
            elif isinstance(el, Table):
                write_table(kind_group, name, el)
            else:
                group = kind_group.create_group(name)
                pending.append(("frame", (path, el, _frame_group(group, el, path))))
    fork = session.fork()
    fork_holder.append(fork)
    plan = WritePlan()
    for what, payload in pending:
        if what == "raster":
            path, pairs = payload
            for k, (src, _) in enumerate(pairs):
                plan.tasks.extend(_raster_tasks(fork, f"{path}/s{k}", src))
        else:
            path, el, (schema, geometry) = payload
            parts = el.data.to_delayed()
            plan.frames.append((path, len(parts)))
            for k, part in enumerate(parts):
                plan.tasks.append(
                    dask.delayed(_write_partition)(fork, path, k, part, schema, geometry, el.axes)
                )
    return plan


def _frame_group(group: zarr.Group, el: Points | Shapes, path: str) -> tuple[dict, str | None]:
    meta = el.data._meta
    if isinstance(el, Shapes):
        geometry = el.geometry_kind
        schema = frame_schema(meta, path, skip=("geometry",))
        extra: dict[str, Any] = {"geometry": geometry}
    else:
        geometry = None
        schema = frame_schema(meta, path)
        sd = {
            k: v
            for k, v in (("feature_key", el.feature_key), ("instance_key", el.instance_key))
            if v
        }
        extra = {"spatialdata_attrs": sd}
    kind = "shapes" if isinstance(el, Shapes) else "points"
    group.attrs.update(native_attrs(kind, el.axes, el.transforms, schema, extra))
    return schema, geometry


def _raster_tasks(fork: Any, path: str, src: Any) -> list[Any]:
    blocks = src.to_delayed()
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in src.chunks]
    tasks = []
    for idx in itertools.product(*[range(len(c)) for c in src.chunks]):
        region = tuple(slice(int(offsets[d][i]), int(offsets[d][i + 1])) for d, i in enumerate(idx))
        tasks.append(dask.delayed(_write_region)(fork, path, blocks[idx], region))
    return tasks


def _record_partitions(session: Any, plan: WritePlan, metas: list[dict]) -> None:
    root = zarr.open_group(session.store, mode="a", zarr_format=3)
    by_path: dict[str, list[dict]] = {}
    for m in metas:
        by_path.setdefault(m["path"], []).append(m)
    for path, n in plan.frames:
        got = sorted(by_path.get(path, []), key=lambda m: m["k"])
        if [m["k"] for m in got] != list(range(n)):
            raise FormatError(
                f"{path}: {len(got)} of {n} partitions were written; nothing committed"
            )
        root[path].attrs.update(
            {"partitions": {"rows": [m["rows"] for m in got], "bounds": [m["bounds"] for m in got]}}
        )


def commit_dataset(
    repo: Any,
    ds: Dataset,
    *,
    branch: str = "main",
    message: str,
    metadata: dict[str, Any] | None = None,
    extra_tasks: Callable[[Any], list[Any]] | None = None,
) -> str:
    """Write every element of ``ds`` into ``branch`` of ``repo`` in one commit; its snapshot id.

    Runs on the active ``distributed`` client if there is one, else on Dask's default
    scheduler. On any failure nothing is committed."""
    import icechunk

    session = repo.writable_session(branch)
    holder: list[Any] = []
    plan = plan_writes(session, holder, ds)
    tasks = list(plan.tasks)
    if extra_tasks is not None:
        tasks.extend(extra_tasks(holder[0]))
    if tasks:
        merged = _tree_merge(tasks)
        fork, metas = dask.compute(merged)[0]
        session.merge(fork)
        _record_partitions(session, plan, metas)
    try:
        return session.commit(
            message, metadata=metadata or {}, rebase_with=icechunk.ConflictDetector()
        )
    except (icechunk.ConflictError, icechunk.RebaseFailedError) as e:
        raise CommitConflictError(
            f"branch {branch!r} moved while this job ran and the changes overlap ({e}); "
            "nothing was committed; rerun the job on the new head"
        ) from e


def write_repository(ds: Dataset, loc: Any, *, branch: str = "main", message: str) -> str:
    """Open (or create) the repository at ``loc`` and commit ``ds`` into ``branch``."""
    from spatialflow import __version__
    from spatialflow.io.repository import open_repository

    repo = open_repository(loc, create=True)
    return commit_dataset(
        repo,
        ds,
        branch=branch,
        message=message,
        metadata={"spatialflow_version": __version__, "elements": [n for n, _ in ds.items()]},
    )
