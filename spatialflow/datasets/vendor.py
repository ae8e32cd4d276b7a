"""Synthetic instrument output folders (Xenium v1 / v2+, MERSCOPE, CosMx, Visium HD).

No vendor data is reachable from tests, so :func:`write_vendor_sample` writes a small, complete,
self-consistent folder in each vendor's layout from the same synthetic tissue as
:func:`~spatialflow.datasets.xenium.xenium_like` (cells, nuclei, transcripts of the same
:class:`~spatialflow.datasets.xenium.XeniumLike` layout). Every file that the readers touch,
spatialflow's and spatialdata-io 0.7.1's, is written with the documented columns, units and
dtypes; the count matrices are the transcripts counted per cell, the label masks and images are
the cells and nuclei rasterized at the instrument's pixel size.

Decisions:
- Everything is generated in memory: these are test and benchmark fixtures. The one large file
  (Xenium ``transcripts.parquet`` for benchmarks) is written tile by tile, one row group per tile,
  so a folder with 10^8 transcripts is written in memory bounded by one tile.
- Xenium ``version``: ``"1"`` writes the XOA 1.9 layout (``seg_mask_value`` in
  ``cells.zarr.zip``, ``morphology_focus.ome.tif`` + ``morphology_mip.ome.tif``, boundaries
  without ``label_id``, ``feature_name`` as bytes); ``"2"`` (default) the XOA 2.x layout
  (``polygon_sets``, ``morphology_focus/morphology_focus_0000.ome.tif``, ``label_id``,
  ``codeword_index``, ``nucleus_count``).
- CosMx and Visium HD folders are written by ``vendor_cosmx.py`` and ``vendor_visium_hd.py``
  (same tissue, same helpers; see their docstrings for the layouts).
- Cell ids are Xenium's string ids (prefix uint32 + dataset suffix, spelled with letters a..p).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import tifffile

from spatialflow.datasets.xenium import XeniumLike
from spatialflow.errors import ValidationError
from spatialflow.io.readers._vendor import cell_id_strings
from spatialflow.kernels.rasterize import rasterize_disks

__all__ = ["VENDOR_KINDS", "write_vendor_sample"]

VENDOR_KINDS = ("xenium", "merscope", "cosmx", "visium_hd")
XENIUM_PIXEL_SIZE = 0.2125
MERSCOPE_PIXEL_SIZE = 0.108
_PIXEL_SIZES = {
    "xenium": XENIUM_PIXEL_SIZE,
    "merscope": MERSCOPE_PIXEL_SIZE,
    "cosmx": 0.120280945,
    "visium_hd": 0.2737,
}
_CONTROLS = ("NegControlProbe_00001", "NegControlProbe_00002", "NegControlCodeword_0500")


def write_vendor_sample(
    kind: str,
    path: str | Path,
    *,
    n_transcripts: int,
    n_cells: int,
    seed: int = 0,
    version: str | None = None,
    n_genes: int = 20,
) -> Path:
    """Write a synthetic output folder of instrument ``kind`` at ``path``; returns the folder.

    ``kind`` is one of ``xenium``, ``merscope``, ``cosmx``, ``visium_hd``. ``version`` selects a layout where a vendor has
    several (Xenium: ``"1"`` or ``"2"``, the default). For MERSCOPE the data goes into
    ``path/<slide>/<region>`` as on the instrument, and that inner folder is returned."""
    if kind not in VENDOR_KINDS:
        raise ValidationError(
            f"write_vendor_sample: unknown kind {kind!r}; choose one of {', '.join(VENDOR_KINDS)}"
        )
    layout = XeniumLike(
        int(n_transcripts),
        int(n_cells),
        n_genes=int(n_genes),
        seed=int(seed),
        pixel_size=_PIXEL_SIZES[kind],
        transcripts_per_partition=max(1, min(int(n_transcripts), 2_000_000)),
    )
    path = Path(path)
    if kind == "xenium":
        v = "2" if version is None else str(version)
        if v not in ("1", "2"):
            raise ValidationError(f"write_vendor_sample: Xenium version {v!r}: use '1' or '2'")
        return _write_xenium(layout, path, v)
    if version is not None:
        raise ValidationError(f"write_vendor_sample: {kind} has one layout; drop version=")
    if kind == "cosmx":
        from spatialflow.datasets.vendor_cosmx import write_cosmx

        return write_cosmx(layout, path)
    if kind == "visium_hd":
        from spatialflow.datasets.vendor_visium_hd import write_visium_hd

        return write_visium_hd(layout, path)
    return _write_merscope(layout, path)


# --- the shared tissue --------------------------------------------------------------------------
def _cells(layout: XeniumLike) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per-cell centres and radii (ordered by cell id) and their cell / nucleus polygons."""
    frames, cell_geoms, nuc_geoms = [], [], []
    for t in range(len(layout.tiles)):
        c = layout.cells(layout.tiles[t])
        frames.append(
            pd.DataFrame(
                {"cell": c.cell_id, "x": c.x, "y": c.y, "r": c.r_in, "rn": c.r_nucleus},
            )
        )
        cell_geoms.append(layout.cell_polygons(t).geometry.sort_index())
        nuc_geoms.append(layout.nuclei_polygons(t).geometry.sort_index())
    cells = pd.concat(frames).sort_values("cell").reset_index(drop=True)
    cg = pd.concat(cell_geoms).sort_index().to_numpy()
    ng = pd.concat(nuc_geoms).sort_index().to_numpy()
    return cells, cg, ng


