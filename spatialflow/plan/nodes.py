"""Logical plan nodes: small immutable expressions, in the manner of dask-expr.

A plan is a tree of these nodes. ``ops/`` builds them, :mod:`spatialflow.plan.optimizer`
rewrites them (``simplify``), :mod:`spatialflow.plan.compiler` lowers them to Dask graphs, and
every node can describe itself for ``explain()``. Nodes hold elements, never Dask graphs, so
building a plan costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from spatialflow.elements.base import Element
from spatialflow.transforms.base import Transform

__all__ = ["Aggregate", "Node", "Query", "Read", "TransformNode", "boxes_meet"]

Strategy = Literal["auto", "broadcast", "copartition", "pixel-lookup", "zonal", "overlay"]


@dataclass(frozen=True, eq=False)
class Node:
    """Base of all plan nodes."""

    @property
    def children(self) -> tuple[Node, ...]:
        return ()

    def with_children(self, *children: Node) -> Node:
        return self

    def describe(self) -> str:
        return type(self).__name__

    def explain_lines(self, depth: int = 0) -> list[str]:
        lines = ["  " * depth + self.describe()]
        for c in self.children:
            lines.extend(c.explain_lines(depth + 1))
        return lines


@dataclass(frozen=True, eq=False)
class Read(Node):
    """Read an element, optionally only the partitions meeting ``bbox`` (in the element's own
    coordinates) and only rows whose feature is in ``features``."""

    name: str
    element: Element
    bbox: tuple[float, float, float, float] | None = None
    features: tuple[Any, ...] | None = None
    columns: tuple[str, ...] | None = None
    coalesce: bool = False  # join small consecutive partitions into larger units of work

    def partitions(self) -> list[int] | None:
        """Indices of the partitions to read (None: all, or not a partitioned element)."""
        n = getattr(self.element, "npartitions", None)
        if n is None:
            return None
        if self.bbox is None:
            return list(range(n))
        bounds = self.element.partition_bounds  # type: ignore[attr-defined]
        if bounds is None:
            return list(range(n))
        return np.flatnonzero(boxes_meet(bounds, self.bbox)).tolist()

    def describe(self) -> str:
        kind = type(self.element).__name__
        parts = self.partitions()
        n = getattr(self.element, "npartitions", None)
        what = f"Read {kind} {self.name!r}"
        if parts is not None and n is not None:
            what += f" [{len(parts)}/{n} partitions]"
        if self.bbox is not None:
            what += f" bbox={tuple(round(v, 3) for v in self.bbox)}"
        if self.features is not None:
            shown = list(self.features)[:5]
            what += f" features={shown}{'...' if len(self.features) > 5 else ''}"
        if self.columns is not None:
            what += f" columns={list(self.columns)}"
        return what


def boxes_meet(bounds: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """Which rows of ``bounds`` (minima then maxima per axis: ``(n, 2d)``) meet the 2D ``box``
    (minx, miny, maxx, maxy); NaN bounds (an empty partition or unit) meet nothing.
    Vectorized: 10^8 points are ~6,000 row groups, whose test one by one took ~20 ms of a
    query's planning."""
    b = np.asarray(bounds, dtype=np.float64)
    if b.size == 0:
        return np.zeros(len(b), dtype=bool)
    d = b.shape[1] // 2
    with np.errstate(invalid="ignore"):
        return (
            ~np.isnan(b).any(axis=1)
            & (b[:, 0] <= box[2])
            & (b[:, d] >= box[0])
            & (b[:, 1] <= box[3])
            & (b[:, d + 1] >= box[1])
        )


@dataclass(frozen=True, eq=False)
class TransformNode(Node):
    """Move a child's coordinates into coordinate system ``to`` with ``transform``."""

    child: Node
    transform: Transform
    to: str

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    def with_children(self, *children: Node) -> Node:
        return replace(self, child=children[0])

    def describe(self) -> str:
        return f"Transform -> {self.to!r}: {self.transform!r}"


@dataclass(frozen=True, eq=False)
class Query(Node):
    """Keep rows inside ``bbox`` (in the child's coordinates) and with feature in ``features``."""

    child: Node
    bbox: tuple[float, float, float, float] | None = None
    features: tuple[Any, ...] | None = None

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.child,)

    def with_children(self, *children: Node) -> Node:
        return replace(self, child=children[0])

    def describe(self) -> str:
        parts = []
        if self.bbox is not None:
            parts.append(f"bbox={tuple(round(v, 3) for v in self.bbox)}")
        if self.features is not None:
            parts.append(f"{len(self.features)} features")
        return "Query " + " ".join(parts)


@dataclass(frozen=True, eq=False)
class Aggregate(Node):
    """Aggregate ``values`` by the instances of ``by`` (both already in one coordinate system)."""

    values: Node
    by: Node
    values_name: str
    by_name: str
    value_key: str | None
    agg: str
    fractions: bool
    coordinate_system: str
    strategy: Strategy = "auto"
    value_table: Any = None  # (obs column Series indexed by instance) when value_key is in a table
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.values, self.by)

    def with_children(self, *children: Node) -> Node:
        return replace(self, values=children[0], by=children[1])

    def describe(self) -> str:
        key = f" value_key={self.value_key!r}" if self.value_key else ""
        frac = " fractions" if self.fractions else ""
        return (
            f"Aggregate {self.values_name!r} by {self.by_name!r} agg={self.agg!r}{key}{frac} "
            f"in {self.coordinate_system!r} strategy={self.strategy}"
        )
