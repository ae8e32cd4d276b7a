"""Affine alignment from landmark pairs, by least squares.

``model="affine"`` fits a general affine map; ``"similarity"`` a rotation, uniform scale and
translation (Umeyama's closed form); ``"rigid"`` a rotation and translation. At least three
landmark pairs are needed and they must not be collinear.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Literal

import numpy as np

from spatialflow.errors import TransformError
from spatialflow.transforms.base import Affine

__all__ = ["fit_landmarks"]

Model = Literal["affine", "similarity", "rigid"]


def fit_landmarks(
    reference: np.ndarray, moving: np.ndarray, model: Model = "affine", axes: Seq[str] = ("x", "y")
) -> Affine:
    """The transform that maps ``moving`` landmarks onto ``reference`` ones."""
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    axes = tuple(axes)
    d = len(axes)
    if ref.ndim != 2 or mov.ndim != 2 or ref.shape != mov.shape or ref.shape[1] != d:
        raise TransformError(
            f"align_landmarks: reference {ref.shape} and moving {mov.shape} landmarks must both be "
            f"(N, {d}) arrays on axes {axes}"
        )
    if ref.shape[0] < 3:
        raise TransformError(
            f"align_landmarks: at least 3 landmark pairs are needed, got {ref.shape[0]}"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(mov))):
        raise TransformError("align_landmarks: landmarks must be finite numbers")
    for name, pts in (("moving", mov), ("reference", ref)):
        centred = pts - pts.mean(axis=0)
        sv = np.linalg.svd(centred, compute_uv=False)
        if sv[min(d, len(sv)) - 1] <= 1e-9 * max(sv[0], 1e-300):
            raise TransformError(
                f"align_landmarks: the {name} landmarks are collinear; "
                "choose points that span the plane"
            )
    if model == "affine":
        a = np.hstack([mov, np.ones((mov.shape[0], 1))])
        sol, *_ = np.linalg.lstsq(a, ref, rcond=None)
        return Affine(sol.T, axes, axes)
    if model not in ("similarity", "rigid"):
        raise TransformError(
            f"align_landmarks: unknown model {model!r}; use 'affine', 'similarity' or 'rigid'"
        )
    mu_m, mu_r = mov.mean(axis=0), ref.mean(axis=0)
    xm, xr = mov - mu_m, ref - mu_r
    cov = xr.T @ xm / len(mov)
    u, s, vt = np.linalg.svd(cov)
    sign = np.eye(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1, -1] = -1.0
    rot = u @ sign @ vt
    scale = 1.0
    if model == "similarity":
        scale = float(np.trace(np.diag(s) @ sign) / (xm**2).sum(axis=1).mean())
    lin = scale * rot
    t = mu_r - lin @ mu_m
    return Affine(np.hstack([lin, t[:, None]]), axes, axes)