def _rasters(
    layout: XeniumLike, cells: pd.DataFrame, ps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell and nucleus label masks (id = row + 1) and a DAPI-like uint16 image."""
    shape = (math.ceil(layout.height / ps), math.ceil(layout.width / ps))
    ids = np.arange(1, len(cells) + 1, dtype=np.int64)
    x, y = cells["x"].to_numpy(), cells["y"].to_numpy()
    cell = rasterize_disks(shape, 0.0, 0.0, ps, x, y, cells["r"].to_numpy(), ids)
    nuc = rasterize_disks(shape, 0.0, 0.0, ps, x, y, cells["rn"].to_numpy(), ids)
    rng = np.random.default_rng([layout.seed, 303])
    dapi = 300 + rng.normal(0, 40, shape) + np.where(nuc > 0, 2600.0, 0.0)
    return cell.astype(np.uint32), nuc.astype(np.uint32), np.clip(dapi, 0, 65535).astype(np.uint16)


def _transcripts(layout: XeniumLike, t: int) -> pd.DataFrame:
    """Tile ``t``'s transcripts with gene names; about 1% are control probes."""
    tx = layout.transcripts(t)
    rng = np.random.default_rng([layout.seed, 404, t])
    names = np.asarray(layout.genes + list(_CONTROLS), dtype=object)
    codes = tx["gene"].cat.codes.to_numpy().astype(np.int64)
    ctrl = rng.random(len(tx)) < 0.01
    codes[ctrl] = layout.n_genes + rng.integers(0, len(_CONTROLS), int(ctrl.sum()))
    tx = tx.assign(feature=names[codes], code=codes)
    return tx


def _counts(
    layout: XeniumLike, n_cells: int, n_features: int, sink: Any = None
) -> tuple[np.ndarray, list[pd.DataFrame]]:
    """(n_cells, n_features) int32 counts of transcripts per cell, and every tile's transcripts
    (or, with ``sink``, each tile handed to ``sink(t, frame)`` and not kept: bounded memory)."""
    counts = np.zeros((n_cells, n_features), dtype=np.int64)
    tiles = []
    for t in range(len(layout.tiles)):
        tx = _transcripts(layout, t)
        inside = tx["cell_id"].to_numpy() >= 0
        np.add.at(counts, (tx["cell_id"].to_numpy()[inside], tx["code"].to_numpy()[inside]), 1)
        if sink is None:
            tiles.append(tx)
        else:
            sink(t, tx)
    return counts.astype(np.int32), tiles


def _write_10x_h5(
    path: Path,
    counts: np.ndarray,
    barcodes: list[str],
    names: list[str],
    ids: list[str],
    feature_types: list[str],
) -> None:
    """A Cell Ranger v3 ``matrix`` group: CSC of features x barcodes (CSR of barcodes x
    features), int32 data, features with id / name / feature_type / genome."""
    import scipy.sparse as sp

    m = sp.csr_matrix(counts)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([counts.shape[1], counts.shape[0]], np.int32))
        feat = g.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feat.create_dataset("feature_type", data=np.array(feature_types, dtype="S"))
        feat.create_dataset("genome", data=np.array(["Unknown"] * len(names), dtype="S"))
        feat.create_dataset("id", data=np.array(ids, dtype="S"))
        feat.create_dataset("name", data=np.array(names, dtype="S"))


def _write_ome_tiff(path: Path, image: np.ndarray, pixel_size: float, channels: list[str]) -> None:
    axes = "YX" if image.ndim == 2 else ("CYX" if image.shape[0] < image.shape[-1] else "YXS")
    metadata = {
        "axes": axes,
        "PhysicalSizeX": pixel_size,
        "PhysicalSizeY": pixel_size,
        "Channel": {"Name": channels},
    }
    tifffile.imwrite(path, image, ome=True, photometric="minisblack", metadata=metadata)


