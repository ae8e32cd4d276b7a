"""10x Xenium output folders (XOA 1.x and 2.x/3.x layouts) as a lazy Dataset.

Elements, coordinate systems, transformations and tables are those of spatialdata-io 0.7.1's
``xenium()`` (the oracle): images ``morphology_focus`` (+ ``morphology_mip`` before 2.0), labels
``cell_labels`` / ``nucleus_labels`` from ``cells.zarr.zip``, shapes ``cell_boundaries`` /
``nucleus_boundaries``, points ``transcripts`` and the table ``table`` annotating
``cell_labels``. ``global`` is the morphology pixel space (points and shapes carry
``Scale(1 / pixel_size)`` on x, y); in addition every element maps to ``microns``.

Decisions:
- Transcripts: one partition per parquet row group, read by its own task; the partition's
  bounding box comes from the row group's column statistics (no data read). The element
  carries a column source over the same row groups, so hot paths (aggregation, queries) read
  numpy columns and gene codes straight from parquet. ``feature_name``
  gets its categories from the features of ``cell_feature_matrix.h5`` (genes and controls, in
  the matrix's order): no pass over the transcripts. spatialdata-io's categories are the
  values in order of first appearance, so the category *order* differs; values and category
  sets are the same. Columns: x, y, z, feature_name, cell_id, then the file's other columns in
  file order (spatialdata-io orders those by a Python set, which varies between runs).
- Boundaries: one partition per row group; a polygon whose vertices run past the end of a row
  group is completed from the next one and skipped by the next task. Vertices of one polygon
  must be contiguous (checked per task: the runs of ids must be distinct).
- The v1 cell boundaries take their ids from the parquet itself (spatialdata-io takes them from
  the zarr ``cell_id`` array in row order; both are the same list in XOA output).
- The table (one row per cell) is read in the client: it is small next to the transcripts.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import shapely

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import FormatError
from spatialflow.io.location import location
from spatialflow.io.readers._vendor import (
    DEFAULT_FACTORS,
    as_str,
    cell_id_strings,
    image_pyramid,
    known_categorical,
    labels_pyramid,
    lazy_array,
    local_folder,
    ome_physical_size,
    parquet_file,
    parquet_source,
    read_10x_h5,
    read_row_group,
    require,
    require_columns,
)
from spatialflow.io.readers.base import Reader
from spatialflow.transforms.base import Identity, Scale

__all__ = ["XeniumReader"]

log = logging.getLogger(__name__)

SPECS = "experiment.xenium"
_V2 = (2, 0, 0)
_V13 = (1, 3, 0)
_V2_CHANNELS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")
_POINT_COLS = {"x_location": "x", "y_location": "y", "z_location": "z"}


def parse_version(specs: dict[str, Any]) -> tuple[int, ...] | None:
    """XOA version from ``experiment.xenium`` (xenium_ranger's when resegmented)."""
    ranger = specs.get("xenium_ranger")
    text = ranger["version"] if ranger else specs.get("analysis_sw_version", "")
    m = re.search(r"^(?:x|X)enium-(\d+)\.(\d+)\.(\d+)", str(text))
    return tuple(int(g) for g in m.groups()) if m else None


class XeniumReader(Reader):
    name = "xenium"
    description = "a 10x Xenium output folder (experiment.xenium)"

    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        return location(url, storage_options).exists(SPECS)

    def open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> Dataset:
        known = {
            "cells_boundaries",
            "nucleus_boundaries",
            "cells_labels",
            "nucleus_labels",
            "transcripts",
            "morphology_mip",
            "morphology_focus",
            "cells_table",
            "gex_only",
        }
        path = local_folder(self.name, url, storage_options, options, known)
        return XeniumFolder(path).dataset(**options)


class XeniumFolder:
    """The files of one Xenium output folder, checked when opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        specs_file = require(path, SPECS, "the run's specifications, JSON")
        try:
            self.specs = json.loads(specs_file.read_text())
        except ValueError as e:
            raise FormatError(f"{specs_file}: not valid JSON: {e}") from e
        ps = self.specs.get("pixel_size")
        if not isinstance(ps, int | float) or not math.isfinite(ps) or ps <= 0:
            raise FormatError(
                f"{specs_file}: pixel_size must be a positive number of micrometres, got {ps!r}"
            )
        self.pixel_size = float(ps)
        self.version = parse_version(self.specs)
        self.v2 = self.version is None or self.version >= _V2
        self.to_px = Scale([1 / self.pixel_size, 1 / self.pixel_size], ("x", "y"))
        self.px_to_um = Scale([self.pixel_size, self.pixel_size], ("x", "y"))
        self.zarr = require(path, "cells.zarr.zip", "cell ids, masks and polygon mapping")
        self._cell_ids: np.ndarray | None = None

    # --- cells.zarr.zip ------------------------------------------------------------------
    def _zarr(self) -> Any:
        import zarr

        try:
            store = zarr.storage.ZipStore(self.zarr, mode="r", read_only=True)
            return zarr.open_group(store, mode="r")
        except Exception as e:
            raise FormatError(f"{self.zarr}: not a readable zipped zarr store: {e}") from e

    @property
    def cell_ids(self) -> np.ndarray | None:
        """Cell id strings by zarr row (XOA >= 1.3), or None for older layouts."""
        if self._cell_ids is None and (self.version is None or self.version >= _V13):
            g = self._zarr()
            if "cell_id" not in g:
                raise FormatError(f"{self.zarr}: no 'cell_id' array")
            raw = np.asarray(g["cell_id"][...])
            if raw.ndim != 2 or raw.shape[1] != 2:
                raise FormatError(
                    f"{self.zarr}: 'cell_id' must be (N, 2) uint32 (prefix, suffix), got {raw.shape}"
                )
            self._cell_ids = cell_id_strings(raw[:, 0], raw[:, 1])
        return self._cell_ids

    def mapping(self, mask: int) -> pd.DataFrame | None:
        """label_index -> cell_id for mask 0 (nuclei) or 1 (cells), where the layout has one."""
        ids = self.cell_ids
        if ids is None:
            return None
        g = self._zarr()
        if "polygon_sets" in g:
            idx = np.asarray(g[f"polygon_sets/{mask}/cell_index"][...])
            return pd.DataFrame(
                {"cell_id": ids[idx], "label_index": np.arange(1, len(idx) + 1, dtype=np.int64)}
            )
        if "seg_mask_value" in g and mask == 1:
            vals = np.asarray(g["seg_mask_value"][...]).astype(np.int64)
            return pd.DataFrame({"cell_id": ids, "label_index": vals})
        return None

    # --- elements ------------------------------------------------------------------------
    def dataset(
        self,
        *,
        cells_boundaries: bool = True,
        nucleus_boundaries: bool = True,
        cells_labels: bool = True,
        nucleus_labels: bool = True,
        transcripts: bool = True,
        morphology_mip: bool = True,
        morphology_focus: bool = True,
        cells_table: bool = True,
        gex_only: bool = True,
    ) -> Dataset:
        images: dict[str, Image] = {}
        labels: dict[str, Labels] = {}
        shapes: dict[str, Shapes] = {}
        points: dict[str, Points] = {}
        tables: dict[str, Table] = {}
        if morphology_focus:
            images["morphology_focus"] = self.focus_image()
        if morphology_mip and not self.v2:
            images["morphology_mip"] = self.image(
                [require(self.path, "morphology_mip.ome.tif", "maximum projection image")], None
            )
        cell_map = self.mapping(1)
        if nucleus_labels:
            labels["nucleus_labels"] = self.labels(0)
        if cells_labels:
            labels["cell_labels"] = self.labels(1)
        if nucleus_boundaries:
            shapes["nucleus_boundaries"] = self.boundaries("nucleus_boundaries.parquet", 0)
        if cells_boundaries:
            shapes["cell_boundaries"] = self.boundaries("cell_boundaries.parquet", 1)
        if transcripts:
            points["transcripts"] = self.transcripts()
        if cells_table or cells_boundaries or nucleus_boundaries:
            tables["table"] = self.table(gex_only, cell_map if cells_labels else None)
        return Dataset(images=images, labels=labels, points=points, shapes=shapes, tables=tables)

    # images and labels
    def focus_image(self) -> Image:
        if not self.v2:
            return self.image([require(self.path, "morphology_focus.ome.tif", "focus image")], None)
        d = self.path / "morphology_focus"
        if not d.is_dir():
            raise FormatError(f"{d}: missing directory (the morphology focus images of XOA >= 2)")
        files = sorted(
            f.name
            for f in d.iterdir()
            if f.name.endswith(".ome.tif") and not f.name.startswith(".")
        )
        expected = [f"morphology_focus_{k:04d}.ome.tif" for k in range(len(files))]
        if len(files) not in (1, 4) or files != expected:
            raise FormatError(
                f"{d}: expected morphology_focus_0000.ome.tif (and 0001-0003 with the "
                f"segmentation kit), found {files}; XOA 4 channel files are not supported yet"
            )
        return self.image([d / f for f in files], list(_V2_CHANNELS[: len(files)]))

    def image(self, files: list[Path], channels: list[str] | None) -> Image:
        import dask.array as da

        arrays = []
        for f in files:
            self._check_pixel_size(f)
            a = lazy_array(f)
            arrays.append(a[None] if a.ndim == 2 else a)
        arr = da.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
        arr = arr.rechunk((1, 4096, 4096))
        levels = image_pyramid(arr, DEFAULT_FACTORS)
        if channels is not None:
            levels = [lv.assign_coords(c=channels) for lv in levels]
        return Image(
            _tree(levels),
            transforms={"global": Identity(), "microns": self.px_to_um},
        )

    def _check_pixel_size(self, f: Path) -> None:
        found = ome_physical_size(f)
        if found is not None and not math.isclose(found, self.pixel_size, rel_tol=1e-4):
            raise FormatError(
                f"{f}: PhysicalSizeX is {found} um but {self.path / SPECS} says pixel_size "
                f"{self.pixel_size} um; the image and the run do not match (wrong pixel size)"
            )

    def labels(self, mask: int) -> Labels:
        g = self._zarr()
        key = f"masks/{mask}"
        if key not in g:
            raise FormatError(f"{self.zarr}: no '{key}' array (the {_MASKS[mask]} label mask)")
        arr = lazy_array(self.zarr, key, chunks=(4096, 4096))
        return Labels(
            _tree(labels_pyramid(arr, DEFAULT_FACTORS)),
            transforms={"global": Identity(), "microns": self.px_to_um},
        )

    # boundaries
    def boundaries(self, fname: str, mask: int) -> Shapes:
        file = require(self.path, fname, f"{_MASKS[mask]} polygons")
        pf = parquet_file(file)
        names = pf.schema_arrow.names
        has_label = "label_id" in names
        require_columns(
            file, names, ["vertex_x", "vertex_y", "label_id" if has_label else "cell_id"]
        )
        mapping = self.mapping(mask) if has_label else None
        if has_label and mapping is None:
            raise FormatError(
                f"{self.zarr}: {file.name} has label_id but the zarr has no polygon_sets for it"
            )
        id_col = "label_id" if has_label else "cell_id"
        nucleus_index = mask == 0 and has_label
        meta = gpd.GeoDataFrame(
            {"geometry": gpd.GeoSeries([], crs=None)},
            index=pd.Index(np.empty(0, np.int64))
            if nucleus_index
            else pd.Index([], name="cell_id", dtype="str"),
        )
        if nucleus_index:
            meta["cell_id"] = pd.Series([], dtype="str")
        task = _BoundaryTask(file, id_col, pf.num_row_groups, mapping, nucleus_index)
        ddf = dd.from_map(
            task,
            list(range(pf.num_row_groups)),
            meta=meta,
            enforce_metadata=False,
            label=f"xenium-{fname.split('.')[0]}",
        )
        bounds = [_stats_box(pf, g, ["vertex_x", "vertex_y"]) for g in range(pf.num_row_groups)]
        return Shapes(
            ddf,
            transforms={"global": self.to_px, "microns": Identity()},
            partition_bounds=None if any(b is None for b in bounds) else bounds,
        )

    # transcripts
    def transcripts(self) -> Points:
        file = require(self.path, "transcripts.parquet", "transcripts")
        pf = parquet_file(file)
        names = pf.schema_arrow.names
        require_columns(file, names, [*_POINT_COLS, "feature_name", "cell_id"])
        categories = self.features()
        order = ["x_location", "y_location", "z_location", "feature_name", "cell_id"]
        order += [c for c in names if c not in order]
        offsets = np.concatenate(
            [[0], np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])]
        )
        task = _TranscriptTask(file, order, categories, offsets)
        meta = task.convert(pf.schema_arrow.empty_table().select(order), 0)
        ddf = dd.from_map(
            task,
            list(range(pf.num_row_groups)),
            meta=meta,
            enforce_metadata=False,
            label="xenium-transcripts",
        )
        bounds = [_stats_box(pf, g, list(_POINT_COLS)) for g in range(pf.num_row_groups)]
        return Points(
            ddf,
            feature_key="feature_name",
            instance_key="cell_id",
            transforms={"global": self.to_px, "microns": Identity()},
            partition_bounds=None if any(b is None for b in bounds) else bounds,
            column_source=parquet_source(file, pf, {"feature_name": list(categories)}, _POINT_COLS),
        )

    def features(self) -> pd.Index:
        """Every feature name of the panel (genes and controls) from the matrix h5."""
        import h5py

        file = require(self.path, "cell_feature_matrix.h5", "cell x feature counts")
        try:
            with h5py.File(file, "r") as f:
                names = f["matrix/features/name"][()].astype(str)
        except (OSError, KeyError) as e:
            raise FormatError(f"{file}: cannot read matrix/features/name: {e}") from e
        return pd.Index(pd.unique(names), dtype="str")

    # table
    def table(self, gex_only: bool, cell_map: pd.DataFrame | None) -> Table:
        h5 = require(self.path, "cell_feature_matrix.h5", "cell x feature counts")
        adata = read_10x_h5(h5, gex_only=gex_only)
        self._unscale_protein(h5, adata)
        cells = require(self.path, "cells.parquet", "per-cell metadata")
        pf = parquet_file(cells)
        require_columns(cells, pf.schema_arrow.names, ["cell_id", "x_centroid", "y_centroid"])
        meta = pf.read().to_pandas()
        if len(meta) and isinstance(meta["cell_id"].iloc[0], bytes):
            meta["cell_id"] = meta["cell_id"].str.decode("utf-8")
        if len(meta) != adata.n_obs or not np.array_equal(
            meta["cell_id"].astype(str).to_numpy(), adata.obs_names.to_numpy()
        ):
            raise FormatError(
                f"{cells}: its cell_id column ({len(meta)} rows) does not list the barcodes of "
                f"{h5} ({adata.n_obs}) in the same order"
            )
        adata.obsm["spatial"] = meta[["x_centroid", "y_centroid"]].to_numpy()
        meta = meta.drop(columns=["x_centroid", "y_centroid"])
        meta.index = adata.obs_names
        adata.obs = meta
        region = "cell_labels"
        adata.obs["region"] = pd.Categorical([region] * adata.n_obs)
        instance_key = "cell_id"
        summary = self._summary()
        if summary is not None:
            for col in ("z_level", "nucleus_count"):
                if col in summary:
                    adata.obs[col] = summary[col]
        if cell_map is not None:
            adata.obs["cell_labels"] = cell_map["label_index"].to_numpy()
            instance_key = "cell_labels"
        return Table(adata, region=region, region_key="region", instance_key=instance_key)

    def _summary(self) -> dict[str, np.ndarray] | None:
        if self.cell_ids is None:
            return None
        arr = self._zarr()["cell_summary"]
        cols = list(arr.attrs["column_names"])
        data = np.asarray(arr[...])
        return {c: data[:, k] for k, c in enumerate(cols)}

    @staticmethod
    def _unscale_protein(h5: Path, adata: Any) -> None:
        import h5py

        with h5py.File(h5, "r") as f:
            factor = f.attrs.get("protein_scaling_factor")
        if factor is not None:
            cols = np.flatnonzero(adata.var["feature_types"] == "Protein Expression")
            if len(cols):
                adata.X[:, cols] /= factor


_MASKS = {0: "nucleus", 1: "cell"}


def _tree(levels: list[Any]) -> Any:
    import xarray as xr

    return xr.DataTree.from_dict(
        {f"s{k}": xr.Dataset({"image": lv}) for k, lv in enumerate(levels)}
    )


def _stats_box(pf: Any, group: int, cols: list[str]) -> list[float] | None:
    """A row group's bounding box from its column statistics (None if not recorded)."""
    rg = pf.metadata.row_group(group)
    index = {rg.column(k).path_in_schema: k for k in range(rg.num_columns)}
    lo, hi = [], []
    for c in cols:
        st = rg.column(index[c]).statistics
        if st is None or not st.has_min_max:
            return None
        lo.append(float(st.min))
        hi.append(float(st.max))
    return lo + hi


class _TranscriptTask:
    """Reads one row group of transcripts.parquet as a pandas partition."""

    def __init__(
        self, file: Path, order: list[str], categories: pd.Index, offsets: np.ndarray
    ) -> None:
        self.file, self.order, self.categories, self.offsets = file, order, categories, offsets

    def __call__(self, group: int) -> pd.DataFrame:
        return self.convert(read_row_group(self.file, group, self.order), group)

    def convert(self, table: pa.Table, group: int) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for name in self.order:
            col = table.column(name)
            if name == "feature_name":
                cols[name] = known_categorical(
                    as_str(col), self.categories, self.file, "feature_name"
                )
            elif (
                pa.types.is_string(col.type)
                or pa.types.is_large_string(col.type)
                or (pa.types.is_binary(col.type))
            ):
                cols[name] = pd.array(as_str(col), dtype=pd.StringDtype("pyarrow"))
            else:
                cols[name] = col.to_numpy()
        frame = pd.DataFrame(cols)
        frame = frame.rename(columns=_POINT_COLS)
        start = int(self.offsets[group])
        frame.index = pd.RangeIndex(start, start + len(frame))
        return frame


class _BoundaryTask:
    """Polygons whose first vertex lies in one row group of a vertex table."""

    def __init__(
        self,
        file: Path,
        id_col: str,
        n_groups: int,
        mapping: pd.DataFrame | None,
        nucleus_index: bool,
    ) -> None:
        self.file, self.id_col, self.n_groups = file, id_col, n_groups
        self.mapping, self.nucleus_index = mapping, nucleus_index

    def _ids(self, table: pa.Table) -> np.ndarray:
        col = table.column(self.id_col)
        return col.to_numpy() if self.id_col == "label_id" else as_str(col)

    def __call__(self, group: int) -> gpd.GeoDataFrame:
        cols = ["vertex_x", "vertex_y", self.id_col]
        t = read_row_group(self.file, group, cols)
        ids = self._ids(t)
        x = t.column("vertex_x").to_numpy().astype(np.float64)
        y = t.column("vertex_y").to_numpy().astype(np.float64)
        if group > 0 and len(ids):  # skip the tail of a polygon begun in the previous group
            prev = self._ids(read_row_group(self.file, group - 1, [self.id_col]))
            if len(prev):
                skip = int(np.argmax(ids != prev[-1])) if (ids != prev[-1]).any() else len(ids)
                ids, x, y = ids[skip:], x[skip:], y[skip:]
        g = group + 1
        while len(ids) and g < self.n_groups:  # complete the last polygon from the next groups
            nxt = read_row_group(self.file, g, cols)
            nids = self._ids(nxt)
            same = nids == ids[-1]
            take = int(np.argmin(same)) if not same.all() else len(nids)
            if take == 0:
                break
            ids = np.concatenate([ids, nids[:take]])
            x = np.concatenate([x, nxt.column("vertex_x").to_numpy()[:take].astype(np.float64)])
            y = np.concatenate([y, nxt.column("vertex_y").to_numpy()[:take].astype(np.float64)])
            if take < len(nids):
                break
            g += 1
        return self.polygons(ids, x, y, group)

    def polygons(self, ids: np.ndarray, x: np.ndarray, y: np.ndarray, group: int) -> Any:
        n = len(ids)
        change = np.flatnonzero(ids[1:] != ids[:-1]) + 1 if n else np.empty(0, np.int64)
        starts = np.concatenate([[0], change]) if n else np.empty(0, np.int64)
        run_ids = ids[starts]
        if len(pd.unique(run_ids)) != len(run_ids):
            dup = pd.Series(run_ids)[pd.Series(run_ids).duplicated()].iloc[0]
            raise FormatError(
                f"{self.file}: the vertices of polygon {dup!r} are not contiguous (row group "
                f"{group}); every polygon's vertex rows must follow one another"
            )
        ring = np.concatenate([starts, [n]]).astype(np.int64)
        geoms = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON,
            np.column_stack([x, y]),
            (ring, np.arange(len(starts) + 1, dtype=np.int64)),
        )
        if self.mapping is not None:
            m = self.mapping.set_index("label_index")
            try:
                cell = m.loc[run_ids.astype(np.int64), "cell_id"].to_numpy()
            except KeyError as e:
                raise FormatError(
                    f"{self.file}: label_id values not in cells.zarr.zip polygon_sets: {e}"
                ) from e
            if self.nucleus_index:
                return gpd.GeoDataFrame(
                    {"geometry": geoms, "cell_id": pd.array(cell, dtype="str")},
                    index=pd.Index(run_ids.astype(np.int64)),
                )
            index = pd.Index(cell, name="cell_id", dtype="str")
        else:
            index = pd.Index(run_ids, name="cell_id", dtype="str")
        return gpd.GeoDataFrame({"geometry": geoms}, index=index)
