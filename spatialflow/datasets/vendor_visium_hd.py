"""Synthetic 10x Visium HD Space Ranger ``outs`` folders (for :func:`write_vendor_sample`).

The tissue of ``xenium_like`` captured on a Visium HD slide: transcripts are counted in square
bins of 2, 8 and 16 um. Files (``<id>`` = ``synthetic_visium_hd``): ``<id>_feature_slice.h5``
(``metadata_json`` attribute with the HD layout), ``<id>_tissue_image.tif`` (full-resolution
RGB H&E-like image), ``spatial/`` (scale factors, ``tissue_hires_image.png``,
``tissue_lowres_image.png``) and per bin size ``binned_outputs/square_XXXum/`` with
``filtered_feature_bc_matrix.h5`` (bins under tissue), ``raw_feature_bc_matrix.h5`` (all bins)
and ``spatial/{scalefactors_json.json, tissue_positions.parquet}``.

Decisions:
- Full-resolution pixels are ``microns_per_pixel`` um wide, with the slide origin at pixel 0;
  bin (row r, col c) of size b covers [c b, (c + 1) b) x [r b, (r + 1) b) um, its position is
  its centre in full-resolution pixels, and ``spot_diameter_fullres = b / microns_per_pixel``.
- A bin is under tissue when at least one transcript falls in it. Barcodes are
  ``s_{b:03d}um_{row:05d}_{col:05d}-1``, listed row-major in every file.
- ``segmented_outputs`` (Space Ranger 4): ``cell_segmentations.geojson`` (the cell polygons in
  full-resolution pixels, ``properties.cell_id`` 1..n), ``filtered_feature_cell_matrix.h5``
  (barcodes ``cellid_{id:09d}-1``) and ``spatial/scalefactors_json.json``.
- The hires and lowres images are the full image averaged over 2 x 2 and 8 x 8 blocks
  (scale factors 0.5 and 0.125).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import tifffile

from spatialflow.datasets.xenium import XeniumLike
from spatialflow.kernels.rasterize import rasterize_disks

__all__ = ["BIN_SIZES", "write_visium_hd"]

BIN_SIZES = (2, 8, 16)
_HIRES, _LOWRES = 2, 8  # block sizes of the hires / lowres images


def write_visium_hd(layout: XeniumLike, path: Path) -> Path:
    from spatialflow.datasets.vendor import _cells, _counts, _write_10x_h5

    path.mkdir(parents=True, exist_ok=True)
    sid = "synthetic_visium_hd"
    mpp = layout.pixel_size
    cells, cell_geoms, _ = _cells(layout)
    _, tiles = _counts(layout, len(cells), layout.n_genes + 3)
    tx = pd.concat(tiles, ignore_index=True)
    genes = layout.genes
    keep = tx["code"].to_numpy() < len(genes)
    x, y, code = tx["x"].to_numpy()[keep], tx["y"].to_numpy()[keep], tx["code"].to_numpy()[keep]

    layout_json = {"file_format": "1.0", "transform": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}
    eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    keys = (
        "cytassist_colrow_to_spot_colrow",
        "spot_colrow_to_cytassist_colrow",
        "microscope_colrow_to_spot_colrow",
        "spot_colrow_to_microscope_colrow",
    )
    metadata = {
        "hd_layout_json": json.dumps(layout_json),
        "transform_matrices": {k: eye for k in keys},
    }
    with h5py.File(path / f"{sid}_feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)

    base = {
        "tissue_hires_scalef": 1 / _HIRES,
        "tissue_lowres_scalef": 1 / _LOWRES,
        "fiducial_diameter_fullres": 10.0 / mpp,
        "regist_target_img_scalef": 1 / _HIRES,
    }
    ids = [f"ENSG{k:011d}" for k in range(len(genes))]
    for b in BIN_SIZES:
        d = path / "binned_outputs" / f"square_{b:03d}um"
        (d / "spatial").mkdir(parents=True, exist_ok=True)
        nrow, ncol = math.ceil(layout.height / b), math.ceil(layout.width / b)
        row = np.minimum((y // b).astype(np.int64), nrow - 1)
        col = np.minimum((x // b).astype(np.int64), ncol - 1)
        counts = np.zeros((nrow * ncol, len(genes)), np.int64)
        np.add.at(counts, (row * ncol + col, code), 1)
        rr, cc = np.divmod(np.arange(nrow * ncol), ncol)
        barcodes = [f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rr, cc, strict=True)]
        in_tissue = counts.sum(axis=1) > 0
        pd.DataFrame(
            {
                "barcode": barcodes,
                "in_tissue": in_tissue.astype(np.int32),
                "array_row": rr.astype(np.int32),
                "array_col": cc.astype(np.int32),
                "pxl_row_in_fullres": (rr + 0.5) * b / mpp,
                "pxl_col_in_fullres": (cc + 0.5) * b / mpp,
            }
        ).to_parquet(d / "spatial" / "tissue_positions.parquet", index=False)
        scal = {
            **base,
            "spot_diameter_fullres": b / mpp,
            "bin_size_um": float(b),
            "microns_per_pixel": mpp,
        }
        (d / "spatial" / "scalefactors_json.json").write_text(json.dumps(scal, indent=2))
        types = ["Gene Expression"] * len(genes)
        _write_10x_h5(d / "raw_feature_bc_matrix.h5", counts, barcodes, genes, ids, types)
        sel = np.flatnonzero(in_tissue)
        _write_10x_h5(
            d / "filtered_feature_bc_matrix.h5",
            counts[sel],
            [barcodes[k] for k in sel],
            genes,
            ids,
            types,
        )

    # images: full resolution H&E-like RGB, hires and lowres by block averaging
    shape = (math.ceil(layout.height / mpp), math.ceil(layout.width / mpp))
    ones = np.ones(len(cells), np.int64)
    cx, cy = cells["x"].to_numpy(), cells["y"].to_numpy()
    cell = rasterize_disks(shape, 0.0, 0.0, mpp, cx, cy, cells["r"].to_numpy(), ones) > 0
    nuc = rasterize_disks(shape, 0.0, 0.0, mpp, cx, cy, cells["rn"].to_numpy(), ones) > 0
    rng = np.random.default_rng([layout.seed, 707])
    rgb = np.empty((*shape, 3), np.float64)
    rgb[:] = (236, 226, 232)
    rgb[cell] = (222, 150, 190)
    rgb[nuc] = (92, 60, 150)
    rgb += rng.normal(0, 6, rgb.shape)
    full = np.clip(rgb, 0, 255).astype(np.uint8)
    tifffile.imwrite(path / f"{sid}_tissue_image.tif", full, photometric="rgb")
    (path / "spatial").mkdir(exist_ok=True)
    (path / "spatial" / "scalefactors_json.json").write_text(
        json.dumps(
            {
                **base,
                "spot_diameter_fullres": 2 / mpp,
                "bin_size_um": 2.0,
                "microns_per_pixel": mpp,
            },
            indent=2,
        )
    )
    _write_segmentation(path, layout, cells, cell_geoms, tx, base, ids)
    from PIL import Image as PILImage

    for name, k in (("tissue_hires_image.png", _HIRES), ("tissue_lowres_image.png", _LOWRES)):
        h, w = shape[0] // k, shape[1] // k
        small = full[: h * k, : w * k].reshape(h, k, w, k, 3).mean(axis=(1, 3))
        PILImage.fromarray(small.round().astype(np.uint8), mode="RGB").save(path / "spatial" / name)
    return path


def _write_segmentation(
    path: Path,
    layout: XeniumLike,
    cells: pd.DataFrame,
    geoms: np.ndarray,
    tx: pd.DataFrame,
    base: dict,
    ids: list[str],
) -> None:
    """``segmented_outputs``: cell polygons (GeoJSON, full-resolution pixels) and their counts."""
    import shapely

    from spatialflow.datasets.vendor import _write_10x_h5

    mpp = layout.pixel_size
    seg = path / "segmented_outputs"
    (seg / "spatial").mkdir(parents=True, exist_ok=True)
    (seg / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({**base, "spot_diameter_fullres": 2 / mpp, "microns_per_pixel": mpp})
    )
    features = []
    for k, g in enumerate(geoms):
        ring = (shapely.get_coordinates(g.exterior) / mpp).round(2).tolist()
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"cell_id": k + 1},
            }
        )
    (seg / "cell_segmentations.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    genes = layout.genes
    owner, code = tx["cell_id"].to_numpy(), tx["code"].to_numpy()
    keep = (owner >= 0) & (code < len(genes))
    counts = np.zeros((len(cells), len(genes)), np.int64)
    np.add.at(counts, (owner[keep], code[keep]), 1)
    barcodes = [f"cellid_{k + 1:09d}-1" for k in range(len(cells))]
    types = ["Gene Expression"] * len(genes)
    _write_10x_h5(seg / "filtered_feature_cell_matrix.h5", counts, barcodes, genes, ids, types)
