"""Writing a Dataset into an Icechunk repository: one writable session, one fork, one commit.

This is the native layout's writer (io/ knows formats); ``Dataset.write(format="icechunk")``
calls :func:`write_repository`, and jobs/ calls :func:`commit_dataset` with a job's outputs,
its run metadata and any extra write tasks. jobs/ adds what makes a job a job (configs, run
keys, tags, idempotence, clusters, history) and never writes a node itself.

The coordinator (this process) opens one writable session, creates every node whose shape it
knows (raster arrays, element groups with their schema, an empty ``parts-<token>`` group per
points/shapes element) and writes the tables (AnnData, small, in memory). It forks the session
once and builds one Dask graph whose tasks each take that fork, write one raster chunk region
or one points/shapes partition (io/native.py), and return the fork (plus the partition's rows
and bounds). Forks are merged by a tree reduction inside the graph; the coordinator merges the
result, records the partition tables and commits once.

Known traps this avoids (FORMAT.md): ``da.store``/``to_zarr`` into a fork on a distributed
cluster loses writes silently, so every writing task returns its fork; raster tasks write
exactly one zarr chunk-aligned region; every array is written with ``write_empty_chunks`` so
every chunk exists (the tests tell a complete write from a lossy one by that); jobs never
rewrite shared group attributes except the root's on the first commit. One more, found here:
Icechunk refuses to merge a fork that *creates* nodes at paths its base session *deleted*
("Arrays were both deleted and modified"). Replacing an element deletes it in the coordinator,
so partitions go to a fresh ``parts-<token>`` path, and a task that replaces a node of its own
(e.g. a table written by a task) must delete it in that same task, not in the coordinator.
If any task fails, nothing is committed: the branch stays at its previous snapshot and readers
see no trace.

Raster blocks are taken from the source graph unoptimized, so the scales of a pyramid (which
derive from scale 0) share scale 0's blocks in the one graph instead of recomputing them.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import zarr

from spatialflow.dataset import Dataset
from spatialflow.elements import KINDS
from spatialflow.elements.points import Points
from spatialflow.elements.raster import RasterElement
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import CommitConflictError, FormatError
from spatialflow.io.guards import first_line, storage_errors
from spatialflow.io.links import ATTRS_KEY as LINKS_KEY
from spatialflow.io.links import merged_links_attrs, written_elements
from spatialflow.io.native import frame_schema, native_attrs, write_frame_partition
from spatialflow.io.repository import ref_lock, repository_url
from spatialflow.io.sdformat import CONTAINER_VERSION
from spatialflow.io.sdwriter import WRITE_ALL_CHUNKS, create_raster_nodes, write_table

__all__ = ["WritePlan", "commit_dataset", "plan_writes"]

log = logging.getLogger(__name__)
MERGE_FAN_IN = 8


@dataclass
class WritePlan:
    """The delayed work of one commit: write tasks and what to record after them."""

    tasks: list[Any] = field(default_factory=list)  # delayed -> (fork, [partition meta])
    frames: list[tuple[str, str, int]] = field(default_factory=list)  # path, parts, n


def _own(fork: Any) -> Any:
    """A private copy of the fork for this task. On a distributed cluster every task gets one
    by deserialization anyway; under the threaded scheduler tasks would otherwise share one
    ForkSession object across threads, which deadlocks in icechunk's store."""
    return pickle.loads(pickle.dumps(fork))


def _write_region(
    fork: Any, path: str, block: np.ndarray, region: tuple[slice, ...]
) -> tuple[Any, list[dict]]:
    fork = _own(fork)
    arr = zarr.open_array(fork.store, path=path, mode="r+", zarr_format=3, config=WRITE_ALL_CHUNKS)
    arr[region] = block
    return fork, []


def _write_partition(
    fork: Any,
    target: str,
    path: str,
    k: int,
    df: Any,
    schema: dict,
    geometry: str | None,
    axes: tuple[str, ...],
) -> tuple[Any, list[dict]]:
    fork = _own(fork)
    meta = write_frame_partition(fork.store, target, k, df, schema, geometry, axes)
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


