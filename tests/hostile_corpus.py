"""A corpus of hostile inputs, generated: one :class:`Case` per entry, each with the error it
must give.

A case builds its target inside a sandbox directory (``build(sandbox) -> target``) from a small,
valid SpatialData store (``base``, written once per session) or from nothing, then does one
hostile thing (``act(target)``): read the damaged store (and every points/shapes partition,
since some damage shows only when data is read), write somewhere it must not, parse a config,
invert a transform. ``tests/test_hostile.py`` runs each with a timeout and a memory bound and
checks that nothing outside the target changed.

The expected message fragment is a regular expression; ``{target}`` in it is replaced by the
target's path, so a case can insist that the message names the path at fault.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spatialflow as sf
from spatialflow.errors import (
    ConfigError,
    FormatError,
    SpatialFlowError,
    StorageError,
    TransformError,
    ValidationError,
)

__all__ = ["CASES", "Case", "read_all"]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path, Path], Path]  # (sandbox, base store) -> target
    act: Callable[[Path], Any]
    error: type[SpatialFlowError]
    match: str  # regex; "{target}" is the target's path


CASES: list[Case] = []


# --- helpers ---------------------------------------------------------------------------------
def read_all(target: Path | str, **kwargs: Any) -> sf.Dataset:
    """Read a store and every partition of its points and shapes."""
    ds = sf.read(target, **kwargs)
    for _, el in ds.items():
        if isinstance(el, sf.Points | sf.Shapes):
            el.data.compute()
    return ds


def copy_base(sandbox: Path, base: Path, *, consolidated: bool = False) -> Path:
    target = sandbox / "store.zarr"
    shutil.copytree(base, target)
    if not consolidated:
        meta = json.loads((target / "zarr.json").read_text())
        meta.pop("consolidated_metadata", None)
        (target / "zarr.json").write_text(json.dumps(meta))
    return target


def edit_json(path: Path, fn: Callable[[Any], Any]) -> None:
    meta = json.loads(path.read_text())
    out = fn(meta)
    path.write_text(json.dumps(meta if out is None else out))


def damaged(rel: str, fn: Callable[[Any], Any]) -> Callable[[Path, Path], Path]:
    """A builder: the base store with the JSON document ``rel`` edited by ``fn``."""

    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base)
        edit_json(target / rel, fn)
        return target

    return build


def raw(rel: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path, Path], Path]:
    """A builder: the base store with file ``rel`` replaced by (or transformed into) bytes."""

    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base)
        path = target / rel
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)
        return target

    return build


def attrs(rel: str, fn: Callable[[dict], Any]) -> Callable[[Path, Path], Path]:
    """A builder: the base store with the attributes of ``rel`` edited in place by ``fn``."""

    def edit(m: dict) -> None:
        fn(m["attributes"])

    return damaged(rel, edit)


# --- root zarr.json ------------------------------------------------------------------------------
ROOT = "zarr.json"
for _i, (name, data) in enumerate(
    [
        ("truncated", lambda b: b[: len(b) // 2]),
        ("empty", b""),
        ("binary", bytes(range(256))),
        ("json-list", b"[1, 2, 3]"),
        ("json-string", b'"spatialdata"'),
        ("deep-nesting", b"[" * 100_000 + b"]" * 100_000),
    ]
):
    CASES.append(
        Case(
            f"root-zarr-json-{name}",
            raw(ROOT, data),
            read_all,
            FormatError,
            r"{target}",
        )
    )

for name, fn in [
    ("no-spatialdata-attrs", lambda a: a.pop("spatialdata_attrs")),
    ("attrs-spatialdata-attrs-list", lambda a: a.update(spatialdata_attrs=[1])),
    ("unknown-container-version", lambda a: a["spatialdata_attrs"].update(version="9.9")),
    ("container-version-null", lambda a: a["spatialdata_attrs"].update(version=None)),
    ("container-version-missing", lambda a: a["spatialdata_attrs"].pop("version")),
]:
    CASES.append(Case(f"root-{name}", attrs(ROOT, fn), read_all, FormatError, r"{target}.*version"))

CASES += [
    Case(
        "root-attributes-a-string",
        damaged(ROOT, lambda m: m.update(attributes="oops")),
        read_all,
        FormatError,
        r"{target}",
    ),
    Case(
        "root-zarr-format-2",
        damaged(ROOT, lambda m: m.update(zarr_format=2)),
        read_all,
        FormatError,
        r"{target}",
    ),
    Case(
        "root-is-an-array",
        damaged(ROOT, lambda m: m.update(node_type="array")),
        read_all,
        FormatError,
        r"{target}",
    ),
]

# --- rasters -------------------------------------------------------------------------------------
IMG = "images/morphology/zarr.json"
LAB = "labels/nuclei/zarr.json"


def _ome(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
    return lambda a: fn(a["ome"])


def _ms(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
    return lambda a: fn(a["ome"]["multiscales"][0])


def _ct(value: Any) -> Callable[[dict], Any]:
    """Replace the first stored transformation of an element's multiscale."""

    def fn(ms: dict) -> None:
        t = ms["coordinateTransformations"][0]
        ms["coordinateTransformations"][0] = {
            **{"input": t["input"], "output": t["output"]},
            **value,
        }

    return _ms(fn)


