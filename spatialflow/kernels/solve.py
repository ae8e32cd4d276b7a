"""Global placement of tiles from pairwise measurements: a sparse weighted least-squares solve
with iterative removal of the worst edge. Pure numpy/scipy.

Design decisions:

* Each tile ``i`` gets a correction ``G_i(q) = q + E_i (q - c_i) + s_i`` applied after its stage
  transform (world units; ``c_i`` its stage centre). ``transform="translation"``: E = 0;
  ``"rigid"``: E a linearized rotation (2D: one angle; 3D: three), turned into an exact rotation
  afterwards; ``"affine"``: E a free matrix. An edge is a set of corresponding world points
  ("beads": the corners of the pair's overlap box) ``q_a ~ q_b``; each bead gives ``d`` linear
  equations ``G_a(q_a) - G_b(q_b) = 0``, weighted by the pair's quality. The unknowns are
  stacked into one sparse system solved by the normal equations (``scipy.sparse`` + SuperLU),
  which for a grid's pair graph is a sparse Laplacian-like matrix: 1,000+ tiles take
  milliseconds.
* A small ridge term (``prior``) pulls every correction toward 0. It fixes the gauge (the whole
  mosaic may move; the ridge keeps the mean correction near 0, i.e. the registered mosaic stays
  where the stage put it on average) and leaves tiles without a usable edge at their stage
  position by construction, never "thrown far away".
* Outlier edges: after each solve, the edge with the largest residual (RMS bead distance, in
  pixels) is removed while that residual exceeds ``threshold`` and removing it keeps its
  connected component connected (a bridge is kept and flagged); then the system is solved again.
* Unconfirmed links: a bridge of the final graph (the only path between two parts) has no
  residual to betray it -- a tile hanging on one wrong edge would sit exactly where the wrong
  edge puts it. So a bridge whose weight is below ``min_bridge_weight`` is dropped as well; its
  sides keep their own placement (a lone tile: its stage position).
* Guard: a tile whose correction at its centre exceeds ``max_correction`` (world units; callers
  pass the search radius) has all its edges dropped and keeps its stage position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import spsolve

__all__ = ["Edge", "Solution", "n_params", "solve_positions"]


@dataclass(frozen=True)
class Edge:
    a: int
    b: int
    beads_a: np.ndarray  # (k, d) world points in tile a's placement
    beads_b: np.ndarray  # (k, d) the same content's world points in tile b's placement
    weight: float
    pixel_size: float  # world units per pixel (to report residuals in pixels)


@dataclass
class Solution:
    matrices: np.ndarray  # (n, d+1, d+1) world-space corrections G_i (homogeneous)
    used: np.ndarray  # bool per edge: kept in the final solve
    removed_order: list[int]  # edges removed as outliers, in order
    residuals: np.ndarray  # per edge, pixels (after the final solve; NaN for unsolved)
    connected: np.ndarray  # bool per tile: has at least one used edge
    weak_bridges: list[int]  # edges dropped as unconfirmed low-weight bridges
    guarded: list[int]  # tiles reset by the max_correction guard


def n_params(d: int, transform: str) -> int:
    if transform == "translation":
        return d
    if transform == "rigid":
        return d + (1 if d == 2 else 3)
    if transform == "affine":
        return d + d * d
    raise ValueError(f"unknown transform model {transform!r}")


def _basis(d: int, transform: str) -> list[np.ndarray]:
    """The (d, d) generators of E for the non-translation parameters."""
    if transform == "translation":
        return []
    if transform == "affine":
        out = []
        for r in range(d):
            for c in range(d):
                m = np.zeros((d, d))
                m[r, c] = 1.0
                out.append(m)
        return out
    pairs = [(0, 1)] if d == 2 else [(0, 1), (0, 2), (1, 2)]
    out = []
    for r, c in pairs:
        m = np.zeros((d, d))
        m[r, c], m[c, r] = -1.0, 1.0
        out.append(m)
    return out


def _rows(
    edges: list[Edge], centres: np.ndarray, transform: str, d: int
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The weighted design matrix, right-hand side and the edge index of every row."""
    basis = _basis(d, transform)
    p = d + len(basis)
    data, rows, cols, rhs, owner = [], [], [], [], []
    r = 0
    for k, e in enumerate(edges):
        w = np.sqrt(e.weight)
        for qa, qb in zip(e.beads_a, e.beads_b, strict=True):
            for dim in range(d):
                # G_a(qa) - G_b(qb) = 0  ->  s_a - s_b + E_a(qa - ca) - E_b(qb - cb) = qb - qa
                for tile, q, sign in ((e.a, qa, 1.0), (e.b, qb, -1.0)):
                    rows.append(r)
                    cols.append(tile * p + dim)
                    data.append(sign * w)
                    rel = q - centres[tile]
                    for j, g in enumerate(basis):
                        coef = float(g[dim] @ rel)
                        if coef != 0.0:
                            rows.append(r)
                            cols.append(tile * p + d + j)
                            data.append(sign * w * coef)
                rhs.append(w * (qb[dim] - qa[dim]))
                owner.append(k)
                r += 1
    a = sp.csr_matrix((data, (rows, cols)), shape=(r, len(centres) * p))
    return a, np.asarray(rhs), np.asarray(owner, dtype=int)


