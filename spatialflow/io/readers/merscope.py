"""Vizgen MERSCOPE region folders as a lazy Dataset.

Element names, transforms and the table are those of spatialdata-io 0.7.1's ``merscope()``:
with ``dataset_id = <slide>_<region>`` (the parent folder's and the folder's names by default),
images ``{dataset_id}_z{z}`` (stains stacked on c), points ``{dataset_id}_transcripts``, shapes
``{dataset_id}_polygons`` and the table ``table``. ``global`` is the mosaic pixel space: points
and shapes carry the micron -> pixel affine of ``images/micron_to_mosaic_pixel_transform.csv``,
images Identity. ``microns`` is added (points/shapes Identity, images the inverse affine).

Decisions:
- ``detected_transcripts.csv`` is read in byte blocks cut at line ends, one task per block (no
  pass over the file in the client); ``gene`` gets its categories from the header of
  ``cell_by_gene.csv`` (the panel, blanks included). Columns: x, y, z, gene, then the file's
  other columns in file order, except its own ``x``/``y`` (FOV pixels), which give way to
  ``global_x``/``global_y`` as spatialdata's PointsModel does. With one block the index is the
  row number; with several, block k's rows are numbered from ``k << 40`` (the rows before a
  block are not counted without reading them).
- Stains are stacked in sorted order (spatialdata-io stacks them in the order of a Python set).
- Boundaries (GeoParquet): one partition per row group, ZIndex 0 and valid geometries only,
  as MultiPolygons indexed by EntityID (str).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import FormatError
from spatialflow.io.readers._vendor import (
    DEFAULT_FACTORS,
    csv_blocks,
    csv_header,
    image_pyramid,
    known_categorical,
    lazy_array,
    local_folder,
    parquet_file,
    read_csv_block,
    read_row_group,
    require,
    require_columns,
)
from spatialflow.io.readers.base import Reader
from spatialflow.transforms.base import Affine, Identity

__all__ = ["MerscopeReader"]

_STAIN = re.compile(r"mosaic_(?P<stain>[\w|-]+[0-9]?)_z(?P<z>[0-9]+).tif")
_XYZ = {"global_x": "x", "global_y": "y", "global_z": "z"}


class MerscopeReader(Reader):
    name = "merscope"
    description = "a Vizgen MERSCOPE region folder (detected_transcripts.csv + images/)"

    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        from spatialflow.io.location import location

        loc = location(url, storage_options)
        return loc.exists("detected_transcripts.csv") and loc.exists("images")

    def open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> Dataset:
        known = {
            "z_layers",
            "region_name",
            "slide_name",
            "transcripts",
            "cells_boundaries",
            "cells_table",
            "mosaic_images",
            "blocksize",
        }
        path = local_folder(self.name, url, storage_options, options, known)
        return _read(path, **options)


def _read(
    path: Path,
    *,
    z_layers: int | list[int] = 3,
    region_name: str | None = None,
    slide_name: str | None = None,
    transcripts: bool = True,
    cells_boundaries: bool = True,
    cells_table: bool = True,
    mosaic_images: bool = True,
    blocksize: int = 64 * 2**20,
) -> Dataset:
    path = path.absolute()
    tfile = require(path / "images", "micron_to_mosaic_pixel_transform.csv", "micron -> pixel")
    try:
        m = np.genfromtxt(tfile)
    except ValueError as e:
        raise FormatError(f"{tfile}: not a whitespace-delimited 3x3 matrix: {e}") from e
    if m.shape != (3, 3) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:2, :2])) == 0:
        raise FormatError(f"{tfile}: expected an invertible 3x3 affine matrix, got {m.tolist()}")
    to_px = Affine(m, ("x", "y"), ("x", "y"))
    to_um = Affine(np.linalg.inv(m), ("x", "y"), ("x", "y"))
    region = path.name if region_name is None else region_name
    slide = path.parent.name if slide_name is None else slide_name
    dataset_id = f"{slide}_{region}"
    polygons = f"{dataset_id}_polygons"
    images, points, shapes, tables = {}, {}, {}, {}
    if mosaic_images:
        d = path / "images"
        stains = sorted({mm.group("stain") for f in d.iterdir() if (mm := _STAIN.search(f.name))})
        for z in [z_layers] if isinstance(z_layers, int) else list(z_layers or []):
            if stains:
                files = [require(d, f"mosaic_{s}_z{z}.tif", f"stain {s} at z {z}") for s in stains]
                arr = da.stack([lazy_array(f).squeeze() for f in files]).rechunk((1, 4096, 4096))
                levels = [lv.assign_coords(c=stains) for lv in image_pyramid(arr, DEFAULT_FACTORS)]
                images[f"{dataset_id}_z{z}"] = Image(
                    _tree(levels), transforms={"global": Identity(), "microns": to_um}
                )
    panel = _panel(path)
    if transcripts:
        points[f"{dataset_id}_transcripts"] = _points(path, to_px, panel, blocksize)
    if cells_boundaries:
        shapes[polygons] = _polygons(path, to_px)
    if cells_table:
        tables["table"] = _table(path, region, slide, dataset_id, polygons)
    return Dataset(images=images, points=points, shapes=shapes, tables=tables)


def _tree(levels: list[Any]) -> Any:
    import xarray as xr

    return xr.DataTree.from_dict(
        {f"s{k}": xr.Dataset({"image": lv}) for k, lv in enumerate(levels)}
    )


def _panel(path: Path) -> pd.Index:
    f = require(path, "cell_by_gene.csv", "cell x gene counts")
    return pd.Index(csv_header(f)[1:], dtype="str")


class _CsvTask:
    def __init__(self, file: Path, header: list[str], panel: pd.Index, starts: list[int]) -> None:
        self.file, self.header, self.panel, self.starts = file, header, panel, starts

    def __call__(self, block: tuple[int, int, int]) -> pd.DataFrame:
        k, start, end = block
        frame = read_csv_block(self.file, start, end, self.header, None, [*_XYZ, "gene"])
        offset = int(self.starts[k])
        return self.convert(frame, offset)

    def convert(self, frame: pd.DataFrame, offset: int) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        # the file's own x, y (FOV pixels) give way to global_x/y as x, y (as spatialdata does)
        skip = {*_XYZ, "gene", "x", "y", "z"}
        order = [*_XYZ, "gene"] + [c for c in self.header if c not in skip]
        for c in order:
            s = frame[c]
            if c == "gene":
                cols[c] = known_categorical(s.astype(object).to_numpy(), self.panel, self.file, c)
            elif s.dtype == object or isinstance(s.dtype, pd.StringDtype):
                cols[c] = s.astype(pd.StringDtype("pyarrow"))
            else:
                cols[c] = s.to_numpy()
        out = pd.DataFrame(cols).rename(columns=_XYZ)
        out.index = pd.RangeIndex(offset, offset + len(out))
        return out


def _points(path: Path, to_px: Affine, panel: pd.Index, blocksize: int) -> Points:
    f = require(path, "detected_transcripts.csv", "transcripts")
    header = csv_header(f)
    header = [h if h else "Unnamed: 0" for h in header]
    require_columns(f, header, [*_XYZ, "gene"])
    blocks = csv_blocks(f, header, blocksize)
    # rows before each block are unknown without reading: index blocks by a row stride
    starts = [k * (1 << 40) for k in range(len(blocks))] if len(blocks) > 1 else [0]
    task = _CsvTask(f, header, panel, starts)
    sample = pd.read_csv(f, nrows=5)
    sample.columns = header
    meta = task.convert(sample.iloc[:0], 0)
    ddf = dd.from_map(
        task,
        [(k, a, b) for k, (a, b) in enumerate(blocks)],
        meta=meta,
        enforce_metadata=False,
        label="merscope-transcripts",
    )
    return Points(ddf, feature_key="gene", transforms={"global": to_px, "microns": Identity()})


class _PolygonTask:
    def __init__(self, file: Path, geom: str) -> None:
        self.file, self.geom = file, geom

    def __call__(self, group: int) -> gpd.GeoDataFrame:
        import pyarrow.parquet as pq

        names = pq.ParquetFile(self.file).schema_arrow.names
        frame = read_row_group(self.file, group, names).to_pandas()
        geoms = shapely.from_wkb(frame.pop(self.geom).to_numpy())
        cols = list(frame.columns)
        gdf = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geoms))
        gdf = gdf[[*cols[: names.index(self.geom)], "geometry", *cols[names.index(self.geom) :]]]
        gdf = gdf[gdf["ZIndex"] == 0]
        gdf = gdf[gdf.geometry.is_valid]
        gdf["geometry"] = [
            shapely.MultiPolygon(list(g.geoms))
            if hasattr(g, "geoms")
            else shapely.MultiPolygon([g])
            for g in gdf.geometry.values
        ]
        gdf.index = gdf["EntityID"].astype(str)
        return gdf


def _polygons(path: Path, to_px: Affine) -> Shapes:
    import json

    f = require(path, "cell_boundaries.parquet", "cell boundaries, GeoParquet")
    pf = parquet_file(f)
    geo = json.loads((pf.schema_arrow.metadata or {}).get(b"geo", b"{}"))
    geom = geo.get("primary_column", "Geometry")
    require_columns(f, pf.schema_arrow.names, [geom, "EntityID", "ZIndex"])
    task = _PolygonTask(f, geom)
    meta = task(0).iloc[:0] if pf.num_row_groups else None
    ddf = dd.from_map(
        task,
        list(range(pf.num_row_groups)),
        meta=meta,
        enforce_metadata=False,
        label="merscope-polygons",
    )
    return Shapes(ddf, transforms={"global": to_px, "microns": Identity()})


def _table(path: Path, region: str, slide: str, dataset_id: str, polygons: str) -> Table:
    import anndata as ad

    counts = require(path, "cell_by_gene.csv", "cell x gene counts")
    meta = require(path, "cell_metadata.csv", "per-cell metadata")
    require_columns(meta, csv_header(meta), ["center_x", "center_y"])
    data = pd.read_csv(counts, index_col=0, dtype={"cell": str})
    obs = pd.read_csv(meta, index_col=0, dtype={"EntityID": str})
    is_gene = ~data.columns.str.lower().str.contains("blank")
    adata = ad.AnnData(
        data.loc[:, is_gene].to_numpy().astype(data.values.dtype),
        obs=obs,
        var=pd.DataFrame(index=data.columns[is_gene]),
    )
    adata.obsm["blank"] = data.loc[:, ~is_gene]
    adata.obsm["spatial"] = adata.obs[["center_x", "center_y"]].values
    for key, value in (
        ("region", region),
        ("slide", slide),
        ("dataset_id", dataset_id),
        ("cells_region", polygons),
    ):
        adata.obs[key] = pd.Series(value, index=adata.obs_names, dtype="category")
    adata.obs["EntityID"] = adata.obs.index
    return Table(adata, region=polygons, region_key="cells_region", instance_key="EntityID")