for name, fn, match in [
    ("image-zarr-json-truncated", None, r"{target}/images.*JSON"),
    ("image-unknown-ome-version", _ome(lambda o: o.update(version="0.5")), r"OME-Zarr version"),
    ("image-no-ome", lambda a: a.pop("ome"), r"images/morphology"),
    ("image-multiscales-empty", _ome(lambda o: o.update(multiscales=[])), r"images/morphology"),
    ("image-multiscales-not-list", _ome(lambda o: o.update(multiscales="s0")), r"morphology"),
    ("image-dataset-missing-array", _ms(lambda m: m["datasets"][0].update(path="s9")), r"s9"),
    ("image-unknown-axis-type", _ms(lambda m: m["axes"][1].update(type="time-ish")), r"axis"),
    (
        "image-unknown-transform-type",
        _ct({"type": "warp", "warp": [1]}),
        r"images/morphology.*warp",
    ),
    ("image-scale-nan", _ct({"type": "scale", "scale": [1.0, math.nan, 1.0]}), r"finite"),
    (
        "image-translation-inf",
        _ct({"type": "translation", "translation": [0.0, math.inf, 1.0]}),
        r"finite",
    ),
    ("image-scale-wrong-length", _ct({"type": "scale", "scale": [1.0, 2.0]}), r"morphology"),
    ("image-affine-wrong-shape", _ct({"type": "affine", "affine": [[1.0, 0.0]]}), r"affine"),
    ("image-affine-strings", _ct({"type": "affine", "affine": "eye"}), r"affine"),
    ("image-sequence-not-list", _ct({"type": "sequence", "transformations": 3}), r"sequence"),
    ("image-mapaxis-duplicate", _ct({"type": "mapAxis", "mapAxis": [0, 0, 0]}), r"MapAxis"),
    ("labels-wrong-axes", None, r"labels/nuclei.*dims"),
    (
        "image-transform-no-output",
        _ms(lambda m: m["coordinateTransformations"][0].pop("output")),
        "output",
    ),
    ("image-transforms-a-dict", _ms(lambda m: m.update(coordinateTransformations={})), r"list"),
]:
    if name == "labels-wrong-axes":
        build = attrs(LAB, _ms(lambda m: m["axes"][0].update(name="c")))
    elif fn is None:
        build = raw(IMG, lambda b: b[: len(b) // 3])
    else:
        build = attrs(IMG, fn)
    CASES.append(Case(name, build, read_all, FormatError, match))


def _huge_labels(sandbox: Path, base: Path) -> Path:
    """Labels declaring 10^12 pixels over 1x1 chunks (the chunks themselves do not exist)."""
    target = copy_base(sandbox, base)

    def edit(m: dict) -> None:
        m.update(shape=[1_000_000, 1_000_000])
        m["chunk_grid"]["configuration"].update(chunk_shape=[1, 1])

    edit_json(target / "labels/nuclei/s0/zarr.json", edit)
    return target


def _float_labels(sandbox: Path, base: Path) -> Path:
    target = copy_base(sandbox, base)
    edit_json(target / "labels/nuclei/s0/zarr.json", lambda m: m.update(data_type="float32"))
    return target


def _negative_shape(sandbox: Path, base: Path) -> Path:
    target = copy_base(sandbox, base)
    edit_json(target / "images/morphology/s0/zarr.json", lambda m: m.update(shape=[-1, 5, 5]))
    return target


CASES += [
    Case("labels-10e12-pixels-tiny-chunks", _huge_labels, read_all, FormatError, r"chunks"),
    Case("labels-float", _float_labels, read_all, FormatError, r"labels/nuclei.*integer"),
    Case("image-negative-shape", _negative_shape, read_all, FormatError, r"morphology"),
    Case(
        "image-scale-zero-inverted",
        attrs(IMG, _ct({"type": "scale", "scale": [1.0, 0.0, 1.0]})),
        lambda t: sf.read(t).images["morphology"].transforms["global"].inverse(),
        TransformError,
        r"invert",
    ),
]

# --- points and shapes -----------------------------------------------------------------------------
PTS = "points/transcripts/zarr.json"


def _parquet(kind: str, name: str, edit: Callable[[Any], Any]) -> Callable[[Path, Path], Path]:
    """A builder: every parquet file of an element rewritten through ``edit(pyarrow table)``."""
    import pyarrow.parquet as pq

    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base)
        for f in sorted((target / kind / name).rglob("*.parquet")):
            if f.is_file():
                pq.write_table(edit(pq.read_table(f)), f)
        return target

    return build


def _drop(column: str) -> Callable[[Any], Any]:
    return lambda t: t.drop_columns([column])


def _as_text(column: str) -> Callable[[Any], Any]:
    import pyarrow as pa

    def edit(t: Any) -> Any:
        i = t.schema.get_field_index(column)
        return t.set_column(i, column, pa.array([str(v) for v in t.column(i).to_pylist()]))

    return edit


def _first_parquet(kind: str, name: str, data: Callable[[bytes], bytes]) -> Callable:
    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base)
        f = sorted(p for p in (target / kind / name).rglob("*.parquet") if p.is_file())[0]
        f.write_bytes(data(f.read_bytes()))
        return target

    return build


