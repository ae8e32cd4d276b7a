"""``sf.join`` and ``sf.get_values``: spatialdata 0.8's ``join_spatialelement_table`` and
``get_values``, over the link graph (any link method, not only a table's region).

Semantics follow spatialdata 0.8 (its relational_query module), row for row:

* elements are visited grouped by kind, kinds in order of first appearance among the names;
  the joined table's rows come per element in that order.
* ``left``: elements unchanged; the table keeps the rows matching an instance, in table order
  (``match_rows="element"``: in element order). ``left_exclusive``: no table; points and shapes
  keep the instances no row annotates (None when none is left), labels are skipped.
  ``inner``: both sides filtered (elements in table order, or element order with
  ``match_rows="element"``); labels keep their pixels unless ``filter_label_pixels=True`` and
  add no rows. ``right``: the table unchanged, elements filtered as for inner.
  ``right_exclusive``: no elements; the table keeps the rows matching no instance.
* ``match_rows``: ``"no"``, ``"element"`` (spatialdata's ``"left"``: table rows in element
  order) or ``"table"`` (spatialdata's ``"right"``: element rows in table order); the
  spatialdata names are accepted too. A joined table keeps every category of its categorical
  obs columns and its ``region`` lists the regions left, as spatialdata does.

Differences, by design: elements stay lazy (filtered per partition); where spatialdata
reorders element rows to the table's order, each partition is reordered (the element keeps its
spatial partitioning, so on a one-partition element the order is spatialdata's); left_exclusive
matches instance ids by value (spatialdata uses them as positions, which is only right for ids
0..n-1); an element the join leaves empty is None. Instance ids of points and shapes (their
index; one pass over the index only) and of labels (the unique pixel values of scale 0, one
parallel pass) are computed, as in spatialdata; pixels are never gathered.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from spatialflow.dataset import Dataset
from spatialflow.elements.links import Link
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import ValidationError
from spatialflow.ops.links import LinkRows, link_rows

__all__ = ["get_values", "join"]

HOWS = ("left", "left_exclusive", "inner", "right", "right_exclusive")
_MATCH = {"no": "no", "element": "left", "left": "left", "table": "right", "right": "right"}
_ATTRS = "spatialdata_attrs"


def _instances(el: Any, key: str | None) -> pd.Index:
    """The element's instance ids (index / a column / label ids without 0), computed."""
    if isinstance(el, Labels):
        values = da.unique(el.scale(0).data).compute()
        index = pd.Index(np.sort(values))
        return index.drop(0) if 0 in index else index
    if key is None:
        return pd.Index(el.data.index.compute())
    return pd.Index(el.data[key].compute().to_numpy())


def _merged(keys: pd.Series, element_ids: pd.Index, how: str) -> pd.DataFrame:
    """spatialdata's row matching: element ids merged ``how`` with the matching rows."""
    mask = np.isin(keys.to_numpy(), element_ids)
    right = pd.DataFrame({"instance_id": keys.to_numpy()[mask], "index_right": keys.index[mask]})
    left = pd.DataFrame({"index_left": element_ids})
    return pd.merge(left, right, left_on="index_left", right_on="instance_id", how=how)


def _match(keys: pd.Series, element_ids: pd.Index, how: str) -> tuple[pd.Index, pd.Index]:
    """(element ids, table positions) of :func:`_merged`, each without missing values."""
    merged = _merged(keys, element_ids, how)
    return pd.Index(merged["index_left"].dropna()), pd.Index(merged["index_right"].dropna())


def _order_by(part: Any, key: str | None, values: np.ndarray, ordered: bool) -> Any:
    ids = part.index if key is None else pd.Index(part[key])
    keep = ids.isin(values)
    part = part[keep]
    if ordered and len(part):
        rank = pd.Series(np.arange(len(values)), index=pd.Index(values))
        rank = rank[~rank.index.duplicated()]
        sub = ids[keep]
        order = np.argsort(rank.reindex(sub).to_numpy(), kind="stable")
        part = part.iloc[order]
    return part