def plan_writes(
    session: Any,
    fork_holder: list[Any],
    ds: Dataset,
    prepare: Callable[[zarr.Group], None] | None = None,
    materialize: bool = False,
) -> WritePlan:
    """Create nodes for every element of ``ds`` in ``session``; return the delayed writes.

    ``prepare(root)`` may create or delete more nodes in the coordinator's session (after the
    elements' nodes, before the fork). ``fork_holder`` receives the one fork (created after
    all nodes exist). Elements linked to external files are recorded as links in the root
    attributes (only when the link attribute changes), not written, unless ``materialize``."""
    root = zarr.open_group(session.store, mode="a", zarr_format=3)
    if not root.attrs.get("spatialdata_attrs"):
        root.attrs.update(
            {
                "spatialdata_attrs": {"version": CONTAINER_VERSION},
                "spatialflow": {"layout": "native"},
            }
        )
    _update_links_attrs(root, ds, materialize)
    written = written_elements(ds, materialize)
    pending: list[tuple[str, Any]] = []
    for kind in KINDS:
        elements = {n: el for n, el in getattr(ds, kind).items() if n in written}
        if not elements:
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
                parts = f"parts-{uuid.uuid4().hex[:12]}"  # new paths: see io/native.py
                group.create_group(parts)
                schema_geometry = _frame_group(group, el, path)
                pending.append(("frame", (path, parts, el.data, schema_geometry, el.axes)))
                if isinstance(el, Points) and el.index is not None and el.index.by_feature:
                    # the index's feature-first copy: a second partition table (io/points_index.py)
                    fparts = f"feature-parts-{uuid.uuid4().hex[:12]}"
                    group.create_group(fparts)
                    copy = el.index.by_feature.data
                    pending.append(
                        ("frame", (f"{path}#by_feature", fparts, copy, schema_geometry, el.axes))
                    )
    if prepare is not None:
        prepare(root)
    fork = session.fork()
    fork_holder.append(fork)
    plan = WritePlan()
    for what, payload in pending:
        if what == "raster":
            path, pairs = payload
            for k, (src, _) in enumerate(pairs):
                plan.tasks.extend(_raster_tasks(fork, f"{path}/s{k}", src))
        else:
            path, parts_group, data, (schema, geometry), axes = payload
            parts = data.to_delayed()
            plan.frames.append((path, parts_group, len(parts)))
            target = f"{path.partition('#')[0]}/{parts_group}"
            for k, part in enumerate(parts):
                plan.tasks.append(
                    dask.delayed(_write_partition)(
                        fork, target, path, k, part, schema, geometry, axes
                    )
                )
    return plan


def _update_links_attrs(root: zarr.Group, ds: Dataset, materialize: bool) -> None:
    """Merge ``ds``'s links and external sources into the root attribute; untouched when
    nothing changes, so jobs that do not change links never edit the shared root attrs."""
    old = root.attrs.get(LINKS_KEY)
    new = merged_links_attrs(old, ds, materialize)
    if new == old:
        return
    if new is None:
        del root.attrs[LINKS_KEY]
    else:
        root.attrs.update({LINKS_KEY: new})


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
        if el.index is not None:
            extra["points_index"] = el.index.attrs()
    kind = "shapes" if isinstance(el, Shapes) else "points"
    group.attrs.update(native_attrs(kind, el.axes, el.transforms, schema, extra))
    return schema, geometry


def _raster_tasks(fork: Any, path: str, src: Any) -> list[Any]:
    # not optimized: keys stay those of the source graph, so the scales of a pyramid, which
    # derive from scale 0, share its blocks in the one graph instead of recomputing them
    blocks = src.to_delayed(optimize_graph=False)
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
    for path, parts_group, n in plan.frames:
        got = sorted(by_path.get(path, []), key=lambda m: m["k"])
        if [m["k"] for m in got] != list(range(n)):
            raise FormatError(
                f"{path}: {len(got)} of {n} partitions were written; nothing committed"
            )
        table = {
            "group": parts_group,
            "rows": [m["rows"] for m in got],
            "bounds": [m["bounds"] for m in got],
        }
        node, _, copy = path.partition("#")  # "<path>#by_feature": an index copy's table
        root[node].attrs.update({f"{copy}_partitions" if copy else "partitions": table})


def _write_tables(
    session: Any, computed: dict[str, Any], finish: Callable[[str, Any], Any] | None
) -> None:
    """Write computed AnnData tables in the coordinator's session (small; replacing any old
    table of that name: a node deleted in the session cannot be recreated through a fork)."""
    if not computed:
        return
    root = zarr.open_group(session.store, mode="a", zarr_format=3)
    group = root.require_group("tables")
    for name, adata in computed.items():
        if name in group:
            del group[name]
        write_table(group, name, Table(finish(name, adata) if finish is not None else adata))


