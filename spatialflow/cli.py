"""The ``spatialflow`` command.

Every subcommand imports what it needs when it runs, so ``spatialflow --help`` and
``spatialflow map-coords`` start without loading Dask, AnnData or zarr. Errors a user caused
(:class:`~spatialflow.errors.SpatialFlowError`) are printed as one line on stderr with exit
code 2, never as a traceback; an OSError the library did not name (the environment: disk,
permissions) is one line with exit 1; Ctrl-C is one line with exit 130, and the writers
undo what they had started (nothing committed, no half-written element).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from spatialflow._version import __version__
from spatialflow.errors import SpatialFlowError

log = logging.getLogger("spatialflow")


def _positive_int(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spatialflow",
        description="A Dask-distributed batch engine for spatial omics data (SpatialData model).",
    )
    p.add_argument("--version", action="version", version=f"spatialflow {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="the main job: ingest a synthetic sample and run an aggregation job on it",
        description="Ingest a synthetic Xenium-like sample into an Icechunk repository, then "
        "run one aggregation job (transcripts -> cells, image -> cells, cells -> spots) on a "
        "local Dask cluster and commit its tables atomically. A second run is a no-op.",
    )
    demo.add_argument(
        "--repo",
        default="spatialflow-demo.icechunk",
        help="the repository (default ./spatialflow-demo.icechunk)",
    )
    demo.add_argument(
        "--transcripts",
        type=_positive_int,
        default=5_000_000,
        help="number of transcripts (default 5M)",
    )
    demo.add_argument(
        "--cells", type=_positive_int, default=20_000, help="number of cells (default 20k)"
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run a YAML job config and commit its outputs atomically")
    run.add_argument("config", help="the job config (see configs/aggregate.yaml)")
    run.add_argument("--scheduler", default=None, help="a running Dask scheduler tcp://host:port")
    run.add_argument("--branch", default=None, help="commit to this branch (default: config's)")
    run.add_argument("--dry-run", action="store_true", help="print the plans; write nothing")
    run.add_argument("--force", action="store_true", help="run even if this run already landed")
    run.set_defaults(func=cmd_run)

    lg = sub.add_parser("log", help="a repository's history with messages, run keys and tags")
    lg.add_argument("repo", help="the Icechunk repository")
    lg.add_argument("--branch", default="main")
    lg.add_argument("-n", "--limit", type=_positive_int, default=20)
    lg.set_defaults(func=cmd_log)

    rb = sub.add_parser("rollback", help="move a branch back to a tag or snapshot")
    rb.add_argument("repo", help="the Icechunk repository")
    rb.add_argument("--to", required=True, help="a tag (run/...) or a snapshot id")
    rb.add_argument("--branch", default="main")
    rb.set_defaults(func=cmd_rollback)

    info = sub.add_parser(
        "info",
        help="describe a store: elements, sizes, coordinate systems (and commits of a repository)",
        description="Describe a SpatialData store or an Icechunk repository from its metadata.",
    )
    info.add_argument("url", help="a path or fsspec URL (file://, memory://, s3:// ...)")
    info.add_argument("--branch", default="main", help="repository branch (default main)")
    info.add_argument("--snapshot", default=None, help="repository snapshot id")
    info.add_argument("--commits", type=_positive_int, default=5, help="commits to list")
    info.add_argument("--json", action="store_true", help="print one JSON object instead")
    info.add_argument(
        "--storage-options", type=_json_object, default=None, help="fsspec options as JSON"
    )
    info.set_defaults(func=cmd_info)

    conv = sub.add_parser(
        "convert",
        help="convert a store to the SpatialData layout or to an Icechunk repository",
        description="Read SRC (any layout) and write it to DST in the chosen layout.",
    )
    conv.add_argument("src", help="the store to read (path or URL)")
    conv.add_argument("dst", help="where to write (path or URL)")
    conv.add_argument(
        "--format",
        choices=("spatialdata", "icechunk"),
        default="spatialdata",
        help="layout of DST (default spatialdata)",
    )
    conv.add_argument("--branch", default="main", help="branch of SRC and of DST repositories")
    conv.add_argument("--snapshot", default=None, help="read this snapshot of SRC")
    conv.add_argument("--message", default=None, help="commit message (icechunk DST)")
    conv.add_argument("--overwrite", action="store_true", help="replace a SpatialData store at DST")
    conv.add_argument("--src-storage-options", type=_json_object, default=None)
    conv.add_argument("--dst-storage-options", type=_json_object, default=None)
    conv.set_defaults(func=cmd_convert)

    ing = sub.add_parser(
        "ingest",
        help="ingest an instrument's output folder (Xenium, MERSCOPE ...) into an Icechunk repository",
        description="Read PATH with a vendor reader (named, or guessed from its marker files) "
        "and write every element into REPO in one commit.",
    )
    ing.add_argument("path", help="the instrument's output folder")
    ing.add_argument("repo", help="the Icechunk repository (created if missing)")
    ing.add_argument("--reader", default=None, help="reader name (default: guessed)")
    ing.add_argument("--branch", default="main", help="branch to commit to (default main)")
    ing.add_argument("--message", default=None, help="commit message")
    ing.add_argument(
        "--storage-options", type=_json_object, default=None, help="fsspec options of REPO"
    )
    ing.set_defaults(func=cmd_ingest)
    pl = sub.add_parser(
        "plot",
        help="draw a store's elements into a PNG (datashader for many points)",
        description="Plot images, labels, shapes and points of URL in one coordinate system.",
    )
    pl.add_argument("url", help="a path or fsspec URL (SpatialData store or Icechunk repo)")
    pl.add_argument("--out", required=True, help="the image file to write (e.g. figure.png)")
    pl.add_argument("--elements", nargs="+", default=None, help="element names (default: all)")
    pl.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        default=None,
        metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
        help="the region to draw, in the coordinate system",
    )
    pl.add_argument("--coordinate-system", default="global")
    pl.add_argument("--genes", nargs="+", default=None, help="only these point features")
    pl.add_argument("--color", default=None, help="a column (element or table) or a colour")
    pl.add_argument("--width", type=_positive_int, default=1200, help="pixels (default 1200)")
    pl.add_argument("--branch", default="main", help="repository branch (default main)")
    pl.add_argument("--snapshot", default=None, help="repository snapshot id")
    pl.add_argument(
        "--storage-options", type=_json_object, default=None, help="fsspec options as JSON"
    )
    pl.set_defaults(func=cmd_plot)

    mc = sub.add_parser(
        "map-coords",
        help="map coordinates between two coordinate systems of an OME-Zarr scene",
        description="The OME-Zarr transformation conformance interface: prints "
        '{"coordinates": [[...]]} on stdout and exits 0, or exits non-zero with '
        '{"message": ...}.',
    )
    mc.add_argument("path", help="OME-Zarr group whose zarr.json holds ngff 0.6 scene metadata")
    mc.add_argument("source", help="source coordinate system")
    mc.add_argument("target", help="target coordinate system")
    mc.add_argument("coords", help="JSON list of points on the source axes, e.g. [[1, 2]]")
    mc.set_defaults(func=cmd_map_coords)
    return p


def cmd_map_coords(args: argparse.Namespace) -> int:
    from spatialflow.transforms.scene import read_scene

    try:
        coords = json.loads(args.coords)
    except json.JSONDecodeError as e:
        print(json.dumps({"message": f"COORDS is not JSON: {e}"}))
        return 2
    try:
        out = read_scene(args.path).map(args.source, args.target, coords)
    except SpatialFlowError as e:
        print(json.dumps({"message": str(e)}))
        return 2
    print(json.dumps({"coordinates": out.tolist()}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from spatialflow.io.info import describe

    info = describe(
        args.url,
        branch=args.branch,
        snapshot=args.snapshot,
        storage_options=args.storage_options,
        n_commits=args.commits,
    )
    print(json.dumps(info.to_dict()) if args.json else info.render())
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from spatialflow.io import read

    t0 = time.perf_counter()
    ds = read(
        args.src,
        branch=args.branch,
        snapshot=args.snapshot,
        storage_options=args.src_storage_options,
    )
    log.info("read %s: %d elements", args.src, len(ds))
    with _progress().step(f"convert to {args.format}"):
        snapshot = ds.write(
            args.dst,
            format=args.format,
            message=args.message or f"convert {args.src}",
            branch=args.branch,
            overwrite=args.overwrite,
            storage_options=args.dst_storage_options,
        )
    done = f" (snapshot {snapshot})" if snapshot else ""
    print(
        f"converted {len(ds)} elements from {args.src} to {args.dst} "
        f"[{args.format}]{done} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from spatialflow.io.ingest import ingest

    t0 = time.perf_counter()
    with _progress().step(f"ingest {args.path}"):
        snapshot = ingest(
            args.path,
            args.repo,
            reader=args.reader,
            branch=args.branch,
            message=args.message,
            storage_options=args.storage_options,
        )
    print(
        f"ingested {args.path} into {args.repo} (snapshot {snapshot}) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from spatialflow.io import read
    from spatialflow.plot.figure import plot

    t0 = time.perf_counter()
    ds = read(
        args.url, branch=args.branch, snapshot=args.snapshot, storage_options=args.storage_options
    )
    with _progress().step(f"plot {args.url}"):
        fig = plot(
            ds,
            args.elements,
            coordinate_system=args.coordinate_system,
            bbox=args.bbox,
            genes=args.genes,
            color=args.color,
            width=args.width,
        )
        fig.savefig(args.out, dpi=fig.dpi, facecolor=fig.get_facecolor())
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _progress(console: Any = None) -> Any:
    """Progress bars on a terminal, one line per step otherwise (jobs/progress.py)."""
    from spatialflow.jobs.progress import StepProgress

    return StepProgress(console)


def _watch(console: Any, progress: Any) -> Any:
    """on_client callback: print the dashboard link and count the cluster's tasks."""

    def on_client(client: Any) -> None:
        console.print(f"Dask dashboard: [link]{client.dashboard_link}[/link]")
        progress.set_client(client)

    return on_client


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from spatialflow.jobs.config import load_config
    from spatialflow.jobs.runner import run_job

    console = Console()
    progress = _progress(console)
    cfg = load_config(args.config)
    res = run_job(
        cfg,
        scheduler=args.scheduler,
        branch=args.branch,
        dry_run=args.dry_run,
        force=args.force,
        on_client=_watch(console, progress),
        step=progress.step,
    )
    if res.status == "dry-run":
        console.print(res.explain, markup=False, highlight=False)
        console.print(res.cluster, markup=False, highlight=False)
        console.print(f"dry run: would write {res.elements} (run key {res.run_key[:12]})")
    elif res.status == "no-op":
        console.print(
            f"Nothing to do: this run (key {res.run_key[:12]}) already landed as "
            f"snapshot {res.snapshot}. Use --force to run it again."
        )
    else:
        console.print(
            f"Committed {res.elements} as snapshot {res.snapshot}, tagged "
            f"{res.tag}, in {res.seconds:.1f} s."
        )
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from spatialflow.io.location import location
    from spatialflow.io.repository import open_repository
    from spatialflow.jobs.history import history

    repo = open_repository(location(args.repo))
    for e in history(repo, args.branch, args.limit):
        tags = f" [{', '.join(e.tags)}]" if e.tags else ""
        key = f" run {e.run_key[:12]}" if e.run_key else ""
        print(f"{e.snapshot}  {e.written_at}{key}{tags}  {e.message}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from spatialflow.io.location import location
    from spatialflow.io.repository import open_repository
    from spatialflow.jobs.history import rollback

    repo = open_repository(location(args.repo))
    old, new = rollback(repo, args.branch, args.to)
    print(f"{args.branch}: {old} -> {new}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from spatialflow.jobs.demo import run_demo

    console = Console()
    progress = _progress(console)
    t0 = time.perf_counter()
    res = run_demo(
        args.repo,
        args.transcripts,
        args.cells,
        seed=args.seed,
        say=lambda text: console.print(text, markup=False, highlight=False),
        on_client=_watch(console, progress),
        step=progress.step,
    )
    job = res.job
    if job.status == "no-op" and not res.ingested:
        console.print(
            f"Nothing to do: the sample and the job are already in {res.repository} "
            f"(job snapshot {job.snapshot})."
        )
    else:
        console.print(
            f"[bold]Done in {time.perf_counter() - t0:.1f} s.[/bold] Job "
            f"{job.status}: tables {job.elements} -> snapshot {job.snapshot}"
            + (f", tagged {job.tag}" if job.tag else "")
            + "."
        )
    console.print(
        f"Next: spatialflow info {res.repository} | spatialflow log {res.repository}"
        f" | in Python: sf.read({res.repository!r}).tables"
        "['transcripts_by_cell']",
        markup=False,
        highlight=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # Dask's cluster chatter is for -v; progress is shown separately
        import os

        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SpatialFlowError as e:
        print(f"spatialflow {args.command}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"spatialflow {args.command}: interrupted; nothing was committed or left half-written",
            file=sys.stderr,
        )
        return 130
    except (OSError, MemoryError) as e:  # the environment, not a bug: one line, no traceback
        print(
            f"spatialflow {args.command}: {type(e).__name__}: {_one_line(e)} (check the paths, "
            "free space and permissions, or rerun with -v)",
            file=sys.stderr,
        )
        if args.verbose:
            log.exception("details")
        return 1


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
