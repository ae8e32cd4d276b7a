"""Running a job: inputs -> plans -> one Dask graph -> one Icechunk commit, idempotently.

The run key is a hash of the config (what is computed and where it goes, not the commit
message), the input snapshot ids (for Icechunk inputs; for plain stores a hash of their root
metadata) and the spatialflow version. A run whose key is already in the branch's history does
nothing (unless forced). Otherwise every output's plan joins one graph that writes on the
workers into one fork of one writable session; the session commits once, with the run key,
inputs, config, versions and timings as metadata, and the commit is tagged
``run/<date>-<key8>``. A conflicting concurrent commit is rebased when the changes are
disjoint; when they overlap (the same node, e.g. two first commits both writing the root
attributes) nothing is committed and the job is redone on the new head, at most
``COMMIT_ATTEMPTS`` times with jittered backoff, then
:class:`~spatialflow.errors.CommitConflictError`. Before a retry the run key is looked up
again: if the same run landed meanwhile (a twin process), this one is a no-op, so history
shows each run once.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from spatialflow.dataset import Dataset
from spatialflow.errors import CommitConflictError, ConfigError, SpatialFlowError
from spatialflow.jobs.config import ClusterConfig, JobConfig, Step
from spatialflow.jobs.progress import no_progress

__all__ = ["RunResult", "cluster", "find_run", "run_job", "run_key"]

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 6  # a job whose commit conflicts is redone on the new head at most 5 times


@dataclass
class RunResult:
    status: str  # "committed" | "no-op" | "dry-run"
    run_key: str
    snapshot: str | None = None
    tag: str | None = None
    elements: list[str] = field(default_factory=list)
    seconds: float = 0.0
    explain: str = ""
    cluster: str = ""  # dry run: what would be started (a job script, a pod spec ...)


# --- inputs and the run key ------------------------------------------------------------------
def _input_identity(url: str, branch: str, snapshot: str | None) -> str:
    from spatialflow.io.location import detect_layout, location

    loc = location(url)
    if loc.is_local and not any(loc.exists(m) for m in ("repo", "zarr.json", ".zgroup")):
        from spatialflow.io.ingest import folder_identity  # a vendor folder

        return folder_identity(loc.path)
    if detect_layout(loc) == "icechunk":
        from spatialflow.io.repository import open_repository

        repo = open_repository(loc)
        if snapshot is not None:
            return snapshot
        try:
            return repo.lookup_branch(branch)
        except Exception as e:  # icechunk raises its own error types
            raise ConfigError(f"input {url}: no branch {branch!r} ({e})") from e
    meta = loc.read_json("zarr.json") if loc.exists("zarr.json") else loc.read_json(".zattrs")
    return "sha256:" + hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def run_key(config: JobConfig, input_ids: dict[str, str]) -> str:
    from spatialflow._version import __version__

    payload = {k: v for k, v in config.source.items() if k != "commit"}
    payload["branch"] = config.branch
    blob = json.dumps(
        {"config": payload, "inputs": input_ids, "version": __version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def find_run(repo: Any, branch: str, key: str) -> str | None:
    """The snapshot id on ``branch`` whose commit carries run key ``key``, if any."""
    try:
        for snap in repo.ancestry(branch=branch):
            if (snap.metadata or {}).get("run_key") == key:
                return snap.id
    except Exception:  # a new repository has an empty main branch
        return None
    return None


# --- the cluster -----------------------------------------------------------------------------
@contextlib.contextmanager
def cluster(cfg: ClusterConfig, scheduler: str | None = None) -> Iterator[Any]:
    """A distributed Client: to ``scheduler`` (or the config's), or on a new cluster of the
    config's kind (local, or slurm/pbs/sge/kubernetes through jobs/clusters.py).

    Not made the global default (nor ``as_current``, which sets dask's global config): jobs
    run in threads of one process must not swap each other's clients, so the commit's graph
    is handed to this client explicitly."""
    from distributed import Client, LocalCluster

    address = scheduler or cfg.scheduler
    if not address and cfg.kind not in ("local", "address"):
        from spatialflow.jobs.clusters import start

        with start(cfg) as batch, Client(batch, set_as_default=False) as client:
            yield client
        return
    if address:
        try:
            client = Client(address, timeout=cfg.timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise SpatialFlowError(
                f"cannot reach the Dask scheduler at {address} within "
                f"{cfg.timeout:g} s ({e}); check the address or start it "
                "with 'dask scheduler'"
            ) from e
        try:
            yield client
        finally:
            client.close()
        return
    with (
        LocalCluster(
            n_workers=cfg.workers,
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_limit,
            processes=True,
            dashboard_address=":0",
        ) as lc,
        Client(lc, set_as_default=False) as client,
    ):
        yield client


# --- building the outputs ----------------------------------------------------------------------
def _outputs(config: JobConfig, inputs: dict[str, Dataset]) -> tuple[Dataset, dict[str, Any]]:
    """Elements (lazy) and lazy tables produced by the steps."""
    elements = Dataset()
    tables: dict[str, Any] = {}
    for i, step in enumerate(config.steps):
        ds = inputs[step.params["input"]]
        where = f"steps[{i}].{step.kind}"
        try:
            STEP_RUNNERS[step.kind](step, ds, elements, tables)
        except SpatialFlowError as e:
            raise ConfigError(f"{where}: {e}") from e
    return elements, tables


def _input_element(ds: Dataset, name: str) -> Any:
    if name not in ds:
        raise ConfigError(f"no element {name!r} in the input; it has {[n for n, _ in ds.items()]}")
    return ds[name]


def _put(elements: Dataset, name: str, el: Any) -> None:
    getattr(elements, el.kind)[name] = el


def _aggregate_step(step: Step, ds: Dataset, elements: Dataset, tables: dict[str, Any]) -> None:
    from spatialflow.ops.aggregate import aggregate

    p = step.params
    tables[step.output] = aggregate(
        ds,
        p["values"],
        p["by"],
        value_key=p.get("value_key"),
        agg=p.get("agg", "count"),
        coordinate_system=p.get("coordinate_system", "global"),
        fractions=p.get("fractions", False),
        table_name=step.output,
        strategy=p.get("strategy", "auto"),
    )


def _query_step(step: Step, ds: Dataset, elements: Dataset, tables: dict[str, Any]) -> None:
    from spatialflow.ops.query import bounding_box_query

    p = step.params
    out = bounding_box_query(
        _input_element(ds, p["element"]),
        axes=p["axes"],
        min_coordinate=p["min"],
        max_coordinate=p["max"],
        target_coordinate_system=p["coordinate_system"],
        features=p.get("features"),
    )
    if out is None:
        raise ConfigError("the query selects nothing")
    _put(elements, step.output, out)


def _transform_step(step: Step, ds: Dataset, elements: Dataset, tables: dict[str, Any]) -> None:
    from spatialflow.ops.transform import transform

    p = step.params
    _put(elements, step.output, transform(_input_element(ds, p["element"]), p["to"]))


def _ingest_step(step: Step, ds: Dataset, elements: Dataset, tables: dict[str, Any]) -> None:
    prefix = step.params.get("prefix", "")
    for name, el in ds.items():
        _put(elements, f"{prefix}{name}", el)


def _index_points_step(step: Step, ds: Dataset, elements: Dataset, tables: dict[str, Any]) -> None:
    from spatialflow.ops.index import DEFAULT_ROW_GROUP_ROWS, index_points

    p = step.params
    _input_element(ds, p["element"])
    out = index_points(
        ds,
        p["element"],
        limit=p.get("limit", 10_000),
        seed=p.get("seed", 0),
        row_group_rows=p.get("row_group_rows", DEFAULT_ROW_GROUP_ROWS),
    )
    _put(elements, step.output, out)


def _stitch_step(step: Step, ds: Dataset, elements: Dataset, tables: dict[str, Any]) -> None:
    from spatialflow.ops.stitch import stitch

    p = step.params
    blending = p.get("blending", "cosine")
    tables[step.output] = StitchStep(
        stitch(
            ds,
            p["tiles"],
            coordinate_system=p.get("coordinate_system", "global"),
            registered=p.get("registered", "registered"),
            transform=p.get("transform", "translation"),
            channel=p.get("channel", 0),
            blending=None if blending == "none" else blending,
        ),
        ds,
        step.output,
        p.get("registered", "registered"),
        p.get("write_tiles", True),
    )


StepRunner = Callable[[Step, Dataset, Dataset, dict[str, Any]], None]
# one entry per step kind of jobs/config.py's STEP_FIELDS: (step, input, outputs, lazy tables)
STEP_RUNNERS: dict[str, StepRunner] = {
    "aggregate": _aggregate_step,
    "query": _query_step,
    "transform": _transform_step,
    "ingest": _ingest_step,
    "index_points": _index_points_step,
    "stitch": _stitch_step,
}


# --- stitch steps: registration runs on the cluster, then fusion joins the one commit --------
@dataclass
class StitchStep:
    """A pending ``stitch`` step: its registration must run (on the job's cluster) before the
    fused image's graph exists; the fused image and the registered tiles then join the one
    commit, and the registration report goes into the commit metadata."""

    lazy: Any
    ds: Dataset
    output: str
    registered: str
    write_tiles: bool

    def explain(self, print_: bool = True) -> str:
        return self.lazy.explain(print_=print_)

    def resolve(self, elements: Dataset, client: Any = None) -> dict[str, Any]:
        result = self.lazy.compute(**({"scheduler": client} if client is not None else {}))
        elements.images[self.output] = result.image
        if self.write_tiles:
            for name, el in result.registration.apply(self.ds, self.registered).items():
                if name in result.registration.transforms:
                    elements.images[name] = el
        return result.registration.report()


def _resolve_stitches(
    tables: dict[str, Any], elements: Dataset, metadata: dict, client: Any = None
) -> None:
    for name in [n for n, t in tables.items() if isinstance(t, StitchStep)]:
        step = tables.pop(name)
        metadata.setdefault("stitch", {})[name] = step.resolve(elements, client)


# --- running -----------------------------------------------------------------------------------
def run_job(
    config: JobConfig,
    *,
    scheduler: str | None = None,
    branch: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    on_client: Callable[[Any], None] | None = None,
    step: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> RunResult:
    """Run ``config`` (see the module doc). ``step(description)`` wraps the long step (the
    computation and the commit), e.g. to show progress (jobs/progress.py)."""
    from spatialflow._version import __version__
    from spatialflow.io import read
    from spatialflow.io.icechunk_writer import commit_dataset
    from spatialflow.io.location import location
    from spatialflow.io.repository import open_repository

    t0 = time.perf_counter()
    if branch:
        config = JobConfig(
            config.repository,
            config.inputs,
            config.steps,
            config.cluster,
            branch,
            config.message,
            config.source,
            config.base_dir,
        )
    ids, inputs = {}, {}
    for name, spec in config.inputs.items():
        url = config.resolve(spec.url)
        try:
            ids[name] = _input_identity(url, spec.branch, spec.snapshot)
            inputs[name] = read(url, spec.reader, branch=spec.branch, snapshot=spec.snapshot)
        except SpatialFlowError as e:
            raise ConfigError(f"inputs.{name}: {e}") from e
    key = run_key(config, ids)
    elements, tables = _outputs(config, inputs)
    names = [n for n, _ in elements.items()] + list(tables)
    explain = "\n\n".join(
        [f"# {n}\n{t.explain(print_=False)}" for n, t in tables.items()]
        + [f"# {n}\n{el!r}" for n, el in elements.items()]
    )
    if dry_run:
        from spatialflow.jobs.clusters import describe

        return RunResult(
            "dry-run",
            key,
            elements=names,
            explain=explain,
            seconds=time.perf_counter() - t0,
            cluster=describe(config.cluster) if not scheduler else f"cluster: {scheduler}",
        )
    repo = open_repository(location(config.resolve(config.repository)), create=True)
    previous = find_run(repo, config.branch, key)
    if previous is not None and not force:
        return RunResult(
            "no-op", key, snapshot=previous, elements=names, seconds=time.perf_counter() - t0
        )
    metadata = {
        "run_key": key,
        "inputs": ids,
        "config": config.source,
        "versions": _versions(__version__),
        "outputs": names,
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(),
    }

    with cluster(config.cluster, scheduler) as client:
        if on_client is not None:
            on_client(client)
        _resolve_stitches(tables, elements, metadata, client)
        metadata["timings"] = {"prepare_seconds": round(time.perf_counter() - t0, 3)}
        with (step or no_progress)(f"job: {config.message}"):
            for attempt in range(COMMIT_ATTEMPTS):
                try:
                    snap = commit_dataset(
                        repo,
                        elements,
                        branch=config.branch,
                        message=config.message,
                        metadata=metadata,
                        tables={n: t.to_delayed() for n, t in tables.items()},
                        finish_table=_finish_table,
                        scheduler=client,
                    )
                    break
                except CommitConflictError:
                    # nothing was committed; the branch moved and the changes overlap. Redo the
                    # whole job on the new head (bounded), unless this very run landed meanwhile.
                    landed = find_run(repo, config.branch, key)
                    if landed is not None and not force:
                        return RunResult("no-op", key, snapshot=landed, elements=names)
                    if attempt + 1 == COMMIT_ATTEMPTS:
                        raise
                    delay = min(8.0, 0.25 * 2**attempt) * (0.5 + random.random())
                    log.warning(
                        "commit conflict (attempt %d); retrying in %.1f s", attempt + 1, delay
                    )
                    time.sleep(delay)
    tag = _tag(repo, key, snap)
    return RunResult(
        "committed",
        key,
        snapshot=snap,
        tag=tag,
        elements=names,
        seconds=time.perf_counter() - t0,
        explain=explain,
    )


def _finish_table(name: str, adata: Any) -> Any:
    from spatialflow.plan.lazy import finish_table

    return finish_table(adata, f"table {name!r}")


def _versions(ours: str) -> dict[str, str]:
    import importlib.metadata as md

    out = {"spatialflow": ours}
    for pkg in ("dask", "distributed", "icechunk", "zarr", "anndata", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _tag(repo: Any, key: str, snapshot: str) -> str:
    from spatialflow.io.repository import ref_lock

    base = f"run/{_dt.date.today().isoformat()}-{key[:8]}"
    with ref_lock(repo):
        existing = set(repo.list_tags())
        name, n = base, 1
        while name in existing:  # tags are immutable and never reusable (a forced rerun)
            n += 1
            name = f"{base}-{n}"
        repo.create_tag(name, snapshot_id=snapshot)
    return name
