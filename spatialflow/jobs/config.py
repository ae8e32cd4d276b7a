"""Job configuration: a YAML file validated field by field before any work starts.

::

    repository: ./results.icechunk          # the target Icechunk repository (created if missing)
    inputs:
      sample:                               # a name the steps refer to
        url: ./sample.icechunk              # any store sf.read opens
        branch: main                        # or snapshot: <id> (Icechunk inputs only)
    steps:
      - aggregate: {input: sample, values: transcripts, by: cells, value_key: gene,
                    agg: count, output: transcripts_by_cells}
      - query: {input: sample, element: transcripts, axes: [x, y], min: [0, 0],
                max: [500, 500], coordinate_system: global, output: transcripts_roi}
      - transform: {input: sample, element: cells, to: aligned, output: cells_aligned}
      - index_points: {input: sample, element: transcripts, limit: 10000, seed: 0,
                       output: transcripts_indexed}
      - stitch: {input: sample, tiles: "tile_*", coordinate_system: global,
                 registered: registered, output: fused}   # + the tiles, registered
    cluster:                                # optional; default: a local cluster
      workers: 2
      threads_per_worker: 1
      memory_limit: 4GiB
      # or {kind: address, address: tcp://host:8786}, or a batch system through dask-jobqueue:
      # {kind: slurm, cores: 4, memory: 16GB, queue: normal, walltime: "01:00:00", jobs: 2}
      # (pbs, sge alike), or {kind: kubernetes, workers: 4, image: ...}: see jobs/clusters.py
    commit:
      branch: main
      message: nightly aggregation

Every error is a :class:`~spatialflow.errors.ConfigError` naming the field
(``steps[1].aggregate.agg``) and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spatialflow.elements.base import check_name
from spatialflow.errors import ConfigError, SpatialFlowError

__all__ = ["ClusterConfig", "JobConfig", "Step", "load_config", "parse_config"]

STEP_FIELDS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    # field: (types, required)
    "aggregate": {
        "input": (str, True),
        "values": (str, True),
        "by": (str, True),
        "value_key": (str, False),
        "agg": (str, False),
        "fractions": (bool, False),
        "coordinate_system": (str, False),
        "output": (str, True),
        "strategy": (str, False),
    },
    "query": {
        "input": (str, True),
        "element": (str, True),
        "axes": (list, True),
        "min": (list, True),
        "max": (list, True),
        "coordinate_system": (str, True),
        "features": (list, False),
        "output": (str, True),
    },
    "transform": {
        "input": (str, True),
        "element": (str, True),
        "to": (str, True),
        "output": (str, True),
    },
    # every element of the input (e.g. a vendor folder, inputs.<name>.reader) into the commit
    "ingest": {
        "input": (str, True),
        "prefix": (str, False),
    },
    "index_points": {
        "input": (str, True),
        "element": (str, True),
        "limit": (int, False),
        "seed": (int, False),
        "row_group_rows": (int, False),
        "output": (str, True),
    },
    "stitch": {
        "input": (str, True),
        "tiles": ((str, list), True),  # names or a glob pattern
        "coordinate_system": (str, False),
        "registered": (str, False),  # the coordinate system of the result (default registered)
        "transform": (str, False),
        "channel": ((int, str), False),
        "blending": (str, False),  # cosine | linear | none
        "write_tiles": (bool, False),  # also write the tiles with the registered transforms
        "output": (str, True),
    },
}
AGGS = ("count", "sum", "mean", "min", "max")


@dataclass(frozen=True)
class InputConfig:
    url: str
    branch: str = "main"
    snapshot: str | None = None
    reader: str | None = None  # a reader name (vendor folders); guessed when None


@dataclass(frozen=True)
class ClusterConfig:
    scheduler: str | None = None  # the address of kind "address"
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "4GiB"
    timeout: float = 20.0
    kind: str = "local"  # one of jobs/clusters.py CLUSTER_KINDS
    options: dict[str, Any] = field(default_factory=dict)  # passed to the cluster class


@dataclass(frozen=True)
class Step:
    kind: str
    params: dict[str, Any]

    @property
    def output(self) -> str:
        return str(self.params["output"])


@dataclass(frozen=True)
class JobConfig:
    repository: str
    inputs: dict[str, InputConfig]
    steps: list[Step]
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    branch: str = "main"
    message: str = "spatialflow job"
    source: dict[str, Any] = field(default_factory=dict)  # the parsed YAML, for the run key
    base_dir: str = "."

    def resolve(self, url: str) -> str:
        """A relative local path is relative to the config file's folder."""
        if "://" in url or Path(url).is_absolute():
            return url
        return str((Path(self.base_dir) / url).resolve())


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {
        str: "a string",
        bool: "true/false",
        list: "a list",
        int: "an integer",
        dict: "a mapping",
    }.get(t, t.__name__)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(d: dict[str, Any], allowed: set[str] | dict, where: str) -> None:
    extra = sorted(set(d) - set(allowed))
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {extra}; allowed: {sorted(allowed)}")


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a YAML job config."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from e
    return parse_config(data, base_dir=str(p.parent.resolve()), where=str(p))