# --- Xenium -------------------------------------------------------------------------------------
def _write_xenium(layout: XeniumLike, path: Path, version: str) -> Path:
    import zarr

    path.mkdir(parents=True, exist_ok=True)
    v2 = version == "2"
    ps = layout.pixel_size
    cells, cell_geoms, nuc_geoms = _cells(layout)
    n = len(cells)
    prefix = (np.arange(n, dtype=np.uint64) * 2654435761 + 12345) % (1 << 32)
    prefix = np.sort(prefix).astype(np.uint32)  # Xenium's ids sort like the rows
    suffix = np.ones(n, dtype=np.uint32)
    cell_ids = cell_id_strings(prefix, suffix)
    features = layout.genes + list(_CONTROLS)
    specs = {
        "major_version": 5 if v2 else 4,
        "run_name": "synthetic_run",
        "region_name": "synthetic_region",
        "panel_name": "synthetic_panel",
        "pixel_size": ps,
        "analysis_sw_version": "xenium-2.0.0.10" if v2 else "xenium-1.9.0.2",
        "num_cells": n,
        "num_transcripts": layout.n_transcripts,
        "transcripts_per_cell": layout.n_transcripts / max(n, 1),
    }
    (path / "experiment.xenium").write_text(json.dumps(specs, indent=2))

    # transcripts.parquet: one row group per tile, as an instrument writes them in blocks
    schema = [
        ("transcript_id", pa.uint64()),
        ("cell_id", pa.string()),
        ("overlaps_nucleus", pa.uint8()),
        ("feature_name", pa.string() if v2 else pa.binary()),
        ("x_location", pa.float32()),
        ("y_location", pa.float32()),
        ("z_location", pa.float32()),
        ("qv", pa.float32()),
        ("fov_name", pa.string()),
        ("nucleus_distance", pa.float32()),
    ]
    if v2:
        schema.append(("codeword_index", pa.int32()))
    writer = pq.ParquetWriter(path / "transcripts.parquet", pa.schema(schema))
    try:

        def sink(t: int, tx: pd.DataFrame) -> None:
            writer.write_table(_xenium_transcripts_table(tx, cells, cell_ids, v2, t, schema))

        counts, _ = _counts(layout, n, len(features), sink)
    finally:
        writer.close()

    # cells.parquet
    area = np.array([g.area for g in cell_geoms])
    nuc_area = np.array([g.area for g in nuc_geoms])
    cols = {
        "cell_id": cell_ids,
        "x_centroid": cells["x"].to_numpy(),
        "y_centroid": cells["y"].to_numpy(),
        "transcript_counts": counts[:, : layout.n_genes].sum(axis=1).astype(np.uint32),
        "control_probe_counts": counts[:, layout.n_genes :].sum(axis=1).astype(np.uint32),
        "control_codeword_counts": np.zeros(n, np.uint32),
        "total_counts": counts.sum(axis=1).astype(np.uint32),
        "cell_area": area,
        "nucleus_area": nuc_area,
    }
    if v2:
        cols["nucleus_count"] = np.ones(n, np.uint32)
        cols["segmentation_method"] = np.array(["Segmented by nucleus expansion"] * n, object)
    pd.DataFrame(cols).to_parquet(path / "cells.parquet", index=False)

    # the count matrix: genes plus control probes (gex_only readers keep the genes)
    ftypes = ["Gene Expression"] * layout.n_genes + [
        "Negative Control Probe" if c.startswith("NegControlProbe") else "Negative Control Codeword"
        for c in _CONTROLS
    ]
    ids = [f"ENSG{k:011d}" for k in range(layout.n_genes)] + list(_CONTROLS)
    _write_10x_h5(path / "cell_feature_matrix.h5", counts, list(cell_ids), features, ids, ftypes)

    # boundaries: vertices of each polygon contiguous, rings closed, one polygon per cell
    for fname, geoms in (
        ("cell_boundaries.parquet", cell_geoms),
        ("nucleus_boundaries.parquet", nuc_geoms),
    ):
        rings = [np.asarray(shapely.get_coordinates(g.exterior)) for g in geoms]
        sizes = np.array([len(r) for r in rings])
        xy = np.concatenate(rings).astype(np.float32)
        table = {
            "cell_id": np.repeat(cell_ids, sizes),
            "vertex_x": xy[:, 0],
            "vertex_y": xy[:, 1],
        }
        if v2:
            table["label_id"] = np.repeat(np.arange(1, n + 1, dtype=np.int32), sizes)
        pd.DataFrame(table).to_parquet(path / fname, index=False, row_group_size=4096)

    # cells.zarr.zip: ids, summary, masks and the polygon <-> cell mapping
    cell_mask, nuc_mask, dapi = _rasters(layout, cells, ps)
    store = zarr.storage.ZipStore(path / "cells.zarr.zip", mode="w")
    root = zarr.open_group(store, mode="w", zarr_format=2)
    root.create_array("cell_id", data=np.stack([prefix, suffix], axis=1))
    summary_cols = [
        "cell_centroid_x",
        "cell_centroid_y",
        "cell_area",
        "nucleus_centroid_x",
        "nucleus_centroid_y",
        "nucleus_area",
        "z_level",
    ]
    summary = [cells["x"], cells["y"], area, cells["x"], cells["y"], nuc_area, np.zeros(n)]
    if v2:
        summary_cols.append("nucleus_count")
        summary.append(np.ones(n))
    root.create_array(
        "cell_summary",
        data=np.stack(summary, axis=1).astype(np.float64),
        attributes={"column_names": summary_cols},
    )
    masks = root.create_group("masks")
    masks.create_array("0", data=nuc_mask, chunks=(1024, 1024))
    masks.create_array("1", data=cell_mask, chunks=(1024, 1024))
    if v2:
        for k in ("0", "1"):
            root.create_array(f"polygon_sets/{k}/cell_index", data=np.arange(n, dtype=np.uint32))
    else:
        root.create_array("seg_mask_value", data=np.arange(1, n + 1, dtype=np.uint32))
    store.close()

    # morphology images (uint16 OME-TIFF, pixel size in the OME metadata)
    if v2:
        (path / "morphology_focus").mkdir(exist_ok=True)
        _write_ome_tiff(
            path / "morphology_focus" / "morphology_focus_0000.ome.tif", dapi, ps, ["DAPI"]
        )
    else:
        _write_ome_tiff(path / "morphology_focus.ome.tif", dapi, ps, ["DAPI"])
        mip = np.maximum(dapi, np.flipud(dapi) // 4).astype(np.uint16)
        _write_ome_tiff(path / "morphology_mip.ome.tif", mip, ps, ["DAPI"])
    return path


def _xenium_transcripts_table(
    tx: pd.DataFrame,
    cells: pd.DataFrame,
    cell_ids: np.ndarray,
    v2: bool,
    t: int,
    schema: list[tuple[str, pa.DataType]],
) -> pa.Table:
    cid = tx["cell_id"].to_numpy()
    inside = cid >= 0
    names = np.where(inside, cell_ids[np.maximum(cid, 0)], "UNASSIGNED")
    x, y = tx["x"].to_numpy(np.float64), tx["y"].to_numpy(np.float64)
    cx = cells["x"].to_numpy()[np.maximum(cid, 0)]
    cy = cells["y"].to_numpy()[np.maximum(cid, 0)]
    rn = cells["rn"].to_numpy()[np.maximum(cid, 0)]
    dist = np.where(inside, np.hypot(x - cx, y - cy) - rn, 0.0)
    feature = tx["feature"].to_numpy()
    cols = {
        "transcript_id": (tx.index.to_numpy().astype(np.uint64) + np.uint64(281474976710656)),
        "cell_id": names,
        "overlaps_nucleus": (inside & (dist <= 0)).astype(np.uint8),
        "feature_name": feature if v2 else np.array([s.encode() for s in feature], dtype=object),
        "x_location": tx["x"].to_numpy(np.float32),
        "y_location": tx["y"].to_numpy(np.float32),
        "z_location": tx["z"].to_numpy(np.float32),
        "qv": tx["qv"].to_numpy(np.float32),
        "fov_name": np.array([f"A{t + 1}"] * len(tx), dtype=object),
        "nucleus_distance": np.maximum(dist, 0).astype(np.float32),
    }
    if v2:
        cols["codeword_index"] = tx["code"].to_numpy().astype(np.int32)
    return pa.table({k: pa.array(cols[k], type=ty) for k, ty in schema})


# --- MERSCOPE -----------------------------------------------------------------------------------
def _write_merscope(layout: XeniumLike, path: Path) -> Path:
    region = path / "202401011200_synthetic-slide_VMSC00001" / "region_0"
    images = region / "images"
    images.mkdir(parents=True, exist_ok=True)
    ps = layout.pixel_size
    cells, cell_geoms, _ = _cells(layout)
    n = len(cells)
    entity = (np.arange(n, dtype=np.int64) + 1) * 1_000_003 + 1_650_000_000_000_000_000
    genes = layout.genes
    blanks = [f"Blank-{k}" for k in range(1, 4)]
    features = genes + blanks
    counts, tiles = _counts(layout, n, layout.n_genes + len(_CONTROLS))
    counts = counts[:, : len(features)]

    # micron -> mosaic pixel: 1/pixel size and an offset, whitespace-delimited 3x3
    tx0, ty0 = 12.5, -7.25
    m = np.array([[1 / ps, 0.0, tx0], [0.0, 1 / ps, ty0], [0.0, 0.0, 1.0]])
    np.savetxt(images / "micron_to_mosaic_pixel_transform.csv", m, fmt="%.10f", delimiter=" ")
    cell_mask, nuc_mask, dapi = _rasters(layout, cells, ps)
    polyt = np.clip(250 + (cell_mask > 0) * 900 + (nuc_mask > 0) * 300, 0, 65535)
    for stain, img in (("DAPI", dapi), ("PolyT", polyt.astype(np.uint16))):
        tifffile.imwrite(images / f"mosaic_{stain}_z3.tif", img, photometric="minisblack")

    # detected_transcripts.csv: an unnamed row-number column first, micron global coordinates
    frames = []
    for tx in tiles:
        codes = tx["code"].to_numpy()
        keep = codes < len(features)  # control probes of the Xenium panel become blanks
        tx = tx[keep]
        cid = tx["cell_id"].to_numpy()
        frames.append(
            pd.DataFrame(
                {
                    "barcode_id": tx["code"].to_numpy().astype(np.int64),
                    "global_x": tx["x"].to_numpy(np.float64).round(3),
                    "global_y": tx["y"].to_numpy(np.float64).round(3),
                    "global_z": np.floor(tx["z"].to_numpy() / 1.5).astype(np.float64),
                    "x": ((tx["x"].to_numpy() % 200) / ps).round(2),
                    "y": ((tx["y"].to_numpy() % 200) / ps).round(2),
                    "fov": (tx["x"].to_numpy() // 200).astype(np.int64),
                    "gene": np.asarray(features, dtype=object)[tx["code"].to_numpy()],
                    "transcript_id": [f"ENST{c:011d}" for c in tx["code"].to_numpy()],
                    "cell_id": np.where(cid >= 0, entity[np.maximum(cid, 0)], -1),
                }
            )
        )
    det = pd.concat(frames, ignore_index=True)
    det.index = pd.RangeIndex(len(det))
    det.to_csv(region / "detected_transcripts.csv", index=True)

    # cell_boundaries.parquet: GeoParquet, MultiPolygon per (cell, z plane), micron space
    rows = []
    for z in (0, 1):
        for k in range(n):
            rows.append((z, k))
    zs = np.array([r[0] for r in rows])
    ks = np.array([r[1] for r in rows])
    geoms = shapely.multipolygons([[g] for g in cell_geoms[ks]]) if len(ks) else []
    gdf = gpd.GeoDataFrame(
        {
            "ID": np.arange(len(rows), dtype=np.int64),
            "EntityID": entity[ks],
            "ZIndex": zs.astype(np.int64),
            "Type": ["cell"] * len(rows),
            "ZLevel": (zs * 1.5 + 1.5).astype(np.float64),
            "Name": [None] * len(rows),
            "ParentID": [None] * len(rows),
            "ParentType": [None] * len(rows),
            "Geometry": gpd.GeoSeries(geoms),
        },
        geometry="Geometry",
    )
    gdf.to_parquet(region / "cell_boundaries.parquet")

    by_gene = pd.DataFrame(counts.astype(np.int64), columns=features)
    by_gene.insert(0, "cell", entity.astype(str))
    by_gene.to_csv(region / "cell_by_gene.csv", index=False)
    area = np.array([g.area for g in cell_geoms])
    b = shapely.bounds(cell_geoms)
    meta = pd.DataFrame(
        {
            "EntityID": entity,
            "fov": (cells["x"].to_numpy() // 200).astype(np.int64),
            "volume": area * 7 * 1.5,
            "center_x": cells["x"].to_numpy(),
            "center_y": cells["y"].to_numpy(),
            "min_x": b[:, 0],
            "max_x": b[:, 2],
            "min_y": b[:, 1],
            "max_y": b[:, 3],
        }
    )
    meta.to_csv(region / "cell_metadata.csv", index=False)
    return region
