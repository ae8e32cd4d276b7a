"""Synthetic NanoString CosMx flat-file exports (for :func:`write_vendor_sample`).

The tissue of ``xenium_like`` imaged as a 2 x 2 grid of fields of view (FOVs) at CosMx's pixel
size. Files, as the AtoMx flat-file export names them (``<id>`` = ``synthetic_cosmx``):
``<id>_exprMat_file.csv`` (fov, cell_ID, genes and negative probes; cell_ID 0 = transcripts
outside cells), ``<id>_metadata_file.csv`` (fov, cell_ID, area, local and global centroids in
pixels), ``<id>_tx_file.csv`` (one row per transcript, FOV by FOV), ``<id>_fov_positions_file.csv``
(FOV origins in global pixels and millimetres), ``CellComposite/CellComposite_F00k.tif`` (RGB
uint8) and ``CellLabels/CellLabels_F00k.tif`` (cell_ID per pixel).

Decisions:
- Local pixels have their origin at the FOV's corner; global pixels = local + the FOV's origin
  + a slide offset. Images and masks are stored upside down (the instrument's convention:
  readers flip them vertically so that they line up with local pixel coordinates).
- A FOV with fewer than three cells is not imaged (its cells and transcripts are not written):
  the local -> global affine is fitted from cell centroids and needs three.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from spatialflow.datasets.xenium import XeniumLike
from spatialflow.kernels.rasterize import rasterize_disks

__all__ = ["COSMX_PIXEL_SIZE", "write_cosmx"]

#: micrometres per pixel of the CosMx camera
COSMX_PIXEL_SIZE = 0.120280945
_ORIGIN = (4000.0, 9000.0)  # the imaged area's corner on the slide, global pixels
_COMPARTMENTS = np.array(["Nuclear", "Membrane", "Cytoplasm", "None"], dtype=object)


def write_cosmx(layout: XeniumLike, path: Path) -> Path:
    from spatialflow.datasets.vendor import _cells, _counts

    path.mkdir(parents=True, exist_ok=True)
    ps = layout.pixel_size
    cells, _, _ = _cells(layout)
    features = layout.genes + [f"NegPrb{k}" for k in range(1, 4)]
    fov_px = math.ceil(max(layout.width, layout.height) / ps / 2) + 1
    x_px, y_px = cells["x"].to_numpy() / ps, cells["y"].to_numpy() / ps
    grid = np.minimum(np.floor(x_px / fov_px), 1) + 2 * np.minimum(np.floor(y_px / fov_px), 1)
    cell_fov = grid.astype(np.int64) + 1
    kept = [f for f in range(1, 5) if (cell_fov == f).sum() >= 3]
    cell_id = np.zeros(len(cells), np.int64)  # per-FOV ids 1.., 0 = FOV not imaged
    for f in kept:
        sel = np.flatnonzero(cell_fov == f)
        cell_id[sel] = np.arange(1, len(sel) + 1)
    origin = {f: ((f - 1) % 2 * fov_px, (f - 1) // 2 * fov_px) for f in range(1, 5)}

    _, tiles = _counts(layout, len(cells), layout.n_genes + 3)
    tx = pd.concat(tiles, ignore_index=True)
    tx_px, ty_px = tx["x"].to_numpy() / ps, tx["y"].to_numpy() / ps
    tx_fov = (
        np.minimum(np.floor(tx_px / fov_px), 1) + 2 * np.minimum(np.floor(ty_px / fov_px), 1) + 1
    ).astype(np.int64)
    codes = tx["code"].to_numpy()
    codes = np.where(codes >= layout.n_genes, layout.n_genes + codes % 3, codes)
    owner = tx["cell_id"].to_numpy()
    same = (owner >= 0) & (cell_fov[np.maximum(owner, 0)] == tx_fov)
    tx_cell = np.where(same, cell_id[np.maximum(owner, 0)], 0)
    rng = np.random.default_rng([layout.seed, 505])

    tx_frames, expr, meta = [], [], []
    for f in kept:
        ox, oy = origin[f]
        sel = np.flatnonzero(tx_fov == f)
        lx, ly = tx_px[sel] - ox, ty_px[sel] - oy
        cid = tx_cell[sel]
        tx_frames.append(
            pd.DataFrame(
                {
                    "fov": f,
                    "cell_ID": cid,
                    "cell": [f"c_1_{f}_{c}" if c else "" for c in cid],
                    "x_local_px": lx.round(2),
                    "y_local_px": ly.round(2),
                    "x_global_px": (lx + ox + _ORIGIN[0]).round(2),
                    "y_global_px": (ly + oy + _ORIGIN[1]).round(2),
                    "z": np.floor(tx["z"].to_numpy()[sel] / 0.8).astype(np.int64),
                    "target": np.asarray(features, dtype=object)[codes[sel]],
                    "CellComp": _COMPARTMENTS[rng.integers(0, 4, len(sel))],
                }
            )
        )
        csel = np.flatnonzero(cell_fov == f)
        per_cell = np.zeros((len(csel) + 1, len(features)), np.int64)
        np.add.at(per_cell, (cid, codes[sel]), 1)
        e = pd.DataFrame(per_cell, columns=features)
        e.insert(0, "cell_ID", np.arange(len(csel) + 1))
        e.insert(0, "fov", f)
        expr.append(e)
        cx, cy = x_px[csel] - ox, y_px[csel] - oy
        r = cells["r"].to_numpy()[csel] / ps
        meta.append(
            pd.DataFrame(
                {
                    "fov": f,
                    "cell_ID": cell_id[csel],
                    "Area": np.round(np.pi * r**2).astype(np.int64),
                    "AspectRatio": 1.0,
                    "CenterX_local_px": cx.round(3),
                    "CenterY_local_px": cy.round(3),
                    "CenterX_global_px": (cx + ox + _ORIGIN[0]).round(3),
                    "CenterY_global_px": (cy + oy + _ORIGIN[1]).round(3),
                    "Width": np.round(2 * r).astype(np.int64),
                    "Height": np.round(2 * r).astype(np.int64),
                }
            )
        )
        _write_fov_images(path, f, layout, cells.iloc[csel], cell_id[csel], fov_px, (ox, oy))

    sid = "synthetic_cosmx"
    pd.concat(tx_frames, ignore_index=True).to_csv(path / f"{sid}_tx_file.csv", index=False)
    pd.concat(expr, ignore_index=True).to_csv(path / f"{sid}_exprMat_file.csv", index=False)
    pd.concat(meta, ignore_index=True).to_csv(path / f"{sid}_metadata_file.csv", index=False)
    gx = np.array([origin[f][0] + _ORIGIN[0] for f in kept])
    gy = np.array([origin[f][1] + _ORIGIN[1] for f in kept])
    pd.DataFrame(
        {
            "fov": kept,
            "x_global_px": gx,
            "y_global_px": gy,
            "x_global_mm": gx * ps / 1000,
            "y_global_mm": gy * ps / 1000,
        }
    ).to_csv(path / f"{sid}_fov_positions_file.csv", index=False)
    return path


def _write_fov_images(
    path: Path,
    fov: int,
    layout: XeniumLike,
    cells: pd.DataFrame,
    ids: np.ndarray,
    fov_px: int,
    origin: tuple[float, float],
) -> None:
    ps = layout.pixel_size
    shape = (fov_px, fov_px)
    x0, y0 = origin[0] * ps, origin[1] * ps
    x, y = cells["x"].to_numpy(), cells["y"].to_numpy()
    mask = rasterize_disks(shape, x0, y0, ps, x, y, cells["r"].to_numpy(), ids, dtype=np.uint16)
    nuc = rasterize_disks(shape, x0, y0, ps, x, y, cells["rn"].to_numpy(), ids, dtype=np.uint16)
    rng = np.random.default_rng([layout.seed, 606, fov])
    noise = rng.integers(0, 30, (*shape, 3))
    rgb = noise + np.stack([(mask > 0) * 120, (mask > 0) * 60, (nuc > 0) * 200], axis=-1)
    for d in ("CellComposite", "CellLabels"):
        (path / d).mkdir(exist_ok=True)
    tifffile.imwrite(
        path / "CellComposite" / f"CellComposite_F{fov:03d}.tif",
        np.flipud(np.clip(rgb, 0, 255).astype(np.uint8)),
        photometric="rgb",
    )
    tifffile.imwrite(
        path / "CellLabels" / f"CellLabels_F{fov:03d}.tif",
        np.flipud(mask),
        photometric="minisblack",
    )
