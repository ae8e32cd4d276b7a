"""The base of lazy results: a logical plan optimized once, lowered to a Dask graph once.

Each operation's lazy result (``LazyTable`` of ``sf.aggregate``, ``LazyProfile`` of the density
profiles) names its node type and how to lower it; ``explain()`` and ``compute()`` are theirs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from spatialflow.plan.nodes import Node
from spatialflow.plan.optimizer import optimize

__all__ = ["LazyPlan"]


class LazyPlan(ABC):
    """A plan that optimizes and lowers itself once, on first need."""

    node_type: ClassVar[type[Node]]

    def __init__(self, plan: Node) -> None:
        self.plan = plan
        self._optimized: Any = None
        self._lowered: Any = None

    def optimized(self) -> Any:
        if self._optimized is None:
            out = optimize(self.plan)
            if not isinstance(out, self.node_type):
                raise TypeError(f"the optimizer turned a {self.node_type.__name__} into {out!r}")
            self._optimized = out
        return self._optimized

    def lower(self) -> Any:
        if self._lowered is None:
            self._lowered = self._lower(self.optimized())
        return self._lowered

    @abstractmethod
    def _lower(self, node: Any) -> Any:
        """The lowered graph (an object with ``result``, a Delayed) of the optimized node."""

    def to_delayed(self) -> Any:
        """A dask Delayed computing the result."""
        return self.lower().result