CASES += [
    Case(
        "points-parquet-truncated",
        _first_parquet("points", "transcripts", lambda b: b[: len(b) // 2]),
        read_all,
        FormatError,
        r"points/transcripts.*parquet",
    ),
    Case(
        "points-parquet-empty-file",
        _first_parquet("points", "transcripts", lambda b: b""),
        read_all,
        FormatError,
        r"points/transcripts",
    ),
    Case(
        "points-no-x",
        _parquet("points", "transcripts", _drop("x")),
        read_all,
        FormatError,
        r"points/transcripts.*'x'",
    ),
    Case(
        "points-no-y",
        _parquet("points", "transcripts", _drop("y")),
        read_all,
        FormatError,
        r"points/transcripts.*'y'",
    ),
    Case(
        "points-x-as-text",
        _parquet("points", "transcripts", _as_text("x")),
        read_all,
        FormatError,
        r"points/transcripts.*'x'.*numbers",
    ),
    Case(
        "points-feature-as-text",
        _parquet("points", "transcripts", _as_text("gene")),
        read_all,
        FormatError,
        r"points/transcripts.*gene",
    ),
    Case(
        "points-feature-key-missing-column",
        attrs(PTS, lambda a: a["spatialdata_attrs"].update(feature_key="nope")),
        read_all,
        FormatError,
        r"points/transcripts.*nope",
    ),
    Case(
        "points-unknown-version",
        attrs(PTS, lambda a: a["spatialdata_attrs"].update(version="7.0")),
        read_all,
        FormatError,
        r"points/transcripts.*version",
    ),
    Case(
        "points-no-encoding-type",
        attrs(PTS, lambda a: a.pop("encoding-type")),
        read_all,
        FormatError,
        r"points/transcripts",
    ),
    Case(
        "points-axes-not-list",
        attrs(PTS, lambda a: a.update(axes="xy")),
        read_all,
        FormatError,
        r"points/transcripts.*axes",
    ),
    Case(
        "points-transform-inverseof-garbage",
        attrs(PTS, lambda a: a["coordinateTransformations"][0].update(type="inverseOf")),
        read_all,
        FormatError,
        r"points/transcripts",
    ),
    Case(
        "shapes-parquet-truncated",
        _first_parquet("shapes", "cells", lambda b: b[:100]),
        read_all,
        FormatError,
        r"shapes/cells.*parquet",
    ),
    Case(
        "shapes-no-geometry",
        _parquet("shapes", "cells", _drop("geometry")),
        read_all,
        FormatError,
        r"shapes/cells.*geometry",
    ),
    Case(
        "shapes-radius-as-text",
        _parquet("shapes", "spots", _as_text("radius")),
        read_all,
        FormatError,
        r"shapes/spots.*radius",
    ),
    Case(
        "shapes-unknown-version",
        attrs("shapes/cells/zarr.json", lambda a: a["spatialdata_attrs"].update(version="0.9")),
        read_all,
        FormatError,
        r"shapes/cells.*version",
    ),
]

# --- tables ------------------------------------------------------------------------------------------


def _table_region_missing(sandbox: Path, base: Path) -> Path:
    target = copy_base(sandbox, base)
    shutil.rmtree(target / "shapes" / "cells")
    return target


def _table_obs(column: str, fn: Callable[[Any], Any]) -> Callable[[Path, Path], Path]:
    def build(sandbox: Path, base: Path) -> Path:
        import zarr

        target = copy_base(sandbox, base)
        arr = zarr.open_array(target / "tables/table/obs" / column, mode="r+")
        arr[:] = fn(arr[:])
        return target

    return build


CASES += [
    Case("table-region-missing", _table_region_missing, read_all, FormatError, r"region.*cells"),
    Case(
        "table-duplicate-instance-ids",
        _table_obs("cell_id", lambda a: a * 0),
        read_all,
        FormatError,
        r"tables/table.*cell_id.*duplicate",
    ),
    Case(
        "table-unknown-version",
        attrs("tables/table/zarr.json", lambda a: a.update(version="3.0")),
        read_all,
        FormatError,
        r"tables/table.*version",
    ),
    Case(
        "table-not-anndata",
        attrs("tables/table/zarr.json", lambda a: a.update({"encoding-type": "pickle"})),
        read_all,
        FormatError,
        r"tables/table",
    ),
    Case(
        "table-obs-truncated",
        raw("tables/table/obs/zarr.json", b'{"zarr_format": 3, "node_'),
        read_all,
        FormatError,
        r"tables/table",
    ),
]

# --- names -------------------------------------------------------------------------------------------


def _renamed(kind: str, old: str, new: str) -> Callable[[Path, Path], Path]:
    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base)
        (target / kind / old).rename(target / kind / new)
        return target

    return build


def _consolidated_key(key: str) -> Callable[[Path, Path], Path]:
    """Consolidated metadata listing an element at ``key`` (e.g. one that climbs out)."""

    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base, consolidated=True)

        def add(m: dict) -> None:
            entries = m["consolidated_metadata"]["metadata"]
            entries[key] = dict(entries["shapes/cells"])

        edit_json(target / "zarr.json", add)
        return target

    return build


