"""The clusters a job runs on: ``cluster: {kind: ...}`` in a job config.

Kinds:

* ``local`` (default): a ``distributed.LocalCluster`` with ``workers``, ``threads_per_worker``,
  ``memory_limit``.
* ``address``: a running scheduler, ``address: tcp://host:8786`` (the older ``scheduler:``
  field means the same).
* ``slurm``, ``pbs``, ``sge``: dask-jobqueue's ``SLURMCluster`` / ``PBSCluster`` /
  ``SGECluster``; ``jobs`` is how many batch jobs to submit (``cluster.scale(jobs=...)``) and
  every other field (``cores``, ``memory``, ``queue``, ``walltime``, ``account``,
  ``job_extra_directives`` ...) goes to the cluster class unchanged.
* ``kubernetes``: dask-kubernetes' operator ``KubeCluster`` (the optional extra
  ``spatialflow[kubernetes]``); ``workers`` is the worker count, other fields (``image``,
  ``resources``, ``env``, ``namespace`` ...) go to the class.

Decisions: options are checked against the cluster class's own signature (and its job class's
for dask-jobqueue) when the config is validated, so a typo fails before any work with the list
of accepted names; dask-jobqueue's and dask-kubernetes' defaults from the Dask config still
apply to what is not given. ``describe`` gives what ``spatialflow run --dry-run`` prints: the
batch script from dask-jobqueue's own ``job_script()``, or the Kubernetes cluster spec.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from spatialflow.errors import ConfigError

__all__ = ["CLUSTER_KINDS", "JOBQUEUE", "describe", "start", "validate_options"]

CLUSTER_KINDS = ("local", "address", "slurm", "pbs", "sge", "kubernetes")
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster"}
KUBERNETES_HINT = (
    "the 'kubernetes' cluster kind needs dask-kubernetes: install it with "
    "pip install 'spatialflow[kubernetes]' (or: uv sync --extra kubernetes)"
)
# options a kind takes besides those of its cluster class
_OWN = {"jobs": int}


def _jobqueue_class(kind: str) -> Any:
    try:
        mod = importlib.import_module("dask_jobqueue")
    except ImportError as e:
        raise ConfigError(
            f"the {kind!r} cluster kind needs dask-jobqueue: install it with "
            "pip install 'spatialflow[cluster]'"
        ) from e
    return getattr(mod, JOBQUEUE[kind])


def _kubernetes_class() -> Any:
    try:
        mod = importlib.import_module("dask_kubernetes.operator")
    except ImportError as e:
        raise ConfigError(KUBERNETES_HINT) from e
    return mod.KubeCluster


def _accepted(kind: str) -> set[str] | None:
    """Names the cluster class of ``kind`` accepts (None: anything, cannot tell)."""
    if kind in JOBQUEUE:
        cls = _jobqueue_class(kind)
        names: set[str] = set()
        for c in (cls, getattr(cls, "job_cls", None)):
            for klass in inspect.getmro(c) if c is not None else ():
                if "__init__" in vars(klass):
                    names |= set(inspect.signature(klass.__init__).parameters)
        return names - {"self", "scheduler", "job_cls", "loop", "asynchronous", "kwargs"}
    if kind == "kubernetes":
        try:
            cls = _kubernetes_class()
        except ConfigError:
            return None  # checked when the cluster is started or described
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return set(params) - {"self"}
    return set()


def validate_options(kind: str, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The options of a ``slurm``/``pbs``/``sge``/``kubernetes`` cluster, checked by name."""
    out = dict(options)
    if "jobs" in out and (
        not isinstance(out["jobs"], int) or isinstance(out["jobs"], bool) or out["jobs"] < 1
    ):
        raise ConfigError(f"{where}.jobs: expected a positive integer (batch jobs to submit)")
    if "cores" in out and (not isinstance(out["cores"], int) or out["cores"] < 1):
        raise ConfigError(f"{where}.cores: expected a positive integer")
    for key in ("memory", "walltime", "queue", "account", "image", "namespace"):
        if key in out and not isinstance(out[key], str):
            raise ConfigError(f"{where}.{key}: expected a string, got {out[key]!r}")
    accepted = _accepted(kind)
    if accepted is not None:
        unknown = sorted(set(out) - accepted - set(_OWN))
        if unknown:
            raise ConfigError(
                f"{where}: {unknown} are not options of the {kind!r} cluster; "
                f"it takes {sorted(accepted | set(_OWN))}"
            )
    return out


# --- starting and describing ----------------------------------------------------------------
def _jobqueue(cfg: Any, preview: bool = False) -> Any:
    opts = {k: v for k, v in cfg.options.items() if k not in _OWN}
    if preview:  # a throwaway scheduler: no fixed dashboard port
        opts.setdefault("scheduler_options", {"dashboard_address": ":0"})
    return _jobqueue_class(cfg.kind)(**opts)


@contextlib.contextmanager
def start(cfg: Any) -> Iterator[Any]:
    """A cluster object for ``cfg`` (slurm/pbs/sge/kubernetes), scaled, closed on exit."""
    if cfg.kind in JOBQUEUE:
        cl = _jobqueue(cfg)
        cl.scale(jobs=int(cfg.options.get("jobs", 1)))
    elif cfg.kind == "kubernetes":
        opts = dict(cfg.options)
        opts.setdefault("n_workers", cfg.workers)
        opts.setdefault("name", "spatialflow")
        cl = _kubernetes_class()(**opts)
    else:
        raise ConfigError(f"cluster kind {cfg.kind!r} is not started here")
    try:
        yield cl
    finally:
        cl.close()


def describe(cfg: Any) -> str:
    """What would be started: the batch job script, the pod spec, or a one-line summary."""
    if cfg.kind == "local":
        return (
            f"cluster: local, {cfg.workers} worker process(es) x {cfg.threads_per_worker} "
            f"thread(s), {cfg.memory_limit} each"
        )
    if cfg.kind == "address":
        return f"cluster: the running scheduler at {cfg.scheduler}"
    if cfg.kind in JOBQUEUE:
        cl = _jobqueue(cfg, preview=True)
        try:
            script = cl.job_script()
        finally:
            cl.close()
        jobs = int(cfg.options.get("jobs", 1))
        return f"# cluster: {cfg.kind}, {jobs} job(s) of this script\n{script}"
    import yaml

    _kubernetes_class()
    from dask_kubernetes.operator import make_cluster_spec  # type: ignore[import-not-found]

    opts = {k: v for k, v in cfg.options.items() if k in {"image", "resources", "env"}}
    spec = make_cluster_spec(name="spatialflow", n_workers=cfg.workers, **opts)
    return "# cluster: kubernetes (DaskCluster resource)\n" + yaml.safe_dump(spec, sort_keys=False)
