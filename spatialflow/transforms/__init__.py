"""Coordinate transformations: the RFC-5 set, NGFF JSON, the coordinate-system graph, landmarks.

Functions here take elements by duck typing (anything with ``.transforms`` and ``.name``) and
Datasets through ``ds.items()``, so this package imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from spatialflow.errors import TransformError
from spatialflow.transforms.base import (
    Affine,
    Identity,
    MapAxis,
    Rotation,
    Scale,
    Transform,
    Translation,
)
from spatialflow.transforms.composite import Bijection, ByDimension, InverseOf, Sequence
from spatialflow.transforms.graph import Node, TransformGraph
from spatialflow.transforms.landmarks import Model, fit_landmarks

__all__ = [
    "Affine",
    "Bijection",
    "ByDimension",
    "Identity",
    "InverseOf",
    "MapAxis",
    "Rotation",
    "Scale",
    "Sequence",
    "Transform",
    "TransformGraph",
    "Translation",
    "align_landmarks",
    "get_transformation",
    "get_transformation_between",
    "set_transformation",
]


def _label(element: Any) -> str:
    name = getattr(element, "name", None)
    return f"element {name!r}" if name else f"this {type(element).__name__}"


def get_transformation(element: Any, to: str | None = None) -> Transform | dict[str, Transform]:
    """The element's transform to coordinate system ``to``, or all of them if ``to`` is None."""
    transforms: Mapping[str, Transform] = element.transforms
    if to is None:
        return dict(transforms)
    if to not in transforms:
        raise TransformError(
            f"{_label(element)} has no transformation to coordinate system {to!r}; "
            f"it has {sorted(transforms)}"
        )
    return transforms[to]


def set_transformation(element: Any, transform: Transform, to: str = "global") -> None:
    """Set (in place) the element's transform to coordinate system ``to``."""
    if not isinstance(transform, Transform):
        raise TransformError(f"set_transformation: {transform!r} is not a Transform")
    if not isinstance(to, str) or not to:
        raise TransformError(
            f"set_transformation: coordinate system name must be a non-empty string, got {to!r}"
        )
    element.transforms[to] = transform


def _graph(ds: Any) -> TransformGraph:
    return TransformGraph.from_elements((name, el.transforms) for name, el in ds.items())


def get_transformation_between(ds: Any, source: Any, target: Any) -> Transform:
    """The transform from ``source`` to ``target`` (element names, elements or coordinate
    systems of ``ds``), composed along the shortest path, inverse edges used where invertible.
    An element name takes precedence over a coordinate system of the same name."""
    g = _graph(ds)
    return g.path(_node(ds, g, source), _node(ds, g, target))


def _node(ds: Any, g: TransformGraph, ref: Any) -> Node:
    if isinstance(ref, str):
        return g.resolve(ref)
    for name, el in ds.items():
        if el is ref:
            return Node("element", name)
    raise TransformError(f"{ref!r} is neither a name nor an element of this Dataset")


def align_landmarks(reference: Any, moving: Any, model: Model = "affine") -> Affine:
    """Affine mapping the ``moving`` landmarks onto the ``reference`` ones (least squares).

    Landmarks are (N, 2) arrays of (x, y), or Points elements / DataFrames with x and y columns
    (row k of one pairs with row k of the other)."""
    return fit_landmarks(
        _landmark_array(reference, "reference"), _landmark_array(moving, "moving"), model
    )


def _landmark_array(obj: Any, what: str) -> np.ndarray:
    data = getattr(obj, "data", obj)
    if hasattr(data, "compute") and hasattr(data, "columns"):
        data = data.compute()
    if hasattr(data, "columns"):
        missing = [c for c in ("x", "y") if c not in data.columns]
        if missing:
            raise TransformError(f"align_landmarks: {what} landmarks lack columns {missing}")
        return data[["x", "y"]].to_numpy(dtype=np.float64)
    return np.asarray(data, dtype=np.float64)
