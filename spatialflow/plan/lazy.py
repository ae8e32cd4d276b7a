"""Lazy results: a plan that can explain itself and compute."""

from __future__ import annotations

import html
import warnings
from typing import Any

from spatialflow.plan.aggregate import lower_aggregate
from spatialflow.plan.aggregate.common import DROPPED, AggregateGraph, Spec
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.result import LazyPlan

__all__ = ["LazyTable", "finish_table"]


def finish_table(adata: Any, what: str) -> Any:
    """Report (as a warning) the values dropped for NaN coordinates, on the caller's side."""
    dropped = int(adata.uns.pop(DROPPED, 0))
    if dropped:
        warnings.warn(
            f"{what}: {dropped} values with NaN coordinates were dropped", UserWarning, stacklevel=3
        )
    return adata


class LazyTable(LazyPlan):
    """The lazy result of ``sf.aggregate``: ``explain()``, ``compute()``, ``to_delayed()``."""

    node_type = Aggregate

    def __init__(self, plan: Aggregate, spec: Spec, table_name: str) -> None:
        super().__init__(plan)
        self.spec = spec
        self.table_name = table_name

    def _lower(self, node: Aggregate) -> AggregateGraph:
        return lower_aggregate(node, self.spec)

    def explain(self, print_: bool = True) -> str:
        """The optimized plan, the join strategy, partitions read and the task count."""
        g = self.lower()
        lines = [
            "== optimized plan ==",
            *self.optimized().explain_lines(),
            "== execution ==",
            f"strategy: {g.strategy}",
            f"values partitions read: {g.values_partitions[0]} of {g.values_partitions[1]}",
            f"by partitions: {g.by_partitions[0]} of {g.by_partitions[1]}",
            f"partition joins: {g.joins}",
            f"tasks: {g.n_tasks}",
            f"output: table {self.table_name!r}, {self.spec.n_vars} variables "
            f"({self.spec.kind}, agg={self.spec.agg!r})",
        ]
        text = "\n".join(lines)
        if print_:
            print(text)
        return text

    def compute(self, **kwargs: Any) -> Any:
        """Run the plan (on the active distributed client if any) and return the AnnData."""
        import dask

        (adata,) = dask.compute(self.to_delayed(), **kwargs)
        return finish_table(adata, f"aggregate {self.plan.values_name!r}")

    def __repr__(self) -> str:
        return f"LazyTable({self.table_name!r}):\n" + "\n".join(self.optimized().explain_lines())

    def _repr_html_(self) -> str:
        body = html.escape("\n".join(self.optimized().explain_lines()))
        return (
            f"<div><b>spatialflow lazy table</b> {html.escape(self.table_name)!s}"
            f"<pre>{body}</pre><i>call .explain() or .compute()</i></div>"
        )
