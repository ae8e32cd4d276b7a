"""The ``spatialflow`` command.

Every subcommand imports what it needs when it runs, so ``spatialflow --help`` and
``spatialflow map-coords`` start without loading Dask, AnnData or zarr. Errors a user caused
(:class:`~spatialflow.errors.SpatialFlowError`) are printed as one line on stderr with exit
code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from spatialflow import __version__
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spatialflow",
        description="A Dask-distributed batch engine for spatial omics data (SpatialData model).",
    )
    p.add_argument("--version", action="version", version=f"spatialflow {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="build the synthetic Xenium-like dataset and summarise it")
    demo.add_argument("--repo", default=None, help="(reserved for the job runner) repository path")
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


def cmd_demo(args: argparse.Namespace) -> int:
    import dask
    from rich.console import Console

    import spatialflow as sf

    console = Console(stderr=False)
    t0 = time.perf_counter()
    ds = sf.datasets.xenium_like(args.transcripts, args.cells, seed=args.seed)
    console.print(
        f"[bold]Synthetic Xenium-like dataset[/bold] built in "
        f"{time.perf_counter() - t0:.2f} s (lazy: nothing computed yet)"
    )
    console.print(str(ds))
    pts = ds.points["transcripts"].data
    summary = pts.groupby(pts["cell_id"] >= 0).size()
    with _progress():
        t1 = time.perf_counter()
        (per_cell,) = dask.compute(summary)
    n_in = int(per_cell.get(True, 0))
    n_all = int(per_cell.sum())
    console.print(
        f"Generated {n_all:,} transcripts in {pts.npartitions} partitions in "
        f"{time.perf_counter() - t1:.1f} s; {n_in / max(n_all, 1):.1%} inside cells."
    )
    console.print(
        "Next: the aggregation job (spatialflow run) lands with the jobs issue; "
        "see README.md for the tour."
    )
    return 0


class _progress:
    """Dask's progress bar on stderr while computing on the local scheduler."""

    def __enter__(self) -> Any:
        from dask.diagnostics import ProgressBar

        self._bar = ProgressBar(out=sys.stderr, dt=0.5)
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.__exit__(*exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SpatialFlowError as e:
        print(f"spatialflow {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
