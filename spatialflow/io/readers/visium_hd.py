"""10x Visium HD Space Ranger output folders (binned outputs) as a lazy Dataset.

Element names, coordinate systems, transformations and tables are those of spatialdata-io
0.7.1's ``visium_hd()`` (the oracle) for the binned data: per bin size ``square_XXXum`` a
shapes element ``{dataset_id}_square_XXXum`` (one axis-aligned square of side
``spot_diameter_fullres`` per bin under tissue, or circles with ``bins_as_squares=False``) and a
table ``square_XXXum`` (the filtered or raw 10x h5 matrix; obs ``in_tissue``, ``array_row``,
``array_col``, ``location_id``, ``region``; ``obsm["spatial"]`` the bin centres in full-resolution
pixels). Images ``{dataset_id}_full_image`` (pyramid 2, 2, 2, 2), ``{dataset_id}_hires_image``,
``{dataset_id}_lowres_image``. Systems: ``{dataset_id}`` (full-resolution pixels),
``{dataset_id}_downscaled_hires`` / ``_lowres``; in addition ``microns`` (``microns_per_pixel``
from the bins' scale factors).

Decisions:
- The tables (count matrices and bin positions) are read in the client: the bin centres are
  needed for ``obsm["spatial"]`` anyway. The polygons (millions of 2 um squares) are built
  lazily, one task per block of ``bins_per_partition`` bins, with partition bounding boxes
  from the centres.
- The consistency checks of spatialdata-io (bin size in the folder name equals
  ``bin_size_um``; ``bin_size_um / spot_diameter_fullres == microns_per_pixel``; the exact
  columns of ``tissue_positions.parquet``) are FormatErrors naming the file.
- ``segmented_outputs`` (Space Ranger 4): the cell polygons ``{dataset_id}_cell_segmentations``
  and table ``cell_segmentations`` as spatialdata-io makes them. Not read (yet): nucleus
  segmentations, the CytAssist image, ``annotate_table_by_labels`` (options refused).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr

from spatialflow.dataset import Dataset
from spatialflow.elements.raster import Image
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import FormatError
from spatialflow.io.readers._vendor import (
    DEFAULT_FACTORS,
    from_blocks,
    image_pyramid,
    lazy_array,
    local_folder,
    parquet_file,
    pil_array,
    read_10x_h5,
    require,
)
from spatialflow.io.readers.base import Reader
from spatialflow.transforms.base import Identity, Scale

__all__ = ["VisiumHDReader"]

log = logging.getLogger(__name__)

_POSITIONS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
_SLICE = "feature_slice.h5"


def _bin_dirs(folder: Path) -> list[Path]:
    return sorted(
        d for d in folder.iterdir() if d.is_dir() and re.fullmatch(r"square_\d+um", d.name)
    )


class VisiumHDReader(Reader):
    name = "visium_hd"
    description = "a 10x Visium HD Space Ranger output folder (binned_outputs/square_*um/)"

    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        from spatialflow.io.location import location

        loc = location(url, storage_options)
        bins = Path(loc.path) / "binned_outputs"
        return loc.is_local and bins.is_dir() and bool(_bin_dirs(bins))

    def open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> Dataset:
        known = {
            "dataset_id",
            "filtered_counts_file",
            "bin_size",
            "bins_as_squares",
            "fullres_image_file",
            "var_names_make_unique",
            "gex_only",
            "load_segmentations_only",
            "bins_per_partition",
        }
        path = local_folder(self.name, url, storage_options, options, known)
        if options.pop("load_segmentations_only", None):
            raise FormatError(
                f"{path}: load_segmentations_only=True: segmentations are not read yet"
            )
        return _read(path, **options)


def _dataset_id(path: Path, dataset_id: str | None) -> tuple[str, str]:
    """(file name prefix, dataset id) as spatialdata-io derives them from the feature slice."""
    if (path / _SLICE).exists():
        return "", dataset_id or ""
    if dataset_id is None:
        found = sorted(f.name for f in path.iterdir() if f.name.endswith(f"_{_SLICE}"))
        if len(found) != 1:
            raise FormatError(
                f"{path}: expected one *_{_SLICE} to name the dataset, found {found}; "
                "pass dataset_id=..."
            )
        dataset_id = found[0][: -len(_SLICE) - 1]
    require(path, f"{dataset_id}_{_SLICE}", "the HD layout metadata")
    return f"{dataset_id}_", dataset_id


def _json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise FormatError(f"{file}: not valid JSON: {e}") from e


def _read(
    path: Path,
    *,
    dataset_id: str | None = None,
    filtered_counts_file: bool = True,
    bin_size: int | list[int] | None = None,
    bins_as_squares: bool = True,
    fullres_image_file: str | Path | None = None,
    var_names_make_unique: bool = True,
    gex_only: bool = False,
    bins_per_partition: int = 250_000,
) -> Dataset:
    import h5py

    prefix, dsid = _dataset_id(path, dataset_id)
    slice_file = path / f"{prefix}{_SLICE}"
    try:
        with h5py.File(slice_file, "r") as f:
            meta = json.loads(f.attrs["metadata_json"])
            layout = json.loads(meta["hd_layout_json"])
    except (OSError, KeyError, ValueError) as e:
        raise FormatError(f"{slice_file}: no readable metadata_json/hd_layout_json: {e}") from e
    if layout.get("file_format") != "1.0":
        log.warning("%s: HD layout file format %s", slice_file, layout.get("file_format"))

    bins_root = path / "binned_outputs"
    dirs = _bin_dirs(bins_root) if bins_root.is_dir() else []
    if bin_size is not None:
        wanted = {
            f"square_{b:03d}um" for b in ([bin_size] if isinstance(bin_size, int) else bin_size)
        }
        chosen = [d for d in dirs if d.name in wanted]
        dirs = chosen or dirs
    scalefactors = _scalefactors(path, dirs)
    hires, lowres = (
        float(scalefactors["tissue_hires_scalef"]),
        float(scalefactors["tissue_lowres_scalef"]),
    )
    systems = {
        dsid: Identity(),
        f"{dsid}_downscaled_hires": Scale([hires, hires], ("x", "y")),
        f"{dsid}_downscaled_lowres": Scale([lowres, lowres], ("x", "y")),
    }
    shapes: dict[str, Shapes] = {}
    tables: dict[str, Table] = {}
    mpp = None
    for d in dirs:
        shape, table, mpp = _bins(
            d, dsid, systems, filtered_counts_file, gex_only, bins_as_squares, bins_per_partition
        )
        if var_names_make_unique:
            table.data.var_names_make_unique()
        shapes[f"{dsid}_{d.name}"] = shape
        tables[d.name] = table
    if mpp is None and "microns_per_pixel" in scalefactors:
        mpp = float(scalefactors["microns_per_pixel"])
    seg = _segmentation(path, dsid, systems, gex_only)
    if seg is not None:
        shapes[f"{dsid}_cell_segmentations"], tables["cell_segmentations"] = seg
    if mpp is not None:
        for s in shapes.values():
            s.transforms["microns"] = Scale([mpp, mpp], ("x", "y"))
    images = _images(path, prefix, dsid, fullres_image_file, hires, lowres, mpp)
    return Dataset(images=images, shapes=shapes, tables=tables)


def _segmentation(
    path: Path, dsid: str, systems: dict[str, Any], gex_only: bool
) -> tuple[Shapes, Table] | None:
    """Cell segmentation polygons and their counts (Space Ranger >= 4), when all files exist.

    The GeoJSON is parsed in the client (JSON gives no partial reads); cells of the matrix
    without a polygon are dropped, as spatialdata-io does."""
    seg = path / "segmented_outputs"
    files = [
        seg / "filtered_feature_cell_matrix.h5",
        seg / "cell_segmentations.geojson",
        seg / "spatial" / "scalefactors_json.json",
    ]
    if not all(f.exists() for f in files):
        if seg.exists():
            log.warning("%s: incomplete segmented_outputs (need %s); not read", seg, files)
        return None
    adata = read_10x_h5(files[0], gex_only=gex_only)
    adata.var_names_make_unique()
    features = _json(files[1]).get("features")
    if not isinstance(features, list):
        raise FormatError(f"{files[1]}: not a GeoJSON FeatureCollection")
    try:
        by_id = {f"cellid_{f['properties']['cell_id']:09d}-1": f for f in features}
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{files[1]}: a feature lacks an integer properties.cell_id: {e}") from e
    ids, geoms = [], []
    for name in adata.obs_names:
        feature = by_id.get(name)
        if feature:
            try:
                ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise FormatError(f"{files[1]}: cell {name}: no polygon coordinates: {e}") from e
            geoms.append(shapely.Polygon(ring))
            ids.append(name)
    key = f"{dsid}_cell_segmentations"
    gdf = gpd.GeoDataFrame({"cell_id": ids, "geometry": geoms}, index=ids)
    adata.obs["cell_id"] = adata.obs.index
    adata.obs["region"] = pd.Categorical([key] * adata.n_obs)
    adata = adata[ids].copy()
    shapes = Shapes(gdf, transforms=dict(systems), spatial_sort=False)
    return shapes, Table(adata, region=key, region_key="region", instance_key="cell_id")


def _scalefactors(path: Path, dirs: list[Path]) -> dict[str, Any]:
    candidates = [
        path / "segmented_outputs" / "spatial" / "scalefactors_json.json",
        path / "spatial" / "scalefactors_json.json",
        *[d / "spatial" / "scalefactors_json.json" for d in dirs],
    ]
    for c in candidates:
        if c.exists():
            sf = _json(c)
            missing = [k for k in ("tissue_hires_scalef", "tissue_lowres_scalef") if k not in sf]
            if missing:
                raise FormatError(f"{c}: missing key(s) {missing}")
            return sf
    raise FormatError(f"{path}: no spatial/scalefactors_json.json found (scale factors)")


def _bins(
    d: Path,
    dsid: str,
    systems: dict[str, Any],
    filtered: bool,
    gex_only: bool,
    squares: bool,
    per_partition: int,
) -> tuple[Shapes, Table, float]:
    name = "filtered_feature_bc_matrix.h5" if filtered else "raw_feature_bc_matrix.h5"
    adata = read_10x_h5(require(d, name, "bin x gene counts"), gex_only=gex_only)
    sf_file = require(d / "spatial", "scalefactors_json.json", "the bins' scale factors")
    sf = _json(sf_file)
    need = ["spot_diameter_fullres", "bin_size_um", "microns_per_pixel"]
    if any(k not in sf for k in need):
        raise FormatError(f"{sf_file}: missing key(s) {[k for k in need if k not in sf]}")
    size = float(re.search(r"\d+", d.name).group())
    if size != float(sf["bin_size_um"]):
        raise FormatError(f"{sf_file}: bin_size_um {sf['bin_size_um']} but the folder says {size}")
    if not np.isclose(sf["bin_size_um"] / sf["spot_diameter_fullres"], sf["microns_per_pixel"]):
        raise FormatError(
            f"{sf_file}: bin_size_um / spot_diameter_fullres = "
            f"{sf['bin_size_um'] / sf['spot_diameter_fullres']:.6g} but microns_per_pixel is "
            f"{sf['microns_per_pixel']}; a wrong pixel size"
        )
    pos_file = require(d / "spatial", "tissue_positions.parquet", "bin positions")
    pf = parquet_file(pos_file)
    if pf.schema_arrow.names != _POSITIONS:
        raise FormatError(
            f"{pos_file}: columns must be exactly {_POSITIONS}, found {pf.schema_arrow.names}"
        )
    coords = pf.read().to_pandas().set_index("barcode")
    try:
        coords = coords.loc[adata.obs.index]
    except KeyError as e:
        raise FormatError(f"{pos_file}: barcodes of {name} are missing here: {e}") from e
    obs = pd.merge(adata.obs, coords, how="left", left_index=True, right_index=True)
    centres = obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    adata.obs = obs.drop(columns=["pxl_col_in_fullres", "pxl_row_in_fullres"])
    adata.obsm["spatial"] = centres
    adata.obs["location_id"] = np.arange(adata.n_obs)
    shapes_name = f"{dsid}_{d.name}"
    adata.obs["region"] = pd.Categorical([shapes_name] * adata.n_obs)
    table = Table(adata, region=shapes_name, region_key="region", instance_key="location_id")
    radius = float(sf["spot_diameter_fullres"]) / 2.0
    n = len(centres)
    starts = list(range(0, n, per_partition)) or [0]
    blocks = [(s, centres[s : s + per_partition]) for s in starts]
    task = _BinTask(radius, squares)
    ddf = from_blocks(task, blocks, task((0, centres[:0])), f"visium-hd-{d.name}")
    bounds = [
        [*(b.min(axis=0) - radius), *(b.max(axis=0) + radius)] if len(b) else [0.0] * 4
        for _, b in blocks
    ]
    shapes = Shapes(ddf, transforms=dict(systems), partition_bounds=bounds)
    return shapes, table, float(sf["microns_per_pixel"])


class _BinTask:
    """Squares (or circles) for a block of bin centres."""

    def __init__(self, radius: float, squares: bool) -> None:
        self.radius, self.squares = radius, squares

    def __call__(self, block: tuple[int, np.ndarray]) -> gpd.GeoDataFrame:
        start, centres = block
        index = pd.RangeIndex(start, start + len(centres), name="location_id")
        pts = shapely.points(centres) if len(centres) else np.empty(0, dtype=object)
        if self.squares:
            geoms = shapely.buffer(pts, self.radius, cap_style="square")
            return gpd.GeoDataFrame(geometry=gpd.GeoSeries(geoms, index=index))
        return gpd.GeoDataFrame(
            {"geometry": gpd.GeoSeries(pts, index=index), "radius": self.radius}, index=index
        )


def _images(
    path: Path,
    prefix: str,
    dsid: str,
    fullres: str | Path | None,
    hires: float,
    lowres: float,
    mpp: float | None,
) -> dict[str, Image]:
    images: dict[str, Image] = {}
    if fullres is None:
        micro = path / "microscope_image"
        if micro.is_dir():
            found = sorted(f for f in micro.iterdir() if f.is_file())
        else:
            found = sorted(path.glob(f"{prefix}tissue_image.*"))
        if len(found) > 1:
            log.warning("%s: several full-resolution images, using %s", path, found[0].name)
        fullres = found[0] if found else None
    if fullres is not None:
        levels = image_pyramid(_cyx(Path(fullres)), DEFAULT_FACTORS)
        levels = _named(levels)
        t = {dsid: Identity()}
        if mpp is not None:
            t["microns"] = Scale([mpp, mpp], ("x", "y"))
        images[f"{dsid}_full_image"] = Image(_tree(levels), transforms=t)
    else:
        log.warning("%s: no full-resolution image found", path)
    for kind, s in (("hires", hires), ("lowres", lowres)):
        files = sorted(path.rglob(f"tissue_{kind}_image.png"))
        if not files:
            log.warning("%s: no tissue_%s_image.png", path, kind)
            continue
        t = {f"{dsid}_downscaled_{kind}": Identity(), dsid: Scale([1 / s, 1 / s], ("x", "y"))}
        if mpp is not None:
            t["microns"] = Scale([mpp / s, mpp / s], ("x", "y"))
        level = _named([xr.DataArray(_cyx(files[0]), dims=("c", "y", "x"))])[0]
        images[f"{dsid}_{kind}_image"] = Image(level, transforms=t)
    return images


def _cyx(file: Path) -> da.Array:
    """An image file as a lazy (c, y, x) array (RGB files have their channels last)."""
    arr = lazy_array(file) if file.suffix.lower() in (".tif", ".tiff", ".btf") else pil_array(file)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return arr[None]
    if arr.shape[-1] == 3:
        return arr.transpose(2, 0, 1)
    if arr.shape[0] != min(arr.shape):
        raise FormatError(f"{file}: expected channels first or RGB, got shape {arr.shape}")
    return arr


def _named(levels: list[xr.DataArray]) -> list[xr.DataArray]:
    names = {3: ["r", "g", "b"], 4: ["r", "g", "b", "a"]}.get(levels[0].shape[0])
    return [lv.assign_coords(c=names) for lv in levels] if names else levels


def _tree(levels: list[Any]) -> Any:
    return xr.DataTree.from_dict(
        {f"s{k}": xr.Dataset({"image": lv}) for k, lv in enumerate(levels)}
    )
