"""Cluster kinds of a job config: validation of each kind, the SLURM job script through
dask-jobqueue's own job_script(), the missing kubernetes extra, and `run --dry-run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import spatialflow as sf
from spatialflow.errors import ConfigError
from spatialflow.jobs.clusters import describe, start
from spatialflow.jobs.config import load_config, parse_config

CONFIGS = Path(__file__).parent.parent / "configs"


def _with_cluster(cluster: dict) -> dict:
    data = yaml.safe_load((CONFIGS / "aggregate.yaml").read_text())
    data["cluster"] = cluster
    return data


@pytest.mark.parametrize(
    ("cluster", "kind", "check"),
    [
        ({}, "local", lambda c: c.workers == 2 and not c.options),
        ({"workers": 3, "memory_limit": "2GiB"}, "local", lambda c: c.workers == 3),
        ({"kind": "address", "address": "tcp://h:8786"}, "address", lambda c: c.scheduler),
        ({"scheduler": "tcp://h:8786"}, "address", lambda c: c.scheduler == "tcp://h:8786"),
        (
            {"kind": "slurm", "cores": 4, "memory": "16GB", "queue": "normal", "jobs": 2},
            "slurm",
            lambda c: c.options["jobs"] == 2 and c.options["queue"] == "normal",
        ),
        (
            {"kind": "pbs", "cores": 8, "memory": "32GB", "resource_spec": "select=1"},
            "pbs",
            lambda c: c.options["resource_spec"] == "select=1",
        ),
        (
            {"kind": "sge", "cores": 2, "memory": "8GB", "project": "lab"},
            "sge",
            lambda c: c.options["project"] == "lab",
        ),
        (
            {"kind": "kubernetes", "workers": 4, "image": "img:1"},
            "kubernetes",
            lambda c: c.workers == 4 and c.options == {"image": "img:1"},
        ),
    ],
)
def test_each_cluster_kind_validates(cluster, kind, check):
    cfg = parse_config(_with_cluster(cluster)).cluster
    assert cfg.kind == kind and check(cfg)


@pytest.mark.parametrize(
    ("cluster", "words"),
    [
        ({"kind": "yarn"}, "cluster.kind: 'yarn' is not one of"),
        ({"kind": "address"}, "cluster.address: expected an address"),
        ({"kind": "local", "queue": "x"}, "unknown field(s) ['queue']"),
        ({"kind": "slurm", "cores": 4, "memory": "1GB", "quue": "x"}, "['quue'] are not options"),
        ({"kind": "slurm", "jobs": 0}, "cluster.jobs: expected a positive integer"),
        ({"kind": "pbs", "walltime": 60}, "cluster.walltime: expected a string"),
        ({"kind": "slurm", "address": "tcp://h:1"}, "only for kind 'address'"),
    ],
)
def test_bad_cluster_configs_name_the_field(cluster, words):
    with pytest.raises(ConfigError) as info:
        parse_config(_with_cluster(cluster))
    assert words in str(info.value)


def test_slurm_job_script_is_dask_jobqueues_own():
    from dask_jobqueue import SLURMCluster

    cfg = load_config(CONFIGS / "aggregate_slurm.yaml").cluster
    text = describe(cfg)
    directives = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH -p normal" in directives
    assert "#SBATCH -t 01:00:00" in directives
    assert "#SBATCH --cpus-per-task=4" in directives
    assert "#SBATCH --exclusive" in directives
    assert "# cluster: slurm, 2 job(s)" in text
    with SLURMCluster(
        cores=4,
        memory="16GB",
        queue="normal",
        walltime="01:00:00",
        job_extra_directives=["--exclusive"],
        scheduler_options={"dashboard_address": ":0"},
    ) as direct:
        expected = [ln for ln in direct.job_script().splitlines() if ln.startswith("#SBATCH")]
    assert directives == expected
    worker = [ln for ln in text.splitlines() if "distributed.cli.dask_worker" in ln]
    assert worker and "--nworkers" in worker[0]


def test_kubernetes_without_the_extra_is_a_clear_config_error():
    cfg = load_config(CONFIGS / "aggregate_kubernetes.yaml").cluster
    for action in (lambda: describe(cfg), lambda: start(cfg).__enter__()):
        with pytest.raises(ConfigError, match=r"pip install 'spatialflow\[kubernetes\]'"):
            action()


def test_every_example_config_loads():
    kinds = {load_config(p).cluster.kind for p in CONFIGS.glob("aggregate*.yaml")}
    assert {"local", "slurm", "pbs", "kubernetes", "address"} <= kinds


def test_dry_run_prints_the_job_script(tmp_path):
    sf.datasets.xenium_like(2_000, 20, n_genes=5).write(
        tmp_path / "sample.icechunk", format="icechunk", message="ingest"
    )
    data = yaml.safe_load((CONFIGS / "aggregate_slurm.yaml").read_text())
    data["repository"] = str(tmp_path / "results.icechunk")
    data["inputs"]["sample"]["url"] = str(tmp_path / "sample.icechunk")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-m", "spatialflow.cli", "run", str(config), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "#!/usr/bin/env bash" in out.stdout and "#SBATCH -p normal" in out.stdout
    assert "dry run: would write" in out.stdout
    assert not (tmp_path / "results.icechunk").exists()
