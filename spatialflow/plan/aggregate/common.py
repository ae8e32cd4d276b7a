"""What every aggregation strategy shares: the spec, partial results, their tree reduction, and
the assembly of the final table.

A partial result of one ``by`` partition is a sparse (rows, variables) count/sum matrix, or dense
per-row statistics (sum, count, min, max) for mean/min/max; partials of one by partition combine
by addition (or min/max) in a tree of fan-in FAN_IN, so no task ever holds more than the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spatialflow.plan.reduce import tree_reduce

log = logging.getLogger(__name__)


DENSE_CELLS = 1 << 22  # a partial block this small, and hit often enough, counts densely
NUMERIC_AGGS = ("count", "sum", "mean", "min", "max")


DROPPED = "spatialflow_dropped_nan"


@dataclass
class AggregateGraph:
    """The lowered aggregation: one delayed AnnData plus facts for explain()."""

    result: Any  # dask Delayed -> AnnData
    strategy: str
    values_partitions: tuple[int, int]  # (read, total)
    by_partitions: tuple[int, int]
    joins: int  # partition pairs joined

    @property
    def n_tasks(self) -> int:
        return len(self.result.__dask_graph__())


@dataclass(frozen=True)
class Spec:
    """What is aggregated: a categorical (one variable per category) or numeric column."""

    kind: str  # "categorical" | "numeric" | "ones"
    agg: str
    var_names: list[str]
    value_key: str | None
    fractions: bool = False

    @property
    def n_vars(self) -> int:
        return len(self.var_names)


def empty_partial(spec: Spec, n: int) -> Any:
    if spec.kind == "numeric" and spec.agg in ("min", "max", "mean"):
        return {
            "sum": np.zeros(n),
            "count": np.zeros(n, np.int64),
            "min": np.full(n, np.inf),
            "max": np.full(n, -np.inf),
        }
    dtype = np.int64 if (spec.agg == "count" and not spec.fractions) else np.float64
    return sp.csr_matrix((n, spec.n_vars), dtype=dtype)


def accumulate(
    spec: Spec, n: int, rows: np.ndarray, cols: np.ndarray | None, vals: np.ndarray | None
) -> Any:
    """A partial for one by partition from (row, variable, value) triples."""
    if spec.kind == "numeric" and spec.agg in ("min", "max", "mean"):
        out = empty_partial(spec, n)
        v = np.asarray(vals, dtype=np.float64)
        np.add.at(out["sum"], rows, v)
        np.add.at(out["count"], rows, 1)
        np.minimum.at(out["min"], rows, v)
        np.maximum.at(out["max"], rows, v)
        return out
    cols = np.zeros(len(rows), np.int64) if cols is None else cols
    counting = spec.agg == "count" and not spec.fractions
    if n * spec.n_vars <= min(DENSE_CELLS, 4 * len(rows)):  # dense enough for a histogram
        flat = rows.astype(np.int64) * spec.n_vars + cols
        weights = None if counting or vals is None else np.asarray(vals, dtype=np.float64)
        dense = np.bincount(flat, weights=weights, minlength=n * spec.n_vars)
        if counting:
            dense = dense.astype(np.int64, copy=False)
        return sp.csr_matrix(dense.reshape(n, spec.n_vars))
    if counting:
        data = np.ones(len(rows), np.int64)
    else:
        data = np.ones(len(rows)) if vals is None else np.asarray(vals, dtype=np.float64)
    m = sp.coo_matrix((data, (rows, cols)), shape=(n, spec.n_vars)).tocsr()
    m.sum_duplicates()
    return m


def combine(*parts: Any) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {
            "sum": sum(p["sum"] for p in parts),
            "count": sum(p["count"] for p in parts),
            "min": np.minimum.reduce([p["min"] for p in parts]),
            "max": np.maximum.reduce([p["max"] for p in parts]),
        }
    out = first
    for p in parts[1:]:
        out = out + p
    return out


def tree(items: list[Any], combine: Any = combine) -> Any:
    """Reduce delayed partial results (by default with :func:`combine`) in a tree."""
    return tree_reduce(items, combine)


def finish(spec: Spec, partial: Any) -> sp.csr_matrix:
    """The final (n, n_vars) CSR block of one by partition, with no stored zeros."""
    if isinstance(partial, dict):
        count = partial["count"]
        if spec.agg == "mean":
            v = np.divide(partial["sum"], count, out=np.zeros_like(partial["sum"]), where=count > 0)
        elif spec.agg == "min":
            v = np.where(count > 0, partial["min"], 0.0)
        else:
            v = np.where(count > 0, partial["max"], 0.0)
        m = sp.csr_matrix(v[:, None])
    else:
        m = partial.tocsr()
    m.eliminate_zeros()
    return m


def pick(partial: dict[int, Any], k: int, empty: Any, *args: Any) -> Any:
    """The part of a task's result that belongs to by partition ``k`` (else ``empty(*args)``)."""
    return partial[k] if k in partial else empty(*args)


