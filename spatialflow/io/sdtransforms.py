"""Element transforms as stored by spatialdata 0.8 (``coordinateTransformations`` lists).

A thin layer over :mod:`spatialflow.transforms.ngff` that every reader and writer in ``io/``
goes through, so stores and in-memory conversions agree. It fixes up one dialect detail on
both sides: spatialdata's ``mapAxis`` lists only the axes it moves (``{"x": "y", "y": "x"}``
on a 3D element), and every other axis of the output coordinate system passes through
unchanged. On read the pass-through axes are added explicitly (``z -> z``) so z is not
dropped; on write a MapAxis that permutes some spatial axes of an element is completed with
the element's other spatial axes, so it is stored as a ``mapAxis`` again, not as an affine.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as Seq
from typing import Any

from spatialflow.errors import FormatError, SpatialFlowError
from spatialflow.transforms.base import MapAxis, Transform
from spatialflow.transforms.composite import Sequence
from spatialflow.transforms.ngff import (
    CHANNEL_AXES,
    from_spatialdata_dict,
    parse_coordinate_system,
    to_spatialdata_dict,
)

__all__ = ["read_transform", "read_transforms", "write_transforms"]


def _axes_of(ref: Any) -> tuple[str, ...]:
    try:
        return tuple(parse_coordinate_system(ref)[1] or ())
    except SpatialFlowError:
        return ()


def complete_map_axis(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with every ``mapAxis`` (also inside sequences) listing its pass-through axes."""
    out = dict(d)
    if d.get("type") == "sequence" and isinstance(d.get("transformations"), list):
        out["transformations"] = [
            complete_map_axis(c) if isinstance(c, Mapping) else c for c in d["transformations"]
        ]
        return out
    spec = d.get("mapAxis")
    if d.get("type") != "mapAxis" or not isinstance(spec, Mapping):
        return out
    ins, outs = _axes_of(d.get("input")), _axes_of(d.get("output"))
    if not outs:
        return out
    full = {o: spec.get(o, o) for o in outs if o in spec or o in ins}
    full.update({k: v for k, v in spec.items() if k not in full})
    out["mapAxis"] = full
    return out


def read_transform(entry: Any, where: str) -> tuple[str, Transform]:
    """(coordinate system, transform) from one stored entry, or a FormatError at ``where``."""
    if not isinstance(entry, Mapping):
        raise FormatError(f"{where}: a coordinate transformation must be an object, got {entry!r}")
    try:
        return from_spatialdata_dict(complete_map_axis(entry))
    except SpatialFlowError as e:
        raise FormatError(f"{where}: {e}") from e


def read_transforms(entries: Any, where: str) -> dict[str, Transform]:
    """The ``{coordinate system: transform}`` of a stored ``coordinateTransformations`` list."""
    if entries is None:
        raise FormatError(f"{where}: no coordinateTransformations")
    if not isinstance(entries, list):
        raise FormatError(f"{where}: coordinateTransformations must be a list")
    return dict(read_transform(e, where) for e in entries)


def _complete(t: Transform, spatial: tuple[str, ...]) -> Transform:
    if isinstance(t, Sequence):
        return Sequence([_complete(c, spatial) for c in t.transformations])
    if (
        isinstance(t, MapAxis)
        and set(t.input_axes) == set(t.output_axes)
        and set(t.input_axes) < set(spatial)
    ):
        names = t.as_names() | {a: a for a in spatial if a not in t.input_axes}
        return MapAxis.from_names(
            names, tuple(t.input_axes) + tuple(a for a in spatial if a not in t.input_axes)
        )
    return t


def write_transform(t: Transform, element_axes: Seq[str], coordinate_system: str) -> dict:
    """The entry spatialdata 0.8 stores for ``t`` (``element_axes`` include ``c`` for images)."""
    spatial = tuple(a for a in element_axes if a not in CHANNEL_AXES)
    return to_spatialdata_dict(_complete(t, spatial), tuple(element_axes), coordinate_system)


def write_transforms(transforms: Mapping[str, Transform], element_axes: Seq[str]) -> list[dict]:
    """The ``coordinateTransformations`` list of an element."""
    return [write_transform(t, element_axes, cs) for cs, t in transforms.items()]
