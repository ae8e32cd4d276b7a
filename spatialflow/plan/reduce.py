"""Tree reductions of delayed partial results, shared by every plan that reduces (aggregation,
density profiles, rasterization): a task never combines more than ``FAN_IN`` partials, so no
task holds more than a few partial results at once and the reduction runs in parallel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask

__all__ = ["FAN_IN", "tree_reduce"]

FAN_IN = 8


def tree_reduce(items: list[Any], combine: Callable[..., Any]) -> Any:
    """Reduce delayed values with ``combine(*values)`` in a tree of fan-in FAN_IN."""
    if not items:
        raise ValueError("tree_reduce: nothing to reduce")
    while len(items) > 1:
        groups = [items[i : i + FAN_IN] for i in range(0, len(items), FAN_IN)]
        items = [dask.delayed(combine)(*g) if len(g) > 1 else g[0] for g in groups]
    return items[0]