def _masked(el: Any, key: str | None, values: np.ndarray, ordered: bool) -> Any:
    """``el`` keeping the instances in ``values`` (per partition, lazy); None when empty."""
    if len(values) == 0:
        return None
    data = el.data.map_partitions(_order_by, key, values, ordered, meta=el.data._meta)
    if isinstance(el, Points):
        return Points(
            data,
            feature_key=el.feature_key,
            instance_key=el.instance_key,
            transforms=dict(el.transforms),
            partition_bounds=el.partition_bounds,
        )
    return Shapes(data, transforms=dict(el.transforms), partition_bounds=el.partition_bounds)


def _keep_labels(block: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return np.where(np.isin(block, keep), block, 0).astype(block.dtype, copy=False)


def _filter_labels(el: Labels, keep: np.ndarray) -> Labels:
    """Labels with every pixel of an id not in ``keep`` set to 0 (lazy, every scale)."""
    keep = np.asarray(keep)
    levels = {}
    for k in range(el.n_scales):
        arr = el.scale(k)
        data = arr.data.map_blocks(_keep_labels, keep, dtype=arr.dtype)
        levels[f"s{k}"] = xr.Dataset({"image": xr.DataArray(data, dims=arr.dims)})
    return Labels(xr.DataTree.from_dict(levels), transforms=dict(el.transforms))


def _subset(adata: Any, positions: list[int], region_key: str | None) -> Any:
    """``adata[positions]`` as spatialdata builds it: categories kept, region updated."""
    out = adata[positions, :].copy()
    obs = pd.DataFrame(out.obs)
    for col in obs.columns:
        if isinstance(obs[col].dtype, pd.CategoricalDtype):
            obs[col] = obs[col].cat.set_categories(adata.obs[col].cat.categories)
    out.obs = obs
    attrs = out.uns.get(_ATTRS)
    if region_key is not None and isinstance(attrs, dict) and region_key in obs.columns:
        regions = obs[region_key].unique().tolist()
        attrs = dict(attrs)
        attrs["region"] = regions if len(regions) > 1 else regions[0] if regions else []
        out.uns[_ATTRS] = attrs
    return out


def _grouped(ds: Dataset, names: list[str]) -> list[str]:
    kinds: dict[str, list[str]] = {}
    for n in names:
        kinds.setdefault(ds.kind_of(n), []).append(n)
    return [n for group in kinds.values() for n in group]


def _region_key(lks: list[Link]) -> str | None:
    keys = {lk.region_key for lk in lks if lk.region_key is not None}
    return keys.pop() if len(keys) == 1 else None


def join(
    ds: Dataset,
    element_names: str | list[str],
    table_name: str,
    *,
    how: str = "left",
    match_rows: str = "no",
    filter_label_pixels: bool | None = None,
) -> tuple[dict[str, Any], Any]:
    """Join elements with a table as spatialdata 0.8's ``join_spatialelement_table`` does.

    Returns ``(elements, table)``: ``elements`` maps each name to the joined element (lazy;
    None where the join leaves nothing), ``table`` is the joined AnnData or None."""
    if not isinstance(ds, Dataset):
        raise ValidationError(f"join: expected a Dataset, got {type(ds).__name__}")
    names = [element_names] if isinstance(element_names, str) else list(element_names)
    if how not in HOWS:
        raise ValidationError(f"join: how={how!r} unknown; use one of {list(HOWS)}")
    if match_rows not in _MATCH:
        raise ValidationError(
            f"join: match_rows={match_rows!r} unknown; use 'no', 'element' or 'table'"
        )
    if table_name not in ds.tables:
        raise ValidationError(f"join: no table named {table_name!r} (tables: {sorted(ds.tables)})")
    for n in names:
        if n not in ds:
            raise ValidationError(
                f"join: no element named {n!r}; elements: {[m for m, _ in ds.items()]}"
            )
        if ds.kind_of(n) in ("images", "tables"):
            raise ValidationError(
                f"join: {n!r} is one of the {ds.kind_of(n)}; join labels, points or shapes"
            )
    if not names:
        raise ValidationError("join: give at least one element name")
    match = _MATCH[match_rows]
    table = ds.tables[table_name].data
    linked = set(ds.links.elements_of(table_name))
    if how == "left" and match == "right":
        warnings.warn("Matching rows 'table' is not supported for 'left' join.", UserWarning, 2)
    if how == "right" and match == "left":
        warnings.warn("Matching rows 'element' is not supported for 'right' join.", UserWarning, 2)
    out: dict[str, Any] = {}
    positions: list[int] | None = None
    keep = np.zeros(table.n_obs, dtype=bool)
    has_match = False
    used: list[Link] = []
    for name in _grouped(ds, names):
        el = ds[name]
        if name not in linked:
            warnings.warn(
                f"The element `{name}` is not annotated by the table. Skipping", UserWarning, 2
            )
            out[name] = None if how in ("inner", "right_exclusive") else el
            continue
        lr: LinkRows = link_rows(ds, ds.links.get(table_name, name))
        used.append(lr.link)
        keys = lr.keys
        if how == "left":
            ids = _instances(el, lr.element_key)
            if match == "left":
                _, rows = _match(keys, ids, "left")
            else:
                rows = pd.Index(keys.index[np.isin(keys.to_numpy(), ids)])
            positions = (positions or []) + [int(r) for r in rows]
            out[name] = el
        elif how == "left_exclusive":
            if isinstance(el, Labels):
                warnings.warn(
                    f"Element type `labels` not supported for left exclusive join. "
                    f"Skipping `{name}`",
                    UserWarning,
                    2,
                )
                out[name] = el
                continue
            ids = _instances(el, lr.element_key)
            rest = ids[~ids.isin(keys.to_numpy())]
            out[name] = _masked(el, lr.element_key, rest.to_numpy(), False)
        elif how == "right_exclusive":
            ids = _instances(el, lr.element_key)
            unmatched = ~np.isin(keys.to_numpy(), ids)
            keep[keys.index[unmatched]] = True
            has_match = True
            out[name] = None
        else:  # inner, right
            if isinstance(el, Labels):
                if filter_label_pixels is True:
                    out[name] = _filter_labels(el, keys.to_numpy())
                else:
                    if filter_label_pixels is None:
                        warnings.warn(
                            f"Element type `labels` not supported for '{how}' join, "
                            "pixels are not filtered; pass `filter_label_pixels=True` "
                            "to filter or `filter_label_pixels=False` to silence this "
                            f"warning. Skipping `{name}`",
                            UserWarning,
                            2,
                        )
                    out[name] = el
                continue
            ids = _instances(el, lr.element_key)
            present = keys.to_numpy()[np.isin(keys.to_numpy(), ids)]
            if match == "left":
                order, _ = _match(keys, ids, "left")
                values = order[order.isin(present)].to_numpy()
                ordered = False
            else:
                values, ordered = present, True
            out[name] = _masked(el, lr.element_key, values, ordered)
            if how == "inner":
                if match == "left":
                    _, rows = _match(keys, pd.Index(values), "left")
                else:
                    rows = pd.Index(keys.index[np.isin(keys.to_numpy(), values)])
                positions = (positions or []) + [int(r) for r in rows]
    region_key = _region_key(used)
    if how in ("left", "inner"):
        joined = None if positions is None else _subset(table, positions, region_key)
    elif how == "right":
        joined = table
    elif how == "right_exclusive":
        joined = (
            _subset(table, np.flatnonzero(keep).tolist(), region_key)
            if (has_match and keep.any())
            else None
        )
    else:
        joined = None
    return {n: out[n] for n in _grouped(ds, names)}, joined


def get_values(
    ds: Dataset,
    element_name: str,
    value_key: str | list[str],
    *,
    table_name: str | None = None,
    table_layer: str | None = None,
    return_obsm_as_is: bool = False,
) -> Any:
    """Values of ``value_key`` for the instances of ``element_name``, as spatialdata 0.8's
    ``get_values``: from the element's columns (points, shapes) or, with ``table_name``, from
    the table's obs columns, variables (X or ``table_layer``) or obsm; indexed by the
    instance ids (for table values: in element order)."""
    if not isinstance(ds, Dataset):
        raise ValidationError(f"get_values: expected a Dataset, got {type(ds).__name__}")
    if element_name not in ds:
        raise ValidationError(
            f"get_values: no element named {element_name!r}; elements: {[n for n, _ in ds.items()]}"
        )
    el = ds[element_name]
    if ds.kind_of(element_name) == "images":
        raise ValidationError(f"get_values: cannot get values from the image {element_name!r}")
    keys = [value_key] if isinstance(value_key, str) else list(value_key)
    table = None
    if table_name is not None:
        if table_name not in ds.tables:
            raise ValidationError(
                f"get_values: no table named {table_name!r} (tables: {sorted(ds.tables)})"
            )
        if element_name in ds.links.elements_of(table_name):
            table = ds.tables[table_name].data
    origins = []
    for vk in keys:
        found = []
        if isinstance(el, Points | Shapes) and vk in el.data.columns:
            found.append(("df", isinstance(el.data._meta[vk].dtype, pd.CategoricalDtype)))
        if table is not None:
            if vk in table.obs.columns:
                found.append(("obs", isinstance(table.obs[vk].dtype, pd.CategoricalDtype)))
            elif vk in table.var_names:
                found.append(("var", False))
            elif vk in table.obsm:
                found.append(("obsm", False))
        if len(found) > 1:
            raise ValidationError(
                f"get_values: {vk!r} is found in several places ({[f[0] for f in found]}) of "
                f"{element_name!r}/{table_name!r}; rename one"
            )
        if not found:
            raise ValidationError(
                f"get_values: {vk!r} is not a column of {element_name!r}"
                + (
                    f" nor in table {table_name!r} (obs, var names, obsm)"
                    if table_name
                    else "; pass table_name= to look in a table annotating it"
                )
            )
        origins.append(found[0])
    if len({c for _, c in origins}) == 2:
        raise ValidationError("get_values: cannot mix categorical and non-categorical values")
    if len({o for o, _ in origins}) > 1:
        raise ValidationError(
            f"get_values: cannot mix values from different origins {sorted({o for o, _ in origins})}"
        )
    origin = origins[0][0]
    if origin == "df":
        return el.data[keys].compute()
    assert table_name is not None and table is not None
    lk = ds.links.get(table_name, element_name)
    lr = link_rows(ds, lk)
    _, matched = join(ds, element_name, table_name, how="left", match_rows="element")
    obs = matched.obs
    instance = (
        obs[lk.table_key]
        if lk.method != "sjoin"
        else pd.Series(_sjoin_keys(lr, ds, element_name), name=None)
    )
    if lk.region_key is not None and obs[lk.region_key].nunique() != 1:
        raise ValidationError(
            f"get_values: the matched rows span several regions of {table_name!r}"
        )
    if lk.method != "sjoin" and instance.nunique() != len(matched):
        raise ValidationError(f"get_values: instance ids of {table_name!r} are not unique")
    if origin == "obs":
        df = obs[keys].copy()
    elif origin == "var":
        if table_layer is None:
            x = matched[:, keys].X
        else:
            if table_layer not in matched.layers:
                raise ValidationError(f"get_values: layer {table_layer!r} not found")
            x = matched[:, keys].layers[table_layer]
        if hasattr(x, "toarray"):
            x = x.toarray()
        df = pd.DataFrame(np.asarray(x), columns=keys)
    else:
        data: dict[str, Any] = {}
        for key in keys:
            values = matched.obsm[key]
            if len(keys) == 1 and return_obsm_as_is:
                return values
            values = np.asarray(values)
            for i in range(values.shape[1]):
                data[f"{key}_{i}"] = values[:, i]
        df = pd.DataFrame(data)
    df.index = instance
    return df


def _sjoin_keys(lr: LinkRows, ds: Dataset, element_name: str) -> np.ndarray:
    """Element ids of an sjoin link's rows in the order ``join(match_rows="element")`` gives."""
    merged = _merged(lr.keys, _instances(ds[element_name], None), "left")
    return merged["index_left"][merged["index_right"].notna()].to_numpy()