def point_values(df: pd.DataFrame, spec: Spec) -> tuple[np.ndarray | None, np.ndarray | None]:
    if spec.kind == "categorical":
        codes = df[spec.value_key].cat.codes.to_numpy().astype(np.int64)
        return codes, None
    if spec.kind == "numeric":
        return None, df[spec.value_key].to_numpy(dtype=np.float64)
    return None, None


def assemble(
    spec: Spec,
    by_name: str,
    index_dtype: Any,
    metas: list[tuple[np.ndarray, int]],
    blocks: list[Any],
    n_nan: list[int],
    order: pd.Index | None = None,
) -> ad.AnnData:
    mats = [finish(spec, b) for b in blocks]
    n_rows = sum(n for _, n in metas)
    x = sp.vstack(mats, format="csr") if mats else sp.csr_matrix((n_rows, spec.n_vars))
    index = np.concatenate([i for i, _ in metas]) if metas else np.empty(0, dtype=index_dtype)
    x, index = in_order(x, index, order)
    return with_dropped(aggregate_table(x, index, index_dtype, spec.var_names, by_name), n_nan)


def in_order(x: Any, index: np.ndarray, order: pd.Index | None) -> tuple[Any, np.ndarray]:
    """Rows of ``x`` (labelled ``index``) put in the ``by`` element's own row order.

    The engine works in partition order, which for an element built from memory is its
    spatially sorted order; ``order`` is the element's index as the user gave it (None when
    partition order is the element's order, as for a stored element)."""
    if order is None or len(index) < 2 or not order.is_unique:
        return x, index
    pos = order.get_indexer(index)
    if (pos < 0).any():
        return x, index
    perm = np.argsort(pos, kind="stable")
    return x[perm], index[perm]


def with_dropped(adata: ad.AnnData, n_nan: list[int]) -> ad.AnnData:
    """Record how many values were dropped for NaN coordinates (reported by compute())."""
    adata.uns[DROPPED] = int(sum(n_nan))
    return adata


def aggregate_table(
    x: sp.csr_matrix, index: np.ndarray, index_dtype: Any, var_names: list[str], by_name: str
) -> ad.AnnData:
    x = sp.csr_matrix(x)
    x.eliminate_zeros()
    x.sort_indices()
    obs = pd.DataFrame(index=pd.Index([str(v) for v in index], dtype="str"))
    if pd.api.types.is_string_dtype(index_dtype) or pd.api.types.is_object_dtype(index_dtype):
        index_dtype = "str"  # pandas' own string dtype (dask may hand us its "string" variant)
    obs["instance_id"] = pd.Series(index, index=obs.index).astype(index_dtype)
    obs["region"] = pd.Categorical.from_codes(np.zeros(len(index), np.int8), [by_name])
    var = pd.DataFrame(index=pd.Index([str(v) for v in var_names], dtype="str"))
    adata = ad.AnnData(x, obs=obs, var=var)
    adata.uns["spatialdata_attrs"] = {
        "region": by_name,
        "region_key": "region",
        "instance_key": "instance_id",
    }
    return adata