for kind, old, new, match in [
    ("shapes", "spots", "has space", r"shapes/has space.*name"),
    ("shapes", "spots", "__reserved", r"__reserved.*'__'"),
    ("shapes", "cells", "\u0441ells", r"name"),  # Cyrillic 'с'
    ("shapes", "spots", "sp\u200bots", r"name"),  # a zero-width space
    ("shapes", "spots", "Cells", r"clashes"),
    ("shapes", "spots", "MORPHOLOGY", r"clashes"),
    ("shapes", "spots", "morphology", r"clashes"),  # the same name in two kinds
    ("shapes", "spots", "a:b", r"a:b.*name"),
]:
    CASES.append(
        Case(
            f"name-{kind}-{new.encode('unicode_escape').decode()}",
            _renamed(kind, old, new),
            read_all,
            FormatError,
            match,
        )
    )

for key in ("shapes/../../escape", "shapes//abs", "shapes/a\\b", "shapes/.."):
    CASES.append(
        Case(f"consolidated-key-{key}", _consolidated_key(key), read_all, FormatError, r"{target}")
    )


def _named(name: str) -> Callable[[Path], Any]:
    import pandas as pd

    def act(target: Path) -> Any:
        pts = sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))
        ds = sf.Dataset(points={name: pts})
        ds.write(target)

    return act


