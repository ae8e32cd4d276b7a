"""Optimizer rules: rewrite a logical plan into an equivalent, cheaper one.

Rules, applied bottom-up until nothing changes:

* **compose transforms**: two Transform nodes in a row become one (a linear sequence
  simplifies to one Affine); an identity transform disappears.
* **push queries into readers**: a Query over (Transform over) Read hands the reader the
  query box mapped back into the element's own coordinates (a conservative box, for pruning
  partitions whose bounds miss it) and the feature filter (exact); the exact box test stays
  above the transform.
* **choose a join strategy** for Aggregate: a direct pixel lookup for points by labels,
  zonal statistics for images, polygon overlay for shapes by shapes, and for points by shapes a
  broadcast of ``by`` when it is one partition (or ``broadcast_rows`` rows at most, when
  known), else a co-partitioned join where each points partition meets only the ``by``
  partitions whose bounds overlap it.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import TransformError
from spatialflow.plan.nodes import Aggregate, Node, Query, Read, TransformNode
from spatialflow.transforms.base import Identity
from spatialflow.transforms.composite import Sequence

__all__ = ["optimize", "source_read"]

BROADCAST_PARTITIONS = 1


def optimize(node: Node) -> Node:
    """The optimized plan."""
    for _ in range(20):
        new = _rewrite(node)
        if new is node:
            return node
        node = new
    return node


def _rewrite(node: Node) -> Node:
    children = tuple(_rewrite(c) for c in node.children)
    if any(a is not b for a, b in zip(children, node.children, strict=True)):
        node = node.with_children(*children)
    for rule in (_compose_transforms, _drop_identity, _push_query, _choose_strategy):
        out = rule(node)
        if out is not node:
            return out
    return node


def _compose_transforms(node: Node) -> Node:
    if isinstance(node, TransformNode) and isinstance(node.child, TransformNode):
        inner = node.child
        t = Sequence([inner.transform, node.transform]).simplify()
        return TransformNode(inner.child, t, node.to)
    return node


def _drop_identity(node: Node) -> Node:
    if isinstance(node, TransformNode) and (
        isinstance(node.transform, Identity) or node.transform.is_identity()
    ):
        return node.child
    return node


def _push_query(node: Node) -> Node:
    if not isinstance(node, Query):
        return node
    child = node.child
    if isinstance(child, Read) and _needs(child, node.bbox, node.features):
        return replace(node, child=_narrow(child, node.bbox, node.features), features=None)
    if isinstance(child, TransformNode) and isinstance(child.child, Read):
        read = child.child
        box = None
        if node.bbox is not None:
            try:
                box = _box_back(child, node.bbox)
            except TransformError:
                box = None  # not invertible: no pruning, the exact test still applies
        if _needs(read, box, node.features):
            return replace(
                node, child=replace(child, child=_narrow(read, box, node.features)), features=None
            )
    if isinstance(child, Read) and node.features is not None and child.features == node.features:
        return replace(node, features=None)
    return node


def _needs(read: Read, box: tuple | None, features: tuple | None) -> bool:
    return (box is not None and read.bbox != _intersect(read.bbox, box)) or (
        features is not None and read.features != features
    )


def _narrow(read: Read, box: tuple | None, features: tuple | None) -> Read:
    out = read
    if box is not None:
        out = replace(out, bbox=_intersect(read.bbox, box))
    if features is not None:
        feats = (
            features
            if read.features is None
            else tuple(f for f in read.features if f in set(features))
        )
        out = replace(out, features=feats)
    return out


def _intersect(a: tuple | None, b: tuple) -> tuple:
    if a is None:
        return tuple(float(v) for v in b)
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _box_back(node: TransformNode, box: tuple) -> tuple:
    inv = node.transform.inverse()
    corners = np.array(list(itertools.product((box[0], box[2]), (box[1], box[3]))), float)
    moved = inv.apply(corners, ("x", "y"), ("x", "y"))
    lo, hi = moved.min(axis=0), moved.max(axis=0)
    return (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1]))


def source_read(node: Node) -> Read:
    """The Read at the bottom of a chain of single-child nodes."""
    while not isinstance(node, Read):
        if len(node.children) != 1:
            raise ValueError(f"{node.describe()} has no single source")
        node = node.children[0]
    return node


def _choose_strategy(node: Node) -> Node:
    if not isinstance(node, Aggregate) or node.strategy != "auto":
        return node
    values = source_read(node.values).element
    by = source_read(node.by).element
    if isinstance(by, Labels):
        strategy = "pixel-lookup" if isinstance(values, Points) else "zonal"
    elif isinstance(values, Image):
        strategy = "zonal"
    elif isinstance(values, Shapes):
        strategy = "overlay"
    elif isinstance(by, Shapes) and by.npartitions <= BROADCAST_PARTITIONS:
        strategy = "broadcast"
    else:
        strategy = "copartition"
    return replace(node, strategy=strategy)