def parse_config(data: Any, base_dir: str = ".", where: str = "config") -> JobConfig:
    d = _mapping(data, where)
    _unknown(d, {"repository", "inputs", "steps", "cluster", "commit"}, where)
    for key in ("repository", "inputs", "steps"):
        if key not in d:
            raise ConfigError(f"{where}: missing required field {key!r}")
    if not isinstance(d["repository"], str) or not d["repository"]:
        raise ConfigError(f"{where}.repository: expected a path or URL string")
    inputs = _inputs(_mapping(d["inputs"], f"{where}.inputs"), f"{where}.inputs")
    steps = _steps(d["steps"], inputs, f"{where}.steps")
    cluster = _cluster(d.get("cluster", {}) or {}, f"{where}.cluster")
    commit = _mapping(d.get("commit", {}) or {}, f"{where}.commit")
    _unknown(commit, {"branch", "message"}, f"{where}.commit")
    branch = commit.get("branch", "main")
    message = commit.get("message", "spatialflow job")
    for key, val in (("branch", branch), ("message", message)):
        if not isinstance(val, str) or not val:
            raise ConfigError(f"{where}.commit.{key}: expected a non-empty string")
    cfg = JobConfig(d["repository"], inputs, steps, cluster, branch, message, d, base_dir)
    _no_overwritten_inputs(cfg, where)
    return cfg


READS = {"aggregate": ("values", "by"), "query": ("element",), "transform": ("element",)}


def _no_overwritten_inputs(cfg: JobConfig, where: str) -> None:
    """No step may write an element that a step reads from the repository it commits to
    (the job would read one version and replace it with another in one commit)."""
    target = cfg.resolve(cfg.repository).rstrip("/")
    read: dict[str, str] = {}
    for i, step in enumerate(cfg.steps):
        spec = cfg.inputs[step.params["input"]]
        if cfg.resolve(spec.url).rstrip("/") == target and spec.snapshot is None:
            for key in READS.get(step.kind, ()):
                read[str(step.params[key]).casefold()] = f"steps[{i}].{step.kind}.{key}"
    for i, step in enumerate(cfg.steps):
        if step.output.casefold() in read:
            raise ConfigError(
                f"{where}.steps[{i}].{step.kind}.output: {step.output!r} would overwrite the "
                f"input element that {read[step.output.casefold()]} reads from the repository "
                "this job commits to; choose another output name"
            )


def _inputs(d: dict[str, Any], where: str) -> dict[str, InputConfig]:
    if not d:
        raise ConfigError(f"{where}: at least one input is required")
    out = {}
    for name, spec in d.items():
        w = f"{where}.{name}"
        if isinstance(spec, str):
            spec = {"url": spec}
        spec = _mapping(spec, w)
        _unknown(spec, {"url", "branch", "snapshot", "reader"}, w)
        if not isinstance(spec.get("url"), str) or not spec["url"]:
            raise ConfigError(f"{w}.url: missing or not a string")
        for key in ("branch", "snapshot", "reader"):
            if key in spec and not isinstance(spec[key], str):
                raise ConfigError(f"{w}.{key}: expected a string")
        if "branch" in spec and "snapshot" in spec:
            raise ConfigError(f"{w}: give branch or snapshot, not both")
        out[str(name)] = InputConfig(
            spec["url"], spec.get("branch", "main"), spec.get("snapshot"), spec.get("reader")
        )
    return out