def _nothing(sandbox: Path, base: Path) -> Path:
    return sandbox / "out.zarr"


for name in ("", "..", ".", "a/b", "../escape", "/etc/passwd", "__meta", "x\x00y", "na\u0308me"):
    CASES.append(
        Case(
            f"write-name-{name.encode('unicode_escape').decode() or 'empty'}",
            _nothing,
            _named(name),
            ValidationError,
            r"name",
        )
    )


def _duplicate_across_kinds(target: Path) -> Any:
    import numpy as np
    import pandas as pd

    return sf.Dataset(
        images={"cells": sf.Image(np.zeros((1, 4, 4), dtype=np.uint8))},
        points={"Cells": sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))},
    )


CASES.append(
    Case(
        "write-duplicate-across-kinds", _nothing, _duplicate_across_kinds, ValidationError, r"Cells"
    )
)


# --- transforms asked to invert ---------------------------------------------------------------------
def _singular_store(sandbox: Path, base: Path) -> Path:
    target = copy_base(sandbox, base)

    def edit(a: dict) -> None:
        t = a["coordinateTransformations"][0]
        a["coordinateTransformations"].append(
            {
                "type": "affine",
                "affine": [[1.0, 2.0, 0.0], [2.0, 4.0, 0.0]],
                "input": t["input"],
                "output": {**t["output"], "name": "flat"},
            }
        )

    edit_json(target / "shapes/cells/zarr.json", lambda m: edit(m["attributes"]))
    return target


def _invert_built(target: Path) -> Any:
    from spatialflow.transforms.base import Affine

    return Affine(
        [[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0]], ("x", "y"), ("x", "y")
    ).inverse()


def _nan_affine(target: Path) -> Any:
    from spatialflow.transforms.base import Affine

    return Affine([[math.nan, 0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]], ("x", "y"), ("x", "y"))


def _invert_stored(target: Path) -> Any:
    ds = sf.read(target)
    return ds.shapes["cells"].transforms["flat"].inverse()


CASES += [
    Case(
        "transform-singular-affine-inverted",
        _singular_store,
        _invert_stored,
        TransformError,
        r"invert",
    ),
    Case("transform-singular-affine-built", _nothing, _invert_built, TransformError, r"invert"),
    Case("transform-nan-affine-built", _nothing, _nan_affine, TransformError, r"finite"),
]


# --- configs ------------------------------------------------------------------------------------------
def _config(text: str) -> Callable[[Path, Path], Path]:
    def build(sandbox: Path, base: Path) -> Path:
        target = copy_base(sandbox, base)
        (sandbox / "job.yaml").write_text(text.replace("STORE", str(target)))
        return target

    return build


def _load(target: Path) -> Any:
    from spatialflow.jobs.config import load_config

    return load_config(target.parent / "job.yaml")


