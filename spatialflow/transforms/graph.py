"""The coordinate-system graph.

Nodes are elements and coordinate systems; each stored transform is an edge from its element to
a coordinate system, and the inverse edge is usable wherever the transform is invertible. A
path between any two nodes is the shortest chain of edges (breadth first), composed into one
:class:`~spatialflow.transforms.base.Sequence`. The graph knows nothing of Dataset or element
classes: it is built from ``(name, {coordinate system: transform})`` pairs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from spatialflow.errors import TransformError
from spatialflow.transforms.base import Identity, Transform
from spatialflow.transforms.composite import Sequence

__all__ = ["Node", "TransformGraph"]


@dataclass(frozen=True)
class Node:
    kind: str  # "element" or "cs"
    name: str

    def __str__(self) -> str:
        return f"{'element' if self.kind == 'element' else 'coordinate system'} {self.name!r}"


class TransformGraph:
    """Directed transform edges between elements and coordinate systems."""

    def __init__(self) -> None:
        self._edges: dict[Node, list[tuple[Node, Transform, bool]]] = {}

    @classmethod
    def from_elements(
        cls, elements: Iterable[tuple[str, Mapping[str, Transform]]]
    ) -> TransformGraph:
        g = cls()
        for name, transforms in elements:
            g.add_node(Node("element", name))
            for cs, t in transforms.items():
                g.add_edge(Node("element", name), Node("cs", cs), t)
        return g

    def add_node(self, node: Node) -> None:
        self._edges.setdefault(node, [])

    def add_edge(self, src: Node, dst: Node, t: Transform) -> None:
        self.add_node(src)
        self.add_node(dst)
        self._edges[src].append((dst, t, False))
        self._edges[dst].append((src, t, True))  # inverse edge, checked when used

    @property
    def nodes(self) -> list[Node]:
        return list(self._edges)

    def coordinate_systems(self) -> list[str]:
        return sorted(n.name for n in self._edges if n.kind == "cs")

    def resolve(self, name: str, prefer: str | None = None) -> Node:
        """The node called ``name`` (an element if one has that name, else a coordinate system)."""
        kinds = (prefer,) if prefer else ("element", "cs")
        for kind in kinds:
            if Node(kind, name) in self._edges:
                return Node(kind, name)
        raise TransformError(
            f"unknown element or coordinate system {name!r}; coordinate systems: "
            f"{self.coordinate_systems()}"
        )

    def path(self, src: Node, dst: Node) -> Transform:
        """The composed transform from ``src`` to ``dst``."""
        for n in (src, dst):
            if n not in self._edges:
                raise TransformError(
                    f"unknown {n}; coordinate systems: {self.coordinate_systems()}"
                )
        if src == dst:
            return Identity()
        found = self._bfs(src, dst, invertible_only=True)
        if found is None:
            if self._bfs(src, dst, invertible_only=False) is not None:
                raise TransformError(
                    f"every path from {src} to {dst} needs the inverse of a non-invertible "
                    "transform; store a transform in the other direction"
                )
            raise TransformError(f"no transformation path from {src} to {dst}")
        return found if len(found.transformations) != 1 else found.transformations[0]

    def _bfs(self, src: Node, dst: Node, invertible_only: bool) -> Sequence | None:
        prev: dict[Node, tuple[Node, Transform] | None] = {src: None}
        queue = deque([src])
        while queue:
            node = queue.popleft()
            if node == dst:
                break
            for nxt, t, inverse in self._edges[node]:
                if nxt in prev:
                    continue
                step = t
                if inverse and invertible_only:
                    try:
                        step = t.inverse()
                    except TransformError:
                        continue
                prev[nxt] = (node, step)
                queue.append(nxt)
        if dst not in prev:
            return None
        steps: list[Transform] = []
        node = dst
        while prev[node] is not None:
            parent, step = prev[node]  # type: ignore[misc]
            steps.append(step)
            node = parent
        return Sequence(list(reversed(steps)))
