"""``sf.aggregate``: values aggregated by the instances (shapes or labels) of another element.

Pairs: points by shapes (polygons, multipolygons, circles); points by labels; shapes by shapes
(optionally weighted by overlap fractions); images by labels and by shapes (per-channel zonal
statistics). Both elements are brought into ``coordinate_system`` through the transformation
graph; 3D points against 2D shapes or labels use their x and y only.

Semantics follow ``spatialdata.aggregate`` (0.8):

* a categorical ``value_key`` gives one variable per category (counts, or with
  ``fractions=True`` sums of overlap fractions); a numeric one gives a single variable with its
  ``sum``, ``mean``, ``min``, ``max`` or ``count`` per instance. With no ``value_key``, points
  use their ``feature_key`` and otherwise count.
* a value inside k overlapping shapes counts for each of them; circles are polygonized with
  ``buffer_resolution`` segments per quarter circle (spatialdata's default, 16).
* the table: obs index = str of the ``by`` index, obs ``instance_id`` (the index, its dtype)
  and categorical ``region`` (= the ``by`` name), var names = categories or the value_key
  (``channel_<name>_<agg>`` for images), X sparse CSR without stored zeros; instances with
  nothing in them are rows of zeros (mean/min/max of nothing is 0).

Documented outcomes of bad data: points with NaN coordinates are dropped and their number
reported in a warning; invalid polygons are repaired with ``shapely.make_valid`` (keeping the
polygonal parts); empty inputs give a table with the right rows and variables.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import PlanError, SpatialFlowError
from spatialflow.kernels.pip import warm_up_async
from spatialflow.plan.aggregate.common import NUMERIC_AGGS, Spec
from spatialflow.plan.lazy import LazyTable
from spatialflow.plan.nodes import Aggregate, Read, TransformNode
from spatialflow.transforms import get_transformation_between

__all__ = ["aggregate"]


def aggregate(
    ds: Dataset,
    values: str,
    by: str,
    *,
    value_key: str | None = None,
    agg: str = "count",
    coordinate_system: str = "global",
    fractions: bool = False,
    table_name: str | None = None,
    strategy: str = "auto",
    buffer_resolution: int = 16,
) -> LazyTable:
    """Aggregate element ``values`` by element ``by`` of ``ds`` (lazy; see the module doc)."""
    if not isinstance(ds, Dataset):
        raise PlanError(f"aggregate: expected a Dataset, got {type(ds).__name__}")
    v_el = _element(ds, values, "values")
    b_el = _element(ds, by, "by")
    if values == by:
        raise PlanError(f"aggregate: values and by are the same element {values!r}")
    if isinstance(b_el, Points):
        raise PlanError(
            f"aggregate: by={by!r} is a points element and has no area; aggregate "
            "by shapes or labels"
        )
    if isinstance(b_el, Image) or not isinstance(b_el, Shapes | Labels):
        raise PlanError(f"aggregate: by={by!r} must be shapes or labels, not {type(b_el).__name__}")
    if isinstance(v_el, Labels) or not isinstance(v_el, Points | Shapes | Image):
        raise PlanError(
            f"aggregate: values={values!r} must be points, shapes or an image, not "
            f"{type(v_el).__name__}"
        )
    if fractions and not isinstance(v_el, Shapes):
        raise PlanError(
            "aggregate: fractions=True needs shapes as values (points and pixels have no area)"
        )
    if strategy not in ("auto", "broadcast", "copartition"):
        raise PlanError(f"aggregate: unknown strategy {strategy!r}")
    warm_up_async()  # the join kernels load while the plan is built and its reads start
    spec, table_values = _spec(ds, values, v_el, value_key, agg, fractions)
    v_node = _placed(ds, values, v_el, coordinate_system, spec.value_key)
    b_node = _placed(ds, by, b_el, coordinate_system)
    plan = Aggregate(
        v_node,
        b_node,
        values,
        by,
        spec.value_key,
        agg,
        fractions,
        coordinate_system,
        strategy=strategy,  # type: ignore[arg-type]
        value_table=table_values,
        options={"buffer_resolution": int(buffer_resolution)},
    )
    return LazyTable(plan, spec, table_name or f"{values}_by_{by}")


def _element(ds: Dataset, name: Any, what: str) -> Any:
    if not isinstance(name, str):
        raise PlanError(f"aggregate: {what} must be an element name, got {type(name).__name__}")
    if name not in ds:
        raise PlanError(
            f"aggregate: no element named {name!r} ({what}); elements: {[n for n, _ in ds.items()]}"
        )
    return ds[name]


def _placed(ds: Dataset, name: str, el: Any, cs: str, value_key: str | None = None) -> Any:
    try:
        t = get_transformation_between(ds, name, cs)
    except SpatialFlowError as e:
        raise PlanError(
            f"aggregate: no transformation from {name!r} to coordinate system {cs!r}: {e}"
        ) from e
    columns = None
    if isinstance(el, Points):  # read only what the join needs
        columns = tuple(
            dict.fromkeys(["x", "y", *([value_key] if value_key in el.data.columns else [])])
        )
    read = Read(name, el, columns=columns, coalesce=isinstance(el, Points))
    if isinstance(el, Image | Labels):
        return read  # rasters are placed through their transforms by the strategy
    return TransformNode(read, t, cs)


def _spec(
    ds: Dataset, name: str, el: Any, value_key: str | None, agg: str, fractions: bool
) -> tuple[Spec, pd.Series | None]:
    allowed = NUMERIC_AGGS
    if agg not in allowed:
        raise PlanError(f"aggregate: agg must be one of {allowed}, got {agg!r}")
    if isinstance(el, Image):
        if value_key is not None:
            raise PlanError(
                "aggregate: value_key is not used for images (every channel is aggregated)"
            )
        return Spec("numeric", agg, [str(c) for c in el.channel_names], None), None
    table_values = None
    if isinstance(el, Points):
        key = value_key if value_key is not None else el.feature_key
        if key is None:
            return Spec(
                "ones", "count" if agg in ("count", "sum") else agg, ["count"], None, fractions
            ), None
        if key not in el.data.columns:
            raise PlanError(
                f"aggregate: value_key {key!r} is not a column of points {name!r} "
                f"(columns: {list(el.data.columns)})"
            )
        dtype = el.data._meta[key].dtype
    else:
        if value_key is None:
            return Spec("ones", agg if fractions else "count", ["count"], None, fractions), None
        if value_key in el.data.columns:
            dtype = _known_dtype(el, value_key)
            key = value_key
        else:
            table_values = _table_column(ds, name, value_key)
            dtype = table_values.dtype
            key = value_key
    if isinstance(dtype, pd.CategoricalDtype):
        if agg not in ("count", "sum"):
            raise PlanError(
                f"aggregate: agg={agg!r} is not defined for the categorical "
                f"value_key {key!r}; use 'count' or 'sum'"
            )
        if fractions and agg == "count":
            agg = "sum"  # with fractions a category's weight is a sum of overlap fractions
        return Spec(
            "categorical", agg, [str(c) for c in dtype.categories], key, fractions
        ), table_values
    if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise PlanError(
            f"aggregate: value_key {key!r} has dtype {dtype}; it must be numeric or categorical"
        )
    return Spec("numeric", agg, [key], key, fractions), table_values


def _table_column(ds: Dataset, name: str, key: str) -> pd.Series:
    for table in ds.tables_annotating(name).values():
        obs = table.data.obs
        if key in obs.columns:
            rows = obs[obs[table.region_key].astype(str) == name]
            series = pd.Series(
                rows[key].to_numpy(), index=rows[table.instance_key].to_numpy(), name=key
            )
            if isinstance(rows[key].dtype, pd.CategoricalDtype):
                series = series.astype(rows[key].dtype)
            return series
    raise PlanError(
        f"aggregate: value_key {key!r} is neither a column of {name!r} nor an obs "
        f"column of a table annotating it"
    )


def _known_dtype(el: Any, key: str) -> Any:
    """The dtype of column ``key``; a categorical with unknown categories (as dask reads a
    categorical without metadata) gets them from one pass over that column only."""
    from dask.dataframe.utils import has_known_categories

    dtype = el.data._meta[key].dtype
    if isinstance(dtype, pd.CategoricalDtype) and not has_known_categories(el.data[key]):
        return el.data[key].cat.as_known().dtype
    return dtype