def commit_dataset(
    repo: Any,
    ds: Dataset,
    *,
    branch: str = "main",
    message: str,
    metadata: dict[str, Any] | None = None,
    extra_tasks: Callable[[Any], list[Any]] | None = None,
    prepare: Callable[[zarr.Group], None] | None = None,
    tables: dict[str, Any] | None = None,
    finish_table: Callable[[str, Any], Any] | None = None,
    materialize: bool = False,
    scheduler: Any = None,
) -> str:
    """Write every element of ``ds`` into ``branch`` of ``repo`` in one commit; its snapshot id.

    Runs on ``scheduler`` (e.g. a ``distributed.Client``) when given, else on the active
    ``distributed`` client if there is one, else on Dask's default scheduler. On any failure
    nothing is committed. ``tables`` maps names to delayed AnnData
    objects computed in the same graph and written by the coordinator, each passed through
    ``finish_table(name, adata)`` first when given. ``prepare(root)`` runs in the
    coordinator's session before the fork (e.g. to delete nodes that ``extra_tasks(fork)``, more
    write tasks returning ``(fork, [])``, recreate)."""
    import icechunk

    where = repository_url(repo)
    try:
        session = repo.writable_session(branch)
    except icechunk.IcechunkError as e:
        raise FormatError(
            f"{where}: no branch {branch!r} to commit to ({str(e).splitlines()[0]}); create "
            "it first (repo.create_branch) or write to an existing branch"
        ) from e
    with storage_errors(where, f"write to branch {branch!r}; nothing was committed"):
        return _write_and_commit(
            repo,
            session,
            ds,
            branch,
            message,
            metadata,
            extra_tasks,
            prepare,
            tables,
            finish_table,
            scheduler,
            materialize,
        )


def _write_and_commit(
    repo: Any,
    session: Any,
    ds: Dataset,
    branch: str,
    message: str,
    metadata: dict[str, Any] | None,
    extra_tasks: Callable[[Any], list[Any]] | None,
    prepare: Callable[[zarr.Group], None] | None,
    tables: dict[str, Any] | None,
    finish_table: Callable[[str, Any], Any] | None,
    scheduler: Any,
    materialize: bool,
) -> str:
    import icechunk

    holder: list[Any] = []
    plan = plan_writes(session, holder, ds, prepare, materialize)
    tasks = list(plan.tasks)
    if extra_tasks is not None:
        tasks.extend(extra_tasks(holder[0]))
    lazy_tables = dict(tables or {})
    if tasks or lazy_tables:
        merged = _tree_merge(tasks) if tasks else None
        fork_metas, computed = dask.compute(merged, lazy_tables, scheduler=scheduler)
        if fork_metas is not None:
            fork, metas = fork_metas
            session.merge(fork)
            _record_partitions(session, plan, metas)
        _write_tables(session, computed, finish_table)
    if not session.has_uncommitted_changes:
        log.info("nothing to commit on %r", branch)
        return str(session.snapshot_id)
    try:
        with ref_lock(repo):  # local disk: one committer at a time (see io/repository.py)
            return session.commit(
                message, metadata=metadata or {}, rebase_with=icechunk.ConflictDetector()
            )
    except (icechunk.ConflictError, icechunk.RebaseFailedError) as e:
        raise CommitConflictError(
            f"{repository_url(repo)}: branch {branch!r} moved while this job ran and the "
            f"changes overlap ({first_line(e)}); nothing was committed; rerun the job on the "
            "new head"
        ) from e


def write_repository(
    ds: Dataset, loc: Any, *, branch: str = "main", message: str, materialize: bool = False
) -> str:
    """Open (or create) the repository at ``loc`` and commit ``ds`` into ``branch``."""
    from spatialflow._version import __version__
    from spatialflow.io.location import detect_layout
    from spatialflow.io.repository import open_repository

    if loc.exists() and loc.fs.ls(loc.path) and detect_layout(loc) != "icechunk":
        raise FormatError(
            f"{loc.url}: holds a SpatialData store, not an Icechunk repository; write the "
            "repository to a new path (or use format='spatialdata')"
        )
    repo = open_repository(loc, create=True)
    return commit_dataset(
        repo,
        ds,
        branch=branch,
        message=message,
        metadata={"spatialflow_version": __version__, "elements": [n for n, _ in ds.items()]},
        materialize=materialize,
    )
