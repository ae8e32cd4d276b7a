"""The demo job (``spatialflow demo``): ingest a synthetic sample, then one aggregation job.

1. A synthetic Xenium-like dataset is committed into a local Icechunk repository (skipped when
   the repository already holds an ingest with the same parameters).
2. One job, pinned to that ingest snapshot, computes in one Dask graph and commits atomically:
   transcripts -> cells counts per gene, morphology image -> cells mean intensity per channel,
   and cells -> Visium spots cell-type fractions (cell types from the table annotating cells).

Run twice on the same repository, the second run does nothing: the ingest is found by its key
and the job by its run key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spatialflow.jobs.config import JobConfig, parse_config
from spatialflow.jobs.progress import no_progress
from spatialflow.jobs.runner import RunResult, cluster, find_run, run_job

__all__ = ["DemoResult", "demo_config", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    repository: str
    ingest_snapshot: str
    ingested: bool
    job: RunResult
    seconds: float


def demo_config(repo: str, snapshot: str) -> JobConfig:
    return parse_config(
        {
            "repository": repo,
            "inputs": {"sample": {"url": repo, "snapshot": snapshot}},
            "steps": [
                {
                    "aggregate": {
                        "input": "sample",
                        "values": "transcripts",
                        "by": "cells",
                        "value_key": "gene",
                        "agg": "count",
                        "output": "transcripts_by_cell",
                    }
                },
                {
                    "aggregate": {
                        "input": "sample",
                        "values": "morphology",
                        "by": "cells",
                        "agg": "mean",
                        "output": "morphology_by_cell",
                    }
                },
                {
                    "aggregate": {
                        "input": "sample",
                        "values": "cells",
                        "by": "spots",
                        "value_key": "cell_type",
                        "agg": "sum",
                        "fractions": True,
                        "output": "cell_types_by_spot",
                    }
                },
            ],
            "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "6GiB"},
            "commit": {
                "branch": "main",
                "message": "demo: aggregate transcripts, image and cell types",
            },
        },
        base_dir=str(Path(repo).parent),
    )


def run_demo(
    repo: str | Path,
    n_transcripts: int,
    n_cells: int,
    seed: int = 0,
    say: Callable[[str], None] | None = None,
    on_client: Callable[[Any], None] | None = None,
    step: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> DemoResult:
    from spatialflow._version import __version__
    from spatialflow.datasets.xenium import xenium_like
    from spatialflow.io.icechunk_writer import commit_dataset
    from spatialflow.io.location import location
    from spatialflow.io.repository import open_repository

    t0 = time.perf_counter()
    say = say or log.info  # library code logs; the command line passes its console
    repo_path = str(Path(repo).expanduser().resolve())
    repository = open_repository(location(repo_path), create=True)
    params = {
        "kind": "xenium_like",
        "n_transcripts": n_transcripts,
        "n_cells": n_cells,
        "seed": seed,
        "version": __version__,
    }
    key = "ingest:" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    snapshot = find_run(repository, "main", key)
    ingested = snapshot is None
    with cluster(demo_config(repo_path, "0" * 20).cluster) as client:
        if on_client is not None:
            on_client(client)
        if snapshot is None:
            say(
                f"Ingesting a synthetic Xenium-like sample ({n_transcripts:,} transcripts, "
                f"{n_cells:,} cells) into {repo_path} ..."
            )
            ds = xenium_like(n_transcripts, n_cells, seed=seed)
            with (step or no_progress)("ingest"):
                snapshot = commit_dataset(
                    repository,
                    ds,
                    branch="main",
                    message="ingest synthetic Xenium-like sample",
                    metadata={"run_key": key, "params": params},
                )
            say(f"  committed {snapshot} in {time.perf_counter() - t0:.1f} s")
        else:
            say(f"The sample is already ingested (snapshot {snapshot}).")
        say("Running the aggregation job ...")
        job = run_job(
            demo_config(repo_path, snapshot), scheduler=client.scheduler.address, step=step
        )
    return DemoResult(repo_path, snapshot, ingested, job, time.perf_counter() - t0)
