"""NanoString CosMx flat-file exports as a lazy Dataset.

Element names, coordinate systems, transformations and the table are those of spatialdata-io
0.7.1's ``cosmx()`` (the oracle): per field of view (FOV) ``f``, images ``{f}_image``
(``CellComposite/*_F00f.*``), labels ``{f}_labels`` (``CellLabels/*_F00f.*``) and points
``{f}_points`` (rows of ``<id>_tx_file.csv`` with ``fov == f``), each mapping to the FOV's own
system ``{f}`` (Identity, local pixels), to ``global`` (the FOV's local -> global pixel affine,
fitted by least squares to the cell centroids of ``<id>_metadata_file.csv``) and to
``global_only_image`` / ``global_only_labels``. The table ``table`` (``<id>_exprMat_file.csv``
counts, obs from the metadata) annotates the labels (region key ``fov_labels``, instance key
``cell_ID``, obs names ``{cell_ID}_{fov}``). Where ``<id>_fov_positions_file.csv`` gives FOV
origins in pixels and millimetres (or ``pixel_size=`` is given), every element also maps to
``microns`` (global pixels times the pixel size).

Decisions:
- The transcripts CSV is cut into byte blocks at line ends; the client reads only the first and
  the last line of each block. When the file is grouped by FOV in increasing order (as AtoMx
  writes it), FOV ``f``'s element is made of the blocks whose first/last FOV bracket ``f``, one
  task per block (each task checks that its block is really ordered); otherwise every FOV reads
  every block. spatialdata-io reads the whole file into pandas (and writes a parquet copy).
- ``target`` gets its categories from the expression matrix's columns (the panel); a target
  not in it is an error. spatialdata-io's categories are the values present in each FOV.
- ``cell_ID`` of the points stays int64 (spatialdata-io makes it a categorical of the FOV's cell
  ids, which needs a pass over the data). Points columns: x, y, target, cell_ID, then the
  file's other columns in file order (``z`` renamed ``z_raw``). A FOV's index starts at 0; later
  blocks of the same FOV are numbered from ``k << 40`` (block k), as the rows before a block
  are not counted without reading them.
- The table's ``region`` list is sorted (spatialdata-io lists the regions in set order).
- Images are flipped vertically (CosMx stores them with the y axis reversed) and read lazily:
  TIFF through tifffile's zarr interface, JPEG/PNG by one task per file.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.elements.table import Table
from spatialflow.errors import FormatError
from spatialflow.io.readers._vendor import (
    DEFAULT_CSV_BLOCK,
    csv_blocks,
    csv_header,
    from_blocks,
    known_categorical,
    lazy_array,
    local_folder,
    pil_array,
    read_csv_block,
    require,
    require_columns,
)
from spatialflow.io.readers.base import Reader
from spatialflow.transforms.base import Affine, Identity

__all__ = ["CosmxReader"]

_EXTENSIONS = (".jpg", ".png", ".jpeg", ".tif", ".tiff")
_FOV_FILE = re.compile(r".*_F(\d+)")
_CENTROIDS = ("CenterX_local_px", "CenterY_local_px", "CenterX_global_px", "CenterY_global_px")


def _suffixed(folder: Path, suffix: str) -> list[str]:
    return sorted(f.name for f in folder.iterdir() if f.name.endswith(suffix))


class CosmxReader(Reader):
    name = "cosmx"
    description = "a NanoString CosMx flat-file export (*_tx_file.csv + *_fov_positions_file.csv)"

    def guess_can_open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None
    ) -> bool:
        from spatialflow.io.location import location

        loc = location(url, storage_options)
        if not loc.is_local or not Path(loc.path).is_dir():
            return False
        folder = Path(loc.path)
        return bool(_suffixed(folder, "_tx_file.csv")) and bool(
            _suffixed(folder, "fov_positions_file.csv")
        )

    def open(
        self, url: str | Path, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> Dataset:
        known = {"dataset_id", "transcripts", "pixel_size", "blocksize"}
        path = local_folder(self.name, url, storage_options, options, known)
        return CosmxFolder(path, options.pop("dataset_id", None)).dataset(**options)


class CosmxFolder:
    """The files of one CosMx export, checked when opened."""

    def __init__(self, path: Path, dataset_id: str | None) -> None:
        self.path = path
        if dataset_id is None:
            found = _suffixed(path, "_exprMat_file.csv")
            if len(found) != 1:
                raise FormatError(
                    f"{path}: expected exactly one *_exprMat_file.csv to name the dataset, found "
                    f"{found}; pass dataset_id=..."
                )
            dataset_id = found[0][: -len("_exprMat_file.csv")]
        self.id = dataset_id
        self.counts = require(path, f"{dataset_id}_exprMat_file.csv", "cell x gene counts")
        self.meta = require(path, f"{dataset_id}_metadata_file.csv", "per-cell metadata")
        self.fovs_file = require(path, f"{dataset_id}_fov_positions_file.csv", "FOV positions")
        for d in ("CellComposite", "CellLabels"):
            if not (path / d).is_dir():
                raise FormatError(f"{path / d}: missing directory (per-FOV images)")

    def dataset(
        self,
        *,
        transcripts: bool = True,
        pixel_size: float | None = None,
        blocksize: int = DEFAULT_CSV_BLOCK,
    ) -> Dataset:
        table, fovs, affines = self.table()
        ps = self.pixel_size() if pixel_size is None else float(pixel_size)
        systems = {}
        for f in fovs:
            t = {f: Identity(), "global": affines[f]}
            if ps is not None:
                t["microns"] = Affine(
                    np.diag([ps, ps, 1.0]) @ affines[f].matrix, ("x", "y"), ("x", "y")
                )
            systems[f] = t
        images: dict[str, Image] = {}
        labels: dict[str, Labels] = {}
        for fov, file in self._fov_files("CellComposite", fovs):
            arr = _flipped(file)
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            names = {3: ["r", "g", "b"], 4: ["r", "g", "b", "a"]}.get(arr.shape[0])
            level = xr.DataArray(arr, dims=("c", "y", "x"))
            if names:
                level = level.assign_coords(c=names)
            images[f"{fov}_image"] = Image(
                level, transforms={**systems[fov], "global_only_image": affines[fov]}
            )
        for fov, file in self._fov_files("CellLabels", fovs):
            arr = _flipped(file)
            if arr.ndim != 2:
                raise FormatError(f"{file}: a label mask must be 2D, got shape {arr.shape}")
            labels[f"{fov}_labels"] = Labels(
                xr.DataArray(arr, dims=("y", "x")),
                transforms={**systems[fov], "global_only_labels": affines[fov]},
            )
        points: dict[str, Points] = {}
        if transcripts:
            panel = pd.Index([str(c) for c in table.data.var_names], dtype="str")
            tf = {f: {**systems[f], "global_only_labels": affines[f]} for f in fovs}
            for fov, pts in self.transcripts(fovs, panel, blocksize, tf).items():
                points[f"{fov}_points"] = pts
        return Dataset(images=images, labels=labels, points=points, tables={"table": table})

    # --- table and FOV affines ---------------------------------------------------------------
    def table(self) -> tuple[Table, list[str], dict[str, Affine]]:
        import anndata as ad
        import scipy.sparse as sp

        require_columns(self.counts, csv_header(self.counts), ["fov", "cell_ID"])
        require_columns(self.meta, csv_header(self.meta), ["fov", "cell_ID", *_CENTROIDS])
        counts = pd.read_csv(self.counts, header=0, index_col="cell_ID")
        counts.index = counts.index.astype(str).str.cat(
            counts.pop("fov").astype(str).values, sep="_"
        )
        obs = pd.read_csv(self.meta, header=0, index_col="cell_ID")
        obs["fov"] = pd.Categorical(obs["fov"].astype(str))
        obs["fov_labels"] = pd.Categorical(obs["fov"].astype(str) + "_labels")
        obs["cell_ID"] = obs.index.astype(np.int64)
        obs = obs.rename_axis(None)
        obs.index = obs.index.astype(str).str.cat(obs["fov"].values, sep="_")
        if obs.index.duplicated().any():
            dup = obs.index[obs.index.duplicated()][0]
            raise FormatError(f"{self.meta}: cell {dup!r} (cell_ID_fov) is listed twice")
        common = obs.index.intersection(counts.index)
        adata = ad.AnnData(sp.csr_matrix(counts.loc[common, :].values), obs=obs.loc[common, :])
        adata.var_names = counts.columns
        fovs = list(map(str, adata.obs["fov"].astype(int).unique()))
        affines = {f: self._affine(adata.obs, f) for f in fovs}
        adata.obsm["global"] = adata.obs[list(_CENTROIDS[2:])].to_numpy()
        adata.obsm["spatial"] = adata.obs[list(_CENTROIDS[:2])].to_numpy()
        adata.obs = adata.obs.drop(columns=list(_CENTROIDS))
        regions = sorted(set(adata.obs["fov_labels"].astype(str)))
        table = Table(adata, region=regions, region_key="fov_labels", instance_key="cell_ID")
        return table, fovs, affines

    def _affine(self, obs: pd.DataFrame, fov: str) -> Affine:
        rows = obs[obs["fov"].astype(str) == fov]
        src = rows[list(_CENTROIDS[:2])].to_numpy(np.float64)
        dst = rows[list(_CENTROIDS[2:])].to_numpy(np.float64)
        design = np.column_stack([src, np.ones(len(src))])
        if len(src) < 3 or np.linalg.matrix_rank(design) < 3:
            raise FormatError(
                f"{self.meta}: FOV {fov} has {len(src)} cell(s) not spanning a plane; the local "
                "-> global pixel affine needs three centroids that are not on one line"
            )
        coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
        return Affine(np.vstack([coef.T, [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y"))

    def pixel_size(self) -> float | None:
        """Micrometres per pixel from the FOV origins in pixels and millimetres, if both given."""
        pos = pd.read_csv(self.fovs_file)
        pairs = [
            (p, m) for p, m in (("x_global_px", "x_global_mm"), ("y_global_px", "y_global_mm"))
        ]
        if not all(p in pos and m in pos for p, m in pairs):
            return None
        px = np.concatenate([pos[p].to_numpy(np.float64) for p, _ in pairs])
        um = np.concatenate([pos[m].to_numpy(np.float64) * 1000 for _, m in pairs])
        ok = px != 0
        if not ok.any():
            return None
        sizes = um[ok] / px[ok]
        ps = float(np.median(sizes))
        if not (ps > 0 and np.allclose(sizes, ps, rtol=1e-4)):
            raise FormatError(
                f"{self.fovs_file}: the FOV origins in millimetres and pixels imply different "
                f"pixel sizes ({sizes.min():.6g}..{sizes.max():.6g} um); a wrong pixel size "
                "or a damaged file. Pass pixel_size=... to override"
            )
        return ps

    def _fov_files(self, folder: str, fovs: list[str]) -> list[tuple[str, Path]]:
        out = []
        for f in sorted((self.path / folder).iterdir()):
            if not f.name.endswith(_EXTENSIONS):
                continue
            m = _FOV_FILE.findall(f.name)
            if not m:
                raise FormatError(f"{f}: file name does not end in _F<number> (the FOV)")
            fov = str(int(m[0]))
            if fov in fovs:
                out.append((fov, f))
        return out

    # --- transcripts -------------------------------------------------------------------------
    def transcripts(
        self, fovs: list[str], panel: pd.Index, blocksize: int, transforms: dict[str, Any]
    ) -> dict[str, Points]:
        file = require(self.path, f"{self.id}_tx_file.csv", "transcripts")
        header = csv_header(file)
        need = ["fov", "cell_ID", "x_local_px", "y_local_px", "target"]
        require_columns(file, header, need)
        blocks = csv_blocks(file, header, blocksize)
        ranges = [_fov_range(file, header, a, b) for a, b in blocks]
        ordered = all(lo <= hi for lo, hi in ranges) and all(
            ranges[k][1] <= ranges[k + 1][0] for k in range(len(ranges) - 1)
        )
        sample = pd.read_csv(file, nrows=5)
        sample.columns = header
        out = {}
        for fov in fovs:
            f = int(fov)
            ks = [k for k, (lo, hi) in enumerate(ranges) if lo <= f <= hi] if ordered else None
            if ks is None:
                ks = list(range(len(blocks)))
            if not ks:
                continue
            task = _FovTask(file, header, panel, f, ordered)
            meta = task.convert(sample.iloc[:0], 0)
            args = [(j, *blocks[k]) for j, k in enumerate(ks)]
            ddf = from_blocks(task, args, meta, f"cosmx-{fov}-points")
            out[fov] = Points(
                ddf, feature_key="target", instance_key="cell_ID", transforms=transforms[fov]
            )
        return out


def _fov_range(file: Path, header: list[str], start: int, end: int) -> tuple[int, int]:
    """FOV of the first and of the last line of ``file[start:end]`` (two lines read)."""
    with open(file, "rb") as f:
        f.seek(start)
        first = f.readline()
        back = min(end - start, 1 << 16)
        f.seek(end - back)
        tail = f.read(back).rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    pos = header.index("fov")
    vals = []
    for line in (first, tail):
        row = pd.read_csv(io.BytesIO(line), header=None, names=header, nrows=1)
        v = row["fov"].iloc[0] if len(row) else None
        if v is None or pd.isna(v) or not float(v).is_integer():
            raise FormatError(f"{file}: bytes {start}-{end}: no integer fov in column {pos}")
        vals.append(int(v))
    return vals[0], vals[1]


class _FovTask:
    """One byte block of the transcripts CSV, the rows of one FOV."""

    def __init__(
        self, file: Path, header: list[str], panel: pd.Index, fov: int, ordered: bool
    ) -> None:
        self.file, self.header, self.panel, self.fov, self.ordered = (
            file,
            header,
            panel,
            fov,
            ordered,
        )

    def __call__(self, block: tuple[int, int, int]) -> pd.DataFrame:
        j, start, end = block
        need = ["fov", "x_local_px", "y_local_px", "target"]
        frame = read_csv_block(self.file, start, end, self.header, None, need)
        fov = frame["fov"].to_numpy()
        if self.ordered and len(fov) > 1 and (np.diff(fov) < 0).any():
            raise FormatError(
                f"{self.file}: bytes {start}-{end} are not ordered by fov although the blocks "
                "around them are; rows of one FOV must follow one another in increasing FOV order"
            )
        return self.convert(frame[fov == self.fov], j << 40)

    def convert(self, frame: pd.DataFrame, offset: int) -> pd.DataFrame:
        xy = frame[["x_local_px", "y_local_px"]].to_numpy()
        cols: dict[str, Any] = {"x": xy[:, 0], "y": xy[:, 1]}
        cols["target"] = known_categorical(
            frame["target"].astype(object).to_numpy(), self.panel, self.file, "target"
        )
        cols["cell_ID"] = frame["cell_ID"].to_numpy()
        skip = {"x_local_px", "y_local_px", "target", "cell_ID", "x", "y"}
        for c in self.header:
            if c in skip:
                continue
            s = frame[c]
            name = "z_raw" if c == "z" else c
            if s.dtype == object or isinstance(s.dtype, pd.StringDtype):
                cols[name] = s.astype(pd.StringDtype("pyarrow")).array
            else:
                cols[name] = s.to_numpy()
        out = pd.DataFrame(cols)
        out.index = pd.RangeIndex(offset, offset + len(out))
        return out


def _flipped(file: Path) -> da.Array:
    """An image file's pixels, upside down (rows reversed), lazily."""
    arr = lazy_array(file) if file.suffix.lower() in (".tif", ".tiff") else pil_array(file)
    arr = arr.squeeze() if arr.ndim > 2 and 1 in arr.shape[:-1] else arr
    return arr[::-1]
