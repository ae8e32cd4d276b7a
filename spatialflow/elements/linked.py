"""Lazy links to external files: an element that holds only a file's location until used.

A linked element is a real ``Points``/``Shapes``/``Image``/``Table`` (so a Dataset, the planner
and every operation accept it), built without running the kind's constructor: it knows its name,
its transforms and its :class:`ExternalSource` (kind, URL, reader options, the file's
fingerprint) and nothing else. The first access to anything else (``.data``, ``.axes``,
``.npartitions`` ...) *materializes* it: the loader (io/links.py, handed in by whoever builds the
element, since elements/ must not import io/) opens the file lazily (a Dask collection where the
format allows) and the real element's state is adopted in place. ``repr`` never materializes and
marks the element ``[lazy link]``; writers ask :func:`is_linked` and store the source, not the
data (unless asked to materialize).

Design decisions: materialization adopts state in place (``__dict__``) rather than swapping the
object, so every holder of the element (plans, datasets, other links) sees the data at once;
dunder lookups never materialize (pickle and copy probe for them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from spatialflow.elements.base import Element
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.transforms.base import Transform

__all__ = [
    "LINKABLE_KINDS",
    "ExternalSource",
    "is_linked",
    "is_materialized",
    "linked_element",
]

LINKABLE_KINDS = ("points", "shapes", "image", "table")
_OWN = ("name", "transforms", "_source", "_loader", "_materialized", "_lock")


@dataclass(frozen=True)
class ExternalSource:
    """Where a linked element's data lives and how to read it."""

    kind: str  # points | shapes | image | table
    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: Mapping[str, Any] = field(default_factory=dict)  # size, mtime, etag

    def with_options(self, **options: Any) -> ExternalSource:
        return replace(self, options={**self.options, **options})


class _Linked:
    """Mixin of the linked element classes (placed before the element class)."""

    _source: ExternalSource

    def _materialize(self) -> None:
        state = self.__dict__
        with state["_lock"]:
            if state["_materialized"]:
                return
            real = state["_loader"](self)
            for key, value in real.__dict__.items():
                if key not in ("name", "transforms"):
                    state[key] = value
            state["_materialized"] = True

    def __getattr__(self, attr: str) -> Any:
        state = self.__dict__
        if attr.startswith("__") or "_loader" not in state or state.get("_materialized"):
            raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")
        self._materialize()
        return getattr(self, attr)

    @property
    def source(self) -> ExternalSource:
        return self.__dict__["_source"]

    def summary(self) -> str:
        src = self.__dict__["_source"]
        if not self.__dict__["_materialized"]:
            return f"[lazy link] {src.kind} at {src.url}"
        return f"[lazy link] {src.url}: {super().summary()}"  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        self._materialize()  # a copy in another process must not need the loader's state
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_lock"] = threading.RLock()


class LinkedPoints(_Linked, Points):
    pass


class LinkedShapes(_Linked, Shapes):
    pass


class LinkedImage(_Linked, Image):
    pass


class LinkedTable(_Linked, Table):
    pass


_CLASSES: dict[str, type[Element]] = {
    "points": LinkedPoints,
    "shapes": LinkedShapes,
    "image": LinkedImage,
    "table": LinkedTable,
}


def linked_element(
    source: ExternalSource,
    loader: Callable[[Any], Element],
    *,
    transforms: Mapping[str, Transform] | None = None,
    name: str | None = None,
    table_links: Mapping[str, Any] | None = None,
) -> Element:
    """A linked element of ``source.kind`` that calls ``loader(element)`` on first use.

    ``table_links`` (tables only): ``region``, ``region_key``, ``instance_key`` declared up
    front, so the link graph knows them without reading the file."""
    cls = _CLASSES[source.kind]
    el = cls.__new__(cls)
    state = el.__dict__
    state.update(
        {
            "_source": source,
            "_loader": loader,
            "_materialized": False,
            "_lock": threading.RLock(),
            "name": name,
        }
    )
    state["transforms"] = {} if source.kind == "table" else el._check_transforms(transforms)
    if source.kind == "table":
        links = dict(table_links or {})
        region = links.get("region")
        state["region"] = (
            [] if region is None else [region] if isinstance(region, str) else list(region)
        )
        state["region_key"] = links.get("region_key")
        state["instance_key"] = links.get("instance_key")
    return el


def is_linked(el: Any) -> bool:
    return isinstance(el, _Linked)


def is_materialized(el: Any) -> bool:
    return is_linked(el) and bool(el.__dict__.get("_materialized"))