def _steps(steps: Any, inputs: dict[str, InputConfig], where: str) -> list[Step]:
    if not isinstance(steps, list) or not steps:
        raise ConfigError(f"{where}: expected a non-empty list of steps")
    out, outputs = [], set()
    for i, raw in enumerate(steps):
        w = f"{where}[{i}]"
        raw = _mapping(raw, w)
        if len(raw) != 1:
            raise ConfigError(
                f"{w}: each step is one mapping like {{aggregate: {{...}}}}; got keys {sorted(raw)}"
            )
        kind, params = next(iter(raw.items()))
        if kind not in STEP_FIELDS:
            raise ConfigError(f"{w}: unknown step {kind!r}; known: {sorted(STEP_FIELDS)}")
        w = f"{w}.{kind}"
        params = _mapping(params, w)
        fields = STEP_FIELDS[kind]
        _unknown(params, fields, w)
        for key, (types, required) in fields.items():
            if key not in params:
                if required:
                    raise ConfigError(f"{w}.{key}: missing required field")
                continue
            if not isinstance(params[key], types) or (
                types is not bool and isinstance(params[key], bool)
            ):
                raise ConfigError(
                    f"{w}.{key}: expected {_type_name(types)}, got "
                    f"{type(params[key]).__name__} {params[key]!r}"
                )
        if params["input"] not in inputs:
            raise ConfigError(
                f"{w}.input: {params['input']!r} is not one of the inputs {sorted(inputs)}"
            )
        if kind == "aggregate" and params.get("agg", "count") not in AGGS:
            raise ConfigError(f"{w}.agg: {params['agg']!r} is not one of {AGGS}")
        if kind == "stitch" and params.get("blending", "cosine") not in (
            "cosine",
            "linear",
            "none",
        ):
            raise ConfigError(f"{w}.blending: {params['blending']!r} is not cosine, linear or none")
        for key in ("axes", "features"):
            if key in params and not all(isinstance(v, str) for v in params[key]):
                raise ConfigError(f"{w}.{key}: expected a list of strings")
        if kind == "query":
            for key in ("min", "max"):
                if not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in params[key]
                ):
                    raise ConfigError(f"{w}.{key}: expected a list of numbers")
        if "output" in fields:
            try:
                check_name(params["output"], "output")
            except SpatialFlowError as e:
                raise ConfigError(f"{w}.output: {e}") from e
            if params["output"].casefold() in outputs:
                raise ConfigError(f"{w}.output: {params['output']!r} is produced twice")
            outputs.add(params["output"].casefold())
        out.append(Step(kind, dict(params)))
    return out


_LOCAL_FIELDS = {
    "kind",
    "scheduler",
    "address",
    "workers",
    "threads_per_worker",
    "memory_limit",
    "timeout",
}


def _cluster(d: dict[str, Any], where: str) -> ClusterConfig:
    from spatialflow.jobs.clusters import CLUSTER_KINDS, validate_options

    d = _mapping(d, where)
    kind = d.get("kind", "address" if ("scheduler" in d or "address" in d) else "local")
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {list(CLUSTER_KINDS)}")
    if kind in ("local", "address"):
        _unknown(d, _LOCAL_FIELDS, where)
    if "scheduler" in d and "address" in d:
        raise ConfigError(f"{where}: give address (or the older scheduler), not both")
    address = d.get("address", d.get("scheduler"))
    if kind == "address" and not (isinstance(address, str) and "://" in address):
        raise ConfigError(f"{where}.address: expected an address like tcp://host:8786")
    if kind != "address" and address is not None:
        raise ConfigError(f"{where}.address: only for kind 'address' (this is {kind!r})")
    for key in ("workers", "threads_per_worker"):
        if key in d and (not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 1):
            raise ConfigError(f"{where}.{key}: expected a positive integer")
    if "memory_limit" in d and not isinstance(d["memory_limit"], str | int):
        raise ConfigError(f"{where}.memory_limit: expected a size like '4GiB'")
    if "timeout" in d and (not isinstance(d["timeout"], int | float) or d["timeout"] <= 0):
        raise ConfigError(f"{where}.timeout: expected a positive number of seconds")
    options: dict[str, Any] = {}
    if kind not in ("local", "address"):
        rest = {k: v for k, v in d.items() if k not in {"kind", "timeout", "workers"}}
        options = validate_options(kind, rest, where)
    return ClusterConfig(
        address,
        d.get("workers", 2),
        d.get("threads_per_worker", 1),
        str(d.get("memory_limit", "4GiB")),
        float(d.get("timeout", 20.0)),
        kind,
        options,
    )
