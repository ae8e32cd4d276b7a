"""Lowering Aggregate nodes: the aggregation engine, one module per strategy.

Every strategy produces, per ``by`` partition k, a partial result, combined across tasks by a
tree reduction *per by partition* (common.py), so the final table is assembled from pieces that
never hold more than the result itself. Nothing proportional to the number of points reaches
the client: a points partition is read, transformed, joined and reduced inside one task.

* ``broadcast`` / ``copartition``: points by shapes (points_by_shapes.py) over the partition
  join of join.py (the by side prepared once per partition, halos through neighbour boxes).
* ``overlay``: shapes by shapes (shapes_by_shapes.py), over the same partition join.
* ``pixel-lookup``: points by labels (points_by_labels.py).
* ``zonal``: images by labels and by shapes (rasters.py).
"""

from __future__ import annotations

from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.plan.aggregate.common import AggregateGraph, Spec
from spatialflow.plan.aggregate.points_by_labels import lower_points_by_labels
from spatialflow.plan.aggregate.points_by_shapes import lower_points_by_shapes
from spatialflow.plan.aggregate.rasters import lower_image_by_labels, lower_image_by_shapes
from spatialflow.plan.aggregate.shapes_by_shapes import lower_shapes_by_shapes
from spatialflow.plan.nodes import Aggregate
from spatialflow.plan.optimizer import source_read

__all__ = ["lower_aggregate"]


def lower_aggregate(node: Aggregate, spec: Spec) -> AggregateGraph:
    """The Dask graph of an (optimized) Aggregate node, by the strategy its inputs call for."""
    values_el = source_read(node.values).element
    by_el = source_read(node.by).element
    if isinstance(by_el, Labels):
        if isinstance(values_el, Points):
            return lower_points_by_labels(node, spec)
        return lower_image_by_labels(node, spec)
    if isinstance(values_el, Image):
        return lower_image_by_shapes(node, spec)
    if node.strategy == "overlay":
        return lower_shapes_by_shapes(node, spec)
    return lower_points_by_shapes(node, spec)
