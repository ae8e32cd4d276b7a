"""``sf.annotate`` and ``sf.link``: relationships between tables and elements, and lazy links to
external files. ``sf.join``/``sf.get_values`` (ops/join.py) read the relationships.

``annotate(ds, element, table, method=...)`` records a :class:`~spatialflow.elements.links.Link`
in ``ds.links`` and checks what it can without reading element data: that both names exist,
that the table's key column exists and (index/column methods) holds no duplicate instance
within the rows that take part; a column link checks the element's column from its schema.
Nothing is computed: an sjoin link is evaluated by the engine (plan/sjoin.py) the first time a
join needs its pairs and cached in the graph.

:func:`link_rows` is the one place that turns a link into ``(row, key)`` pairs: the table row
positions that take part and the element key each row matches (index values, label ids, or an
element column's values). Joins are written once against those pairs, whatever the method.

``link(ds, name, url, kind=...)`` mounts an element over an external file without reading it
(io/links.py opens it on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from spatialflow.dataset import Dataset
from spatialflow.elements.base import Element
from spatialflow.elements.linked import is_linked
from spatialflow.elements.links import METHODS, PREDICATES, Link
from spatialflow.elements.raster import Labels
from spatialflow.elements.table import Table
from spatialflow.errors import SpatialFlowError, ValidationError
from spatialflow.io.links import make_linked
from spatialflow.transforms import get_transformation_between

__all__ = ["LinkRows", "annotate", "link", "link_rows"]

_KIND_GROUP = {"points": "points", "shapes": "shapes", "image": "images", "table": "tables"}


def _check_ds(ds: Any, what: str) -> Dataset:
    if not isinstance(ds, Dataset):
        raise ValidationError(f"{what}: expected a Dataset, got {type(ds).__name__}")
    return ds


def _annotatable(ds: Dataset, name: Any, what: str) -> Element:
    if not isinstance(name, str) or name not in ds:
        raise ValidationError(
            f"{what}: no element named {name!r}; elements a table can annotate: "
            f"{[n for n, _ in ds.items() if ds.kind_of(n) in ('labels', 'points', 'shapes')]}"
        )
    kind = ds.kind_of(name)
    if kind not in ("labels", "points", "shapes"):
        raise ValidationError(
            f"{what}: {name!r} is one of the {kind}; tables annotate labels, points or shapes"
        )
    return ds[name]


def annotate(
    ds: Dataset,
    element: str,
    table: str,
    *,
    method: str = "index",
    predicate: str = "intersects",
    table_key: str | None = None,
    region_key: str | None = None,
    via: str | None = None,
    coordinate_system: str = "global",
) -> Link:
    """Record that ``table`` annotates ``element`` (lazy) and return the link.

    ``method="index"``: ``obs[table_key]`` (default: the table's instance_key) holds the
    element's index values (label ids for labels). ``method=<column>``: ``obs[table_key]``
    (default: the same name) equals the element's column ``<column>``. ``method="sjoin"``: each
    table row annotates the instances of ``element`` that meet (``predicate``, in
    ``coordinate_system``) the instance of ``via`` it annotates (default ``via``: the one element
    the table annotates already). ``region_key``: only rows whose ``obs[region_key]`` equals
    ``element`` take part. Replaces an earlier link of the same pair."""
    ds = _check_ds(ds, "annotate")
    what = f"annotate({element!r}, {table!r})"
    el = _annotatable(ds, element, what)
    if not isinstance(table, str) or table not in ds.tables:
        raise ValidationError(f"{what}: no table named {table!r} (tables: {sorted(ds.tables)})")
    tab: Table = ds.tables[table]
    obs = tab.data.obs
    if region_key is not None and region_key not in obs.columns:
        raise ValidationError(
            f"{what}: region_key {region_key!r} is not an obs column (obs: {list(obs.columns)})"
        )
    if method in ("index", "sjoin"):
        for name in (element, via):
            _index_usable(ds, name, what)
    if method == "sjoin":
        if predicate not in PREDICATES:
            raise ValidationError(
                f"{what}: predicate {predicate!r} unknown; use one of {list(PREDICATES)}"
            )
        if via is None:
            others = [e for e in ds.links.elements_of(table) if e != element]
            if len(others) != 1:
                raise ValidationError(
                    f"{what}: an sjoin link needs via=<element the table's rows annotate>; "
                    f"{table!r} annotates {others}"
                )
            via = others[0]
        _annotatable(ds, via, what)
        if via == element:
            raise ValidationError(f"{what}: via must be another element than {element!r}")
        ds.links.get(table, via)  # the rows must annotate via already
        for name in (element, via):
            if isinstance(ds[name], Labels):
                raise ValidationError(
                    f"{what}: {name!r} is labels; a spatial join needs points or shapes"
                )
            _transform(ds, name, coordinate_system, what)
        lk = Link(
            table,
            element,
            "sjoin",
            via=via,
            predicate=predicate,
            coordinate_system=coordinate_system,
            region_key=region_key,
        )
        return ds.links.add(lk)
    if method == "index":
        key = table_key or tab.instance_key
        element_key = None
    else:
        if not isinstance(method, str) or not method:
            raise ValidationError(f"{what}: method must be one of {list(METHODS[::2])} or a column")
        if isinstance(el, Labels):
            raise ValidationError(f"{what}: labels have no columns; use method='index' (label ids)")
        columns = list(el.data.columns)
        if method not in columns:
            raise ValidationError(
                f"{what}: method={method!r} is neither 'index', 'sjoin' nor a column of "
                f"{element!r} (columns: {columns})"
            )
        key = table_key or method
        element_key = method
    if key is None:
        raise ValidationError(
            f"{what}: the table has no instance_key; pass table_key=<obs column with the ids>"
        )
    if key not in obs.columns:
        raise ValidationError(
            f"{what}: table_key {key!r} is not an obs column of {table!r} (obs: {list(obs.columns)})"
        )
    lk = Link(
        table,
        element,
        "index" if element_key is None else "column",
        table_key=key,
        element_key=element_key,
        region_key=region_key,
    )
    _check_unique(tab, lk, what)
    return ds.links.add(lk)


def _index_usable(ds: Dataset, name: str | None, what: str) -> None:
    """CSV points read in blocks number their rows per block: their index is no instance id."""
    if name is None or name not in ds:
        return
    el = ds[name]
    if is_linked(el) and el.source.kind == "points" and el.source.options.get("format") == "csv":
        raise ValidationError(
            f"{what}: {name!r} is linked to a CSV file, whose rows have no global index; "
            "link by a column of ids instead (method=<column name>)"
        )


def _transform(ds: Dataset, name: str, cs: str, what: str) -> Any:
    try:
        return get_transformation_between(ds, name, cs)
    except SpatialFlowError as e:
        raise ValidationError(
            f"{what}: no transformation from {name!r} to coordinate system {cs!r} ({e})"
        ) from e


def _selected(tab: Table, lk: Link) -> np.ndarray:
    """Positions of the table rows that take part in ``lk``."""
    obs = tab.data.obs
    if lk.region_key is None:
        return np.arange(tab.data.n_obs)
    return np.flatnonzero((obs[lk.region_key].astype(str) == lk.element).to_numpy())


def _check_unique(tab: Table, lk: Link, what: str) -> None:
    rows = _selected(tab, lk)
    keys = tab.data.obs[lk.table_key].iloc[rows]
    if keys.isna().any():
        raise ValidationError(f"{what}: obs[{lk.table_key!r}] has missing values")
    dup = keys.duplicated()
    if dup.any():
        raise ValidationError(
            f"{what}: obs[{lk.table_key!r}] has {int(dup.sum())} duplicate instance ids (first "
            f"{keys[dup].iloc[0]!r}); each row must annotate a distinct instance"
        )


@dataclass
class LinkRows:
    """A link resolved: table row positions and the element key each matches, table order."""

    link: Link
    rows: np.ndarray  # int positions into the table
    keys: pd.Series  # element keys, aligned with rows (index = rows)
    element_key: str | None  # the element column matched (None: index or label ids)


def link_rows(ds: Dataset, lk: Link) -> LinkRows:
    """``lk`` as (row, key) pairs; an sjoin is computed here (once, then cached)."""
    tab: Table = ds.tables[lk.table]
    if lk.method != "sjoin":
        rows = _selected(tab, lk)
        keys = tab.data.obs[lk.table_key].iloc[rows]
        return LinkRows(
            lk, rows, pd.Series(keys.to_numpy(), index=rows, name=lk.table_key), lk.element_key
        )
    assert lk.via is not None
    via = link_rows(ds, ds.links.get(lk.table, lk.via))
    pairs = _sjoin(ds, lk)
    via_rows = pd.DataFrame({"row": via.rows, "via": via.keys.to_numpy()})
    if via.element_key is not None:  # rows match a column of via: map to via's index
        col = ds[lk.via].data[[via.element_key]].compute()
        via_rows = (
            via_rows.merge(
                pd.DataFrame({"via": col[via.element_key].to_numpy(), "via_id": col.index}),
                on="via",
            )
            .drop(columns="via")
            .rename(columns={"via_id": "via"})
        )
    if lk.region_key is not None:
        via_rows = via_rows[via_rows["row"].isin(_selected(tab, lk))]
    merged = via_rows.merge(pairs.rename(columns={"left": "via", "right": "key"}), on="via")
    merged = merged.sort_values("row", kind="stable")
    rows = merged["row"].to_numpy()
    return LinkRows(lk, rows, pd.Series(merged["key"].to_numpy(), index=rows), None)


def _sjoin(ds: Dataset, lk: Link) -> pd.DataFrame:
    import dask

    from spatialflow.plan.sjoin import sjoin_pairs

    assert lk.via is not None and lk.coordinate_system is not None
    left, right = ds[lk.via], ds[lk.element]
    key = (lk, id(left), id(right))
    hit = ds.links.cached(key)
    if hit is not None:
        return hit
    what = f"sjoin link {lk.table!r} -> {lk.element!r}"
    cs = lk.coordinate_system
    pairs = sjoin_pairs(
        (lk.via, left, _transform(ds, lk.via, cs, what)),
        (lk.element, right, _transform(ds, lk.element, cs, what)),
        cs,
        lk.predicate or "intersects",
    )
    (out,) = dask.compute(pairs)
    ds.links.store(key, out)
    return out


def link(
    ds: Dataset,
    name: str,
    url: Any,
    *,
    kind: str = "points",
    storage_options: dict[str, Any] | None = None,
    transforms: dict[str, Any] | None = None,
    **options: Any,
) -> Element:
    """Mount the external file at ``url`` as element ``name`` of ``ds`` without reading it.

    ``kind``: ``points`` (CSV or Parquet; options ``format``, ``x``/``y``/``z`` column names,
    ``feature_key``, ``instance_key``, ``categories``, ``blocksize``, ``read_options`` for
    pandas' read_csv; CSV rows have no global row number, so tables link to CSV points by a
    column, not by index),
    ``shapes`` (GeoParquet), ``image`` (OME-TIFF; ``series``, ``chunks``, ``channel_names``)
    or ``table`` (h5ad or AnnData zarr; ``region``, ``region_key``, ``instance_key``).
    ``transforms`` as for any element (default: identity to ``global``). Returns the linked
    element; its data is read (lazily, in parallel where the format allows) when first used."""
    ds = _check_ds(ds, "link")
    el = make_linked(
        name,
        str(url),
        kind,
        options=options,
        storage_options=storage_options,
        transforms=transforms,
    )
    getattr(ds, _KIND_GROUP[kind])[name] = el
    return el
