"""Property-based fuzzing of every metadata parser: whatever the JSON/YAML, only a
SpatialFlowError escapes (never a KeyError, AttributeError, numpy or zarr error).

Parsers: OME-NGFF transforms (transforms/ngff.py, both dialects, then inverting and applying
what parsed), spatialdata element attrs (rasters, tables, points/shapes transforms) and the
native layout's schema (io/native.py), each read through the store reader the user calls, and
job configs (jobs/config.py). Inputs are drawn near the valid shape (right keys, mutated
values) as well as anywhere, so the fuzzer gets past the first check. Example counts are
modest so the file runs in well under a minute; ``FUZZ_EXAMPLES`` counts what ran.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spatialflow.errors import SpatialFlowError

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
)

AXES = ["x", "y", "z", "c", "t", "", "q"]
KINDS = [
    "identity",
    "translation",
    "scale",
    "affine",
    "rotation",
    "mapAxis",
    "sequence",
    "byDimension",
    "bijection",
    "inverseOf",
    "displacements",
    "coordinates",
    "warp",
]
numbers = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -1.0, 1e308, -1e-308, math.nan, math.inf]),
)
json_leaf = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=6))
json_any = st.recursive(
    json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)
vectors = st.lists(numbers, min_size=0, max_size=4)
matrices = st.lists(vectors, min_size=0, max_size=4)
axis_entry = st.one_of(
    st.sampled_from(AXES),
    st.fixed_dictionaries(
        {"name": st.sampled_from(AXES)},
        optional={"type": st.sampled_from(["space", "channel", "time", 3]), "unit": json_leaf},
    ),
    json_leaf,
)
coordinate_system = st.one_of(
    st.sampled_from(["global", "xy", "cyx", ""]),
    st.fixed_dictionaries(
        {"name": st.sampled_from(["global", "xy", "aligned"])},
        optional={"axes": st.one_of(st.lists(axis_entry, max_size=4), json_leaf)},
    ),
    json_any,
)


def _transform(children: st.SearchStrategy) -> st.SearchStrategy:
    params = {
        "translation": vectors,
        "scale": vectors,
        "affine": st.one_of(matrices, vectors, json_leaf),
        "rotation": matrices,
        "mapAxis": st.one_of(
            st.lists(st.integers(-1, 4), max_size=4),
            st.dictionaries(st.sampled_from(AXES), st.sampled_from(AXES), max_size=3),
            json_leaf,
        ),
        "transformations": st.lists(children, max_size=3),
        "transformation": children,
        "forward": children,
        "inverse": children,
        "input_axes": st.lists(st.sampled_from(AXES), max_size=3),
        "output_axes": st.lists(st.sampled_from(AXES), max_size=3),
        "inputAxes": st.lists(st.sampled_from(AXES), max_size=3),
        "path": st.text(max_size=5),
    }
    return st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(KINDS), json_leaf)},
        optional={"input": coordinate_system, "output": coordinate_system, **params},
    )


transforms = st.recursive(_transform(json_leaf), _transform, max_leaves=6)


def _only_ours(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except SpatialFlowError:
        return None


def _exercise(t: Any) -> None:
    """Use what parsed: invert it, write it back, apply it to a point."""
    if t is None:
        return
    _only_ours(t.inverse)
    axes = tuple(t.input_axes) if t.input_axes else ("x", "y")
    out = _only_ours(t.output_axes_for, axes)
    if out is not None:
        _only_ours(t.to_affine_matrix, axes, out)


# --- NGFF transforms --------------------------------------------------------------------------
@FUZZ
@given(d=st.one_of(transforms, json_any), axes=st.sampled_from([None, ("x", "y"), ("c", "y", "x")]))
def test_ngff_transforms(d, axes):
    from spatialflow.transforms.ngff import from_ngff, to_ngff

    t = _only_ours(from_ngff, d, input_axes=axes, output_axes=axes)
    _exercise(t)
    if t is not None and axes is not None:
        _only_ours(to_ngff, t, input_axes=axes, output_axes=axes)


@FUZZ
@given(entries=st.one_of(st.lists(transforms, max_size=3), json_any))
def test_spatialdata_transform_lists(entries):
    from spatialflow.io.sdtransforms import read_transforms

    got = _only_ours(read_transforms, entries, "fuzz")
    for t in (got or {}).values():
        _exercise(t)


# --- spatialdata element attrs, through the repository reader ------------------------------------
class _Session:
    """What ``read_session`` needs of a read-only session: its zarr store."""

    def __init__(self, store: Any) -> None:
        self.store = store


def _read(kind: str, attrs: dict[str, Any], array: bool = False) -> None:
    from spatialflow.io.repository import read_session

    store = zarr.storage.MemoryStore()
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.attrs.update(
        {"spatialdata_attrs": {"version": "0.2"}, "spatialflow": {"layout": "native"}}
    )
    group = root.require_group(kind).create_group("el")
    if array:
        group.create_array("s0", shape=(1, 4, 4), dtype="uint8", chunks=(1, 2, 2))
    try:
        group.attrs.put(attrs)
    except (TypeError, ValueError):  # not JSON at all: nothing a store could hold
        return
    ds = _only_ours(read_session, _Session(store), "memory://fuzz")
    for _, el in ds.items() if ds is not None else ():
        if hasattr(el, "data") and hasattr(el.data, "npartitions"):
            _only_ours(el.data.get_partition(0).compute)


def _valid_raster_attrs() -> dict[str, Any]:
    xy = {"name": "cyx", "axes": [{"name": a, "type": "space"} for a in "cyx"]}
    return {
        "ome": {
            "version": "0.5-dev-spatialdata",
            "multiscales": [
                {
                    "axes": [{"name": "c", "type": "channel"}]
                    + [{"name": a, "type": "space", "unit": "unit"} for a in "yx"],
                    "datasets": [{"path": "s0", "coordinateTransformations": []}],
                    "coordinateTransformations": [
                        {"type": "identity", "input": xy, "output": {**xy, "name": "global"}}
                    ],
                }
            ],
        },
        "spatialdata_attrs": {"version": "0.3"},
    }


def _mutate(base: Any, draw: Any, depth: int = 0) -> Any:
    """``base`` with some values replaced by anything, some keys dropped or added."""
    if isinstance(base, dict):
        out = {}
        for k, v in base.items():
            choice = draw(st.integers(0, 9))
            if choice == 0:
                continue  # dropped
            out[k] = draw(json_any) if choice == 1 else _mutate(v, draw, depth + 1)
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.text(max_size=5))] = draw(json_any)
        return out
    if isinstance(base, list):
        items = [_mutate(v, draw, depth + 1) for v in base]
        if items and draw(st.integers(0, 9)) == 0:
            items = items * draw(st.integers(0, 3))
        return items
    return draw(json_any) if draw(st.integers(0, 5)) == 0 else base


@FUZZ
@given(data=st.data())
def test_raster_attrs(data):
    kind = data.draw(st.sampled_from(["images", "labels"]))
    _read(kind, _mutate(_valid_raster_attrs(), data.draw), array=True)


def _valid_table_attrs() -> dict[str, Any]:
    return {
        "encoding-type": "anndata",
        "encoding-version": "0.1.0",
        "spatialdata-encoding-type": "ngff:regions_table",
        "region": "cells",
        "region_key": "region",
        "instance_key": "cell_id",
        "version": "0.2",
    }


@FUZZ
@given(data=st.data())
def test_table_attrs(data):
    _read("tables", _mutate(_valid_table_attrs(), data.draw))


# --- the native layout's schema ----------------------------------------------------------------------
def _valid_native_attrs(kind: str) -> dict[str, Any]:
    xy = {"name": "xy", "axes": [{"name": a, "type": "space", "unit": "unit"} for a in "xy"]}
    attrs = {
        "encoding-type": f"spatialflow:{kind}",
        "version": 1,
        "axes": ["x", "y"],
        "coordinateTransformations": [
            {"type": "identity", "input": xy, "output": {**xy, "name": "global"}}
        ],
        "schema": {
            "columns": [
                {"name": "x", "kind": "numeric", "dtype": "<f8"},
                {"name": "y", "kind": "numeric", "dtype": "<f8"},
                {
                    "name": "gene",
                    "kind": "categorical",
                    "categories": ["a", "b"],
                    "ordered": False,
                    "categories_dtype": {"kind": "string", "storage": "object", "na": "None"},
                },
                {"name": "n", "kind": "masked", "dtype": "Int64"},
                {"name": "s", "kind": "string", "storage": "python", "na": "NA"},
            ],
            "index": {"name": None, "kind": "numeric", "dtype": "<i8"},
        },
        "partitions": {"group": "parts-x", "rows": [3], "bounds": [[0.0, 0.0, 1.0, 1.0]]},
        "spatialdata_attrs": {"feature_key": "gene"},
    }
    if kind == "shapes":
        attrs["geometry"] = "polygons"
    return attrs


@FUZZ
@given(data=st.data())
def test_native_layout_schema(data):
    from spatialflow.io.native import LAYOUT_VERSION

    kind = data.draw(st.sampled_from(["points", "shapes"]))
    attrs = _valid_native_attrs(kind)
    attrs["version"] = LAYOUT_VERSION
    _read(kind, _mutate(attrs, data.draw))


@FUZZ
@given(
    spec=st.one_of(
        json_any,
        st.fixed_dictionaries(
            {"kind": st.sampled_from(["numeric", "masked", "string", "categorical", "other"])},
            optional={
                "dtype": st.one_of(
                    st.sampled_from(["<f8", "Int64", "u1", "M8[ns]", "V3", "O", "S0"]), json_leaf
                ),
                "storage": st.one_of(st.sampled_from(["python", "pyarrow", "object"]), json_leaf),
                "na": json_leaf,
                "categories": json_any,
                "categories_dtype": json_any,
                "ordered": json_leaf,
            },
        ),
    )
)
def test_native_dtype_specs(spec):
    from spatialflow.io.native import pandas_dtype

    _only_ours(pandas_dtype, spec)


# --- job configs -------------------------------------------------------------------------------------
def _valid_config() -> dict[str, Any]:
    return {
        "repository": "out.icechunk",
        "inputs": {"s": {"url": "sample.zarr", "branch": "main"}},
        "steps": [
            {
                "aggregate": {
                    "input": "s",
                    "values": "transcripts",
                    "by": "cells",
                    "value_key": "gene",
                    "agg": "count",
                    "output": "counts",
                }
            },
            {
                "query": {
                    "input": "s",
                    "element": "transcripts",
                    "axes": ["x", "y"],
                    "min": [0, 0],
                    "max": [1, 1],
                    "coordinate_system": "global",
                    "output": "roi",
                }
            },
            {"transform": {"input": "s", "element": "cells", "to": "global", "output": "moved"}},
        ],
        "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB", "timeout": 5},
        "commit": {"branch": "main", "message": "m"},
    }


@FUZZ
@given(data=st.data())
def test_job_configs(data, tmp_path_factory):
    from spatialflow.jobs.config import parse_config

    raw = (
        data.draw(st.one_of(st.just(None), json_any))
        if data.draw(st.integers(0, 9)) == 0
        else (_mutate(_valid_config(), data.draw))
    )
    _only_ours(parse_config, raw, base_dir="/nonexistent-fuzz-dir")


@FUZZ
@given(text=st.text(max_size=200))
def test_job_config_files(text, tmp_path_factory):
    from spatialflow.jobs.config import load_config

    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text)
    _only_ours(load_config, path)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_parameters_are_refused(value):
    from spatialflow.errors import TransformError
    from spatialflow.transforms.ngff import from_ngff

    with pytest.raises(TransformError, match="finite"):
        from_ngff({"type": "scale", "scale": [1.0, value]}, input_axes=("x", "y"))