def _solve(a: sp.csr_matrix, rhs: np.ndarray, prior: float, n_unknowns: int) -> np.ndarray:
    if a.shape[0] == 0:
        return np.zeros(n_unknowns)
    normal = (a.T @ a + prior * sp.identity(n_unknowns)).tocsc()
    return np.asarray(spsolve(normal, a.T @ rhs)).reshape(-1)


def _matrices(x: np.ndarray, centres: np.ndarray, transform: str, d: int) -> np.ndarray:
    basis = _basis(d, transform)
    p = d + len(basis)
    n = len(centres)
    out = np.tile(np.eye(d + 1), (n, 1, 1))
    for i in range(n):
        params = x[i * p : (i + 1) * p]
        e = sum((params[d + j] * g for j, g in enumerate(basis)), np.zeros((d, d)))
        lin = np.eye(d) + e
        if transform == "rigid":
            u, _, vt = np.linalg.svd(lin)  # the nearest rotation to I + E
            lin = u @ vt
        out[i, :d, :d] = lin
        out[i, :d, d] = params[:d] + centres[i] - lin @ centres[i]
    return out


def _edge_residuals(edges: list[Edge], mats: np.ndarray) -> np.ndarray:
    res = np.empty(len(edges))
    for k, e in enumerate(edges):
        ma, mb = mats[e.a], mats[e.b]
        pa = e.beads_a @ ma[:-1, :-1].T + ma[:-1, -1]
        pb = e.beads_b @ mb[:-1, :-1].T + mb[:-1, -1]
        res[k] = np.sqrt(np.mean(np.sum((pa - pb) ** 2, axis=1))) / e.pixel_size
    return res


def _n_components(n: int, edges: list[Edge], active: np.ndarray) -> np.ndarray:
    idx = np.nonzero(active)[0]
    a = np.array([edges[k].a for k in idx], dtype=int)
    b = np.array([edges[k].b for k in idx], dtype=int)
    g = sp.coo_matrix((np.ones(len(idx)), (a, b)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def _bridges(n: int, edges: list[Edge], active: np.ndarray, which: np.ndarray) -> list[int]:
    """The edges among ``which`` whose removal splits their component of the active graph."""
    out = []
    before = _n_components(n, edges, active)
    for k in which:
        trial = active.copy()
        trial[k] = False
        after = _n_components(n, edges, trial)
        e = edges[k]
        if after[e.a] != after[e.b] and before[e.a] == before[e.b]:
            out.append(int(k))
    return out


def solve_positions(
    n_tiles: int,
    centres: np.ndarray,
    edges: list[Edge],
    *,
    transform: str = "translation",
    threshold: float = 1.5,
    prior: float = 1e-6,
    max_removals: int | None = None,
    min_bridge_weight: float = 0.0,
    max_correction: float | None = None,
) -> Solution:
    """Solve the corrections of ``n_tiles`` tiles from ``edges`` (see the module doc)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(n_tiles, -1)
    d = centres.shape[1]
    p = n_params(d, transform)
    active = np.ones(len(edges), dtype=bool)
    protected = np.zeros(len(edges), dtype=bool)
    removed: list[int] = []
    limit = len(edges) if max_removals is None else max_removals
    a_full, rhs_full, owner = _rows(edges, centres, transform, d)
    weights = np.array([e.weight for e in edges])
    # scale the ridge with the data so it stays a gauge fix, not a pull on good edges
    ridge = prior * max(1.0, float(np.mean(weights)) if edges else 1.0)

    def run() -> tuple[np.ndarray, np.ndarray]:
        keep_rows = active[owner] if len(owner) else np.zeros(0, dtype=bool)
        x = _solve(a_full[keep_rows], rhs_full[keep_rows], ridge, n_tiles * p)
        mats = _matrices(x, centres, transform, d)
        return mats, _edge_residuals(edges, mats)

    weak: list[int] = []
    guarded: list[int] = []
    while True:
        mats, res = run()
        if len(removed) < limit:
            cand = np.nonzero(active & ~protected & (res > threshold))[0]
            if cand.size:
                worst = int(cand[np.argmax(res[cand])])
                if _bridges(n_tiles, edges, active, np.array([worst])):
                    protected[worst] = True  # a bridge: removing it would split the graph
                else:
                    active[worst] = False
                    removed.append(worst)
                continue
        # unconfirmed weak links (removing a bridge leaves the other bridges bridges)
        low = np.nonzero(active & (weights < min_bridge_weight))[0]
        drop = _bridges(n_tiles, edges, active, low) if low.size else []
        # the guard: tiles moved further than any pair measurement could move them
        far: list[int] = []
        if max_correction is not None:
            shift = np.einsum("nij,nj->ni", mats[:, :d, :d], centres) + mats[:, :d, d] - centres
            far = [int(i) for i in np.nonzero(np.abs(shift).max(axis=1) > max_correction)[0]]
        if not drop and not far:
            break
        weak.extend(drop)
        active[drop] = False
        for i in far:
            guarded.append(int(i))
            for k in np.nonzero(active)[0]:
                if edges[k].a == i or edges[k].b == i:
                    active[k] = False
    connected = np.zeros(n_tiles, dtype=bool)
    for k in np.nonzero(active)[0]:
        connected[edges[k].a] = connected[edges[k].b] = True
    return Solution(mats, active, removed, res, connected, weak, guarded)