GOOD_STEP = "{input: s, values: transcripts, by: cells, output: counts}"
CONFIGS = [
    ("not-yaml", "repository: [unclosed\n  - : :", r"YAML"),
    ("a-list", "- 1\n- 2\n", r"mapping"),
    ("empty", "", r"mapping"),
    (
        "missing-repository",
        f"inputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]",
        "repository",
    ),
    (
        "repository-number",
        f"repository: 5\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]",
        "repository",
    ),
    (
        "unknown-top-field",
        f"repository: out.icechunk\nflavour: x\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]",
        "flavour",
    ),
    (
        "unknown-step",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{explode: {input: s}}]",
        "unknown step 'explode'",
    ),
    (
        "unknown-input",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{aggregate: {input: t, values: transcripts, by: cells, output: c}}]",
        r"input.*'t'",
    ),
    (
        "wrong-type-agg",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{aggregate: {input: s, values: transcripts, by: cells, agg: 3, output: c}}]",
        r"agg",
    ),
    (
        "unknown-agg",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{aggregate: {input: s, values: transcripts, by: cells, agg: median, output: c}}]",
        r"agg",
    ),
    (
        "fractions-string",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{aggregate: {input: s, values: transcripts, by: cells, fractions: 'yes', output: c}}]",
        r"fractions",
    ),
    (
        "workers-string",
        f"repository: out.icechunk\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]\ncluster: {{workers: two}}",
        r"workers",
    ),
    (
        "workers-zero",
        f"repository: out.icechunk\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]\ncluster: {{workers: 0}}",
        r"workers",
    ),
    (
        "timeout-negative",
        f"repository: out.icechunk\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]\ncluster: {{timeout: -1}}",
        r"timeout",
    ),
    (
        "query-min-strings",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{query: {input: s, element: transcripts, axes: [x, y], min: [a, b], max: [1, 2], coordinate_system: global, output: q}}]",
        r"min",
    ),
    (
        "query-axes-numbers",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{query: {input: s, element: transcripts, axes: [1, 2], min: [0, 0], max: [1, 2], coordinate_system: global, output: q}}]",
        r"axes",
    ),
    (
        "output-escapes",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{aggregate: {input: s, values: transcripts, by: cells, output: ../../etc}}]",
        r"output",
    ),
    (
        "output-absolute",
        "repository: out.icechunk\ninputs: {s: STORE}\nsteps: [{aggregate: {input: s, values: transcripts, by: cells, output: /tmp/x}}]",
        r"output",
    ),
    (
        "output-twice",
        f"repository: out.icechunk\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}, {{aggregate: {GOOD_STEP}}}]",
        r"twice",
    ),
    (
        "output-overwrites-input",
        "repository: STORE\ninputs: {s: STORE}\nsteps: [{transform: {input: s, element: cells, to: global, output: cells}}]",
        r"overwrite",
    ),
    (
        "branch-and-snapshot",
        f"repository: out.icechunk\ninputs: {{s: {{url: STORE, branch: main, snapshot: abc}}}}\nsteps: [{{aggregate: {GOOD_STEP}}}]",
        r"branch or snapshot",
    ),
    (
        "billion-laughs",
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nrepository: out.icechunk\ninputs: {s: STORE}\nsteps: [{query: {input: s, element: transcripts, axes: [x, y], min: [0, 0], max: [1, 1], coordinate_system: global, features: *g, output: q}}]",
        r".",
    ),
    (
        "commit-message-list",
        f"repository: out.icechunk\ninputs: {{s: STORE}}\nsteps: [{{aggregate: {GOOD_STEP}}}]\ncommit: {{message: [a]}}",
        r"message",
    ),
]
for name, text, match in CONFIGS:
    CASES.append(Case(f"config-{name}", _config(text), _load, ConfigError, match))

CASES.append(
    Case(
        "config-missing-file",
        lambda s, b: s / "nope",
        lambda t: _load(t / "x"),
        ConfigError,
        r"nope",
    )
)


# --- destinations that cannot be written ------------------------------------------------------------
def _write_to(
    dest: str | Callable[[Path], Path], fmt: str = "spatialdata"
) -> Callable[[Path], Any]:
    import pandas as pd

    def act(target: Path) -> Any:
        ds = sf.Dataset(points={"p": sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))})
        return ds.write(dest(target) if callable(dest) else dest, format=fmt)

    return act


def _a_file(sandbox: Path, base: Path) -> Path:
    target = sandbox / "afile"
    target.write_text("not a directory")
    return target


CASES += [
    Case(
        "write-into-proc",
        _nothing,
        _write_to("/proc/spatialflow-x.zarr"),
        StorageError,
        r"/proc/spatialflow-x\.zarr",
    ),
    Case(
        "write-repo-into-proc",
        _nothing,
        _write_to("/proc/spatialflow-x.icechunk", "icechunk"),
        StorageError,
        r"/proc/spatialflow-x\.icechunk",
    ),
    Case(
        "write-under-a-file",
        _a_file,
        _write_to(lambda t: t / "x.zarr"),
        StorageError,
        r"afile/x\.zarr",
    ),
    Case(
        "write-repo-under-a-file",
        _a_file,
        _write_to(lambda t: t / "x", "icechunk"),
        StorageError,
        r"afile/x",
    ),
    Case("write-over-a-file", _a_file, _write_to(lambda t: t), FormatError, r"afile"),
    Case(
        "write-under-dev-null",
        _nothing,
        _write_to("/dev/null/x.zarr"),
        StorageError,
        r"/dev/null/x\.zarr",
    ),
]


def fill(pattern: str, target: Path) -> str:
    return pattern.replace("{target}", re.escape(str(target)))
