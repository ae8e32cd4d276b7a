"""Deterministic synthetic Xenium-like data at any scale.

The tissue is a grid of cells (centre spacing ``cell_spacing`` microns) with jittered centres,
filled row by row, so a dataset of ``n_cells`` cells covers about ``n_cells * spacing**2``.
Every per-cell quantity (jitter, cell type, size, nucleus) is a counter-based hash of the seed
and the cell's grid position, so any block of cells can be regenerated alone, identically,
by any task: that is what makes every element lazy and every partition independent.

The tissue is cut into rectangular tiles of whole grid cells; a tile is one partition of
``points["transcripts"]`` and of ``shapes["cells"]`` / ``shapes["nucleus_boundaries"]`` (tiles in Z-order,
cell ids numbered tile by tile, so each partition holds a contiguous id range). A tile's
transcripts are generated when its partition is computed, in memory proportional to the tile.

What is generated (coordinates in microns, the ``global`` coordinate system):

* ``shapes["cells"]``: each cell's Voronoi region (computed per tile with a halo of
  neighbours) clipped to a disk of radius ``0.6 * cell_spacing``: non-overlapping polygons.
* ``labels["nuclei"]`` and ``shapes["nucleus_boundaries"]``: a disk per cell inside its cell;
  label id = cell id + 1 (0 = background), rasterized per chunk from the same disks. (The
  polygons cannot also be called ``nuclei``: element names are unique across kinds, in
  SpatialData as here; ``nucleus_boundaries`` is what spatialdata-io calls them for Xenium.)
* ``images["morphology"]``: channels DAPI (bright inside nuclei) and PolyT (bright inside
  cells), uint16 with noise, multiscale; pixel size ``pixel_size`` microns (a Scale transform).
* ``points["transcripts"]``: x, y, z, gene (known categorical), cell_id (-1 outside cells),
  qv. 90% are drawn inside cells (within the disk inscribed in the cell's polygon) with genes
  from the cell type's program; 10% are background, uniform over the tile with uniform genes.
* ``shapes["spots"]``: Visium-like circles, 55 um diameter on a 100 um hexagonal grid.
* ``tables["table"]``: one row per cell (cell type, centre), annotating ``cells`` (named as
  spatialdata-io names a Xenium table; ``cells`` is taken by the shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import anndata as ad
import dask.array as da
import dask.dataframe as dd
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import ValidationError
from spatialflow.kernels.rasterize import rasterize_disks
from spatialflow.kernels.spatial import morton_codes
from spatialflow.transforms.base import Identity, Scale

__all__ = ["CELL_TYPES", "XeniumLike", "xenium_like"]

CELL_TYPES = (
    "epithelial",
    "fibroblast",
    "endothelial",
    "T_cell",
    "B_cell",
    "macrophage",
    "smooth_muscle",
    "plasma",
)
_JITTER = 0.25  # centre jitter, fraction of the spacing
_RADIUS = 0.6  # maximal cell radius, fraction of the spacing
_HALO = 2  # grid cells of neighbours that can shape a cell
_BACKGROUND = 0.10  # fraction of transcripts outside cells
_QUAD_SEGS = 8  # polygon segments per quarter circle


def _hash_uniform(seed: int, p: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, position, stream) by splitmix64."""
    with np.errstate(over="ignore"):
        z = np.asarray(p, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(
            (seed * 1_000_003 + stream * 7919) & 0xFFFFFFFFFFFFFFFF
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class Cells:
    """Cells of a block of the grid."""

    p: np.ndarray  # grid position (row-major over the whole grid)
    cell_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    cell_type: np.ndarray
    weight: np.ndarray  # relative transcript count
    r_in: np.ndarray  # radius of the disk surely inside the cell's polygon
    r_nucleus: np.ndarray


@dataclass(frozen=True)
class XeniumLike:
    """The layout of a synthetic dataset: every partition's content is a function of this."""

    n_transcripts: int
    n_cells: int
    n_genes: int = 300
    seed: int = 0
    cell_spacing: float = 15.0
    pixel_size: float = 0.5
    transcripts_per_partition: int = 1_000_000
    raster_chunk: int = 2048

    def __post_init__(self) -> None:
        for field in ("n_transcripts", "n_genes", "transcripts_per_partition", "raster_chunk"):
            v = getattr(self, field)
            if not isinstance(v, int | np.integer) or v < (0 if field == "n_transcripts" else 1):
                raise ValidationError(
                    f"xenium_like: {field} must be a {'non-negative' if field == 'n_transcripts' else 'positive'} integer, got {v!r}"
                )
        if not isinstance(self.n_cells, int | np.integer) or self.n_cells < 1:
            raise ValidationError(f"xenium_like: n_cells must be at least 1, got {self.n_cells!r}")
        if not (self.cell_spacing > 0 and self.pixel_size > 0):
            raise ValidationError("xenium_like: cell_spacing and pixel_size must be positive")

    # --- grid and tiles ----------------------------------------------------------------
    @cached_property
    def nx(self) -> int:
        return math.ceil(math.sqrt(self.n_cells))

    @cached_property
    def ny(self) -> int:
        return math.ceil(self.n_cells / self.nx)

    @property
    def width(self) -> float:
        return self.nx * self.cell_spacing

    @property
    def height(self) -> float:
        return self.ny * self.cell_spacing

    @cached_property
    def tiles(self) -> np.ndarray:
        """(n_tiles, 4) grid blocks [ix0, ix1, iy0, iy1) in Z-order, empty tiles dropped."""
        n_parts = max(1, math.ceil(self.n_transcripts / self.transcripts_per_partition))
        tx = max(1, min(self.nx, round(math.sqrt(n_parts * self.nx / self.ny))))
        ty = max(1, min(self.ny, math.ceil(n_parts / tx)))
        xe = np.linspace(0, self.nx, tx + 1).round().astype(np.int64)
        ye = np.linspace(0, self.ny, ty + 1).round().astype(np.int64)
        jx, jy = np.meshgrid(np.arange(tx), np.arange(ty))
        order = np.argsort(morton_codes(jx.ravel(), jy.ravel()), kind="stable")
        blocks = np.array(
            [
                [xe[i], xe[i + 1], ye[j], ye[j + 1]]
                for i, j in zip(jx.ravel()[order], jy.ravel()[order], strict=True)
            ]
        )
        counts = np.array([self._valid(b).sum() for b in blocks])
        return blocks[counts > 0]

    def _grid(self, block: np.ndarray) -> np.ndarray:
        ix0, ix1, iy0, iy1 = (int(v) for v in block)
        gy, gx = np.mgrid[iy0:iy1, ix0:ix1]
        return (gy * self.nx + gx).ravel()

    def _valid(self, block: np.ndarray) -> np.ndarray:
        return self._grid(block) < self.n_cells

    @cached_property
    def tile_cell_counts(self) -> np.ndarray:
        return np.array([int(self._valid(b).sum()) for b in self.tiles], dtype=np.int64)

    @cached_property
    def tile_cell_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.tile_cell_counts)])

    @cached_property
    def tile_transcripts(self) -> np.ndarray:
        """Transcripts per tile, proportional to its cells, summing exactly to n_transcripts."""
        share = self.tile_cell_counts / self.n_cells * self.n_transcripts
        base = np.floor(share).astype(np.int64)
        rest = self.n_transcripts - int(base.sum())
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
        return base

    @cached_property
    def tile_transcript_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.tile_transcripts)])

    def tile_extent(self, t: int) -> tuple[float, float, float, float]:
        ix0, ix1, iy0, iy1 = self.tiles[t]
        s = self.cell_spacing
        return ix0 * s, ix1 * s, iy0 * s, iy1 * s

    # --- genes and cell types ------------------------------------------------------------
    @cached_property
    def genes(self) -> list[str]:
        return [f"GENE{i:04d}" for i in range(self.n_genes)]

    @cached_property
    def cell_types(self) -> tuple[str, ...]:
        return CELL_TYPES[: max(1, min(len(CELL_TYPES), self.n_genes))]

    @cached_property
    def programs(self) -> np.ndarray:
        """(n_types, n_genes) cumulative gene probabilities of each cell type's program."""
        rng = np.random.default_rng([self.seed, 17])
        k = len(self.cell_types)
        w = rng.gamma(0.5, 1.0, size=(k, self.n_genes)) + 0.05
        block = max(1, self.n_genes // k)
        for t in range(k):
            w[t, t * block : (t + 1) * block] *= 25.0  # the type's marker genes
        p = w / w.sum(axis=1, keepdims=True)
        return np.cumsum(p, axis=1)

    # --- cells -------------------------------------------------------------------------
    def _centres(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.cell_spacing
        gx, gy = p % self.nx, p // self.nx
        jx = (_hash_uniform(self.seed, p, 1) - 0.5) * 2 * _JITTER
        jy = (_hash_uniform(self.seed, p, 2) - 0.5) * 2 * _JITTER
        return (gx + 0.5 + jx) * s, (gy + 0.5 + jy) * s

    def _types(self, p: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # spatially coherent domains of cell types, with some mixing
        length = 12 * self.cell_spacing
        field = (np.sin(x / length) * np.cos(y / (1.3 * length)) + 1) / 2
        mix = _hash_uniform(self.seed, p, 3)
        k = len(self.cell_types)
        t = np.floor(field * k).astype(np.int64)
        t = np.where(mix < 0.25, np.floor(_hash_uniform(self.seed, p, 4) * k), t)
        return np.clip(t, 0, k - 1).astype(np.int64)

    def cell_ids(self, p: np.ndarray) -> np.ndarray:
        """Cell id of grid positions (ids run tile by tile, row-major inside a tile)."""
        gx, gy = p % self.nx, p // self.nx
        out = np.empty(p.shape, dtype=np.int64)
        for t, (ix0, ix1, iy0, iy1) in enumerate(self.tiles):
            m = (gx >= ix0) & (gx < ix1) & (gy >= iy0) & (gy < iy1)
            out[m] = self.tile_cell_offsets[t] + (gy[m] - iy0) * (ix1 - ix0) + (gx[m] - ix0)
        return out

    def _halo(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grid positions and centres of a block's cells plus _HALO rings of neighbours."""
        ix0, ix1, iy0, iy1 = (int(v) for v in block)
        grown = np.array(
            [
                max(0, ix0 - _HALO),
                min(self.nx, ix1 + _HALO),
                max(0, iy0 - _HALO),
                min(self.ny, iy1 + _HALO),
            ]
        )
        halo = self._grid(grown)
        halo = halo[halo < self.n_cells]
        hx, hy = self._centres(halo)
        return halo, hx, hy

    def cells(self, block: np.ndarray) -> Cells:
        """All cells of a grid block, with the radii their neighbours allow."""
        p = self._grid(block)
        p = p[p < self.n_cells]
        x, y = self._centres(p)
        halo, hx, hy = self._halo(block)
        r_max = _RADIUS * self.cell_spacing
        if len(halo) > 1:
            d, _ = cKDTree(np.c_[hx, hy]).query(np.c_[x, y], k=2)
            r_in = np.minimum(r_max, d[:, 1] / 2) * 0.92
        else:
            r_in = np.full(len(p), r_max * 0.92)
        types = self._types(p, x, y)
        u1, u2 = _hash_uniform(self.seed, p, 5), _hash_uniform(self.seed, p, 6)
        normal = np.sqrt(-2 * np.log(np.maximum(u1, 1e-300))) * np.cos(2 * np.pi * u2)
        weight = np.exp(0.4 * normal)
        r_nuc = r_in * (0.45 + 0.2 * _hash_uniform(self.seed, p, 7))
        return Cells(p, self.cell_ids(p), x, y, types, weight, r_in, r_nuc)

    def cell_polygons(self, t: int) -> gpd.GeoDataFrame:
        """The cells of tile ``t``: Voronoi regions clipped to a disk."""
        block = self.tiles[t]
        c = self.cells(block)
        halo, hx, hy = self._halo(block)
        r_max = _RADIUS * self.cell_spacing
        disks = shapely.buffer(shapely.points(c.x, c.y), r_max, quad_segs=_QUAD_SEGS)
        if len(halo) >= 3:
            env = shapely.box(
                hx.min() - 2 * r_max,
                hy.min() - 2 * r_max,
                hx.max() + 2 * r_max,
                hy.max() + 2 * r_max,
            )
            vor = shapely.voronoi_polygons(
                shapely.multipoints(np.c_[hx, hy]), extend_to=env, ordered=True
            )
            regions = np.asarray(shapely.get_parts(vor))
            pos = {int(q): k for k, q in enumerate(halo)}
            mine = regions[[pos[int(q)] for q in c.p]]
            geoms = shapely.intersection(mine, disks)
        else:
            geoms = disks
        return self._z_ordered(c, geoms)

    def nuclei_polygons(self, t: int) -> gpd.GeoDataFrame:
        c = self.cells(self.tiles[t])
        geoms = shapely.buffer(shapely.points(c.x, c.y), c.r_nucleus, quad_segs=_QUAD_SEGS)
        return self._z_ordered(c, geoms)

    def _z_ordered(self, c: Cells, geoms: np.ndarray) -> gpd.GeoDataFrame:
        """A tile's cells in Z-curve order of their grid position (ids keep their values), so
        any run of rows, such as a parquet row group, covers a compact area."""
        gx, gy = c.p % self.nx, c.p // self.nx
        order = np.argsort(
            morton_codes(gx - gx.min(initial=0), gy - gy.min(initial=0)), kind="stable"
        )
        return gpd.GeoDataFrame(
            {"geometry": geoms[order]}, index=pd.Index(c.cell_id[order], name="cell_id")
        )

    # --- transcripts -------------------------------------------------------------------
    def transcripts(self, t: int) -> pd.DataFrame:
        """The transcripts of tile ``t`` (memory proportional to the tile)."""
        n = int(self.tile_transcripts[t])
        rng = np.random.default_rng([self.seed, 101, t])
        c = self.cells(self.tiles[t])
        n_bg = round(n * _BACKGROUND) if len(c.p) else n
        n_in = n - n_bg
        counts = (
            rng.multinomial(n_in, c.weight / c.weight.sum())
            if n_in
            else np.zeros(len(c.p), dtype=np.int64)
        )
        owner = np.repeat(np.arange(len(c.p)), counts)
        radius = c.r_in[owner] * rng.random(n_in) ** 0.6
        angle = rng.random(n_in) * 2 * np.pi
        x_in = c.x[owner] + radius * np.cos(angle)
        y_in = c.y[owner] + radius * np.sin(angle)
        u = rng.random(n_in)
        types = c.cell_type[owner]
        genes_in = np.empty(n_in, dtype=np.int64)
        for k in np.unique(types):
            m = types == k
            genes_in[m] = np.searchsorted(self.programs[k], u[m], side="right")
        x0, x1, y0, y1 = self.tile_extent(t)
        x_bg = x0 + rng.random(n_bg) * (x1 - x0)
        y_bg = y0 + rng.random(n_bg) * (y1 - y0)
        genes_bg = rng.integers(0, self.n_genes, n_bg)
        x = np.concatenate([x_in, x_bg])
        y = np.concatenate([y_in, y_bg])
        codes = np.minimum(np.concatenate([genes_in, genes_bg]), self.n_genes - 1)
        cell_id = np.concatenate([c.cell_id[owner], np.full(n_bg, -1, dtype=np.int64)])
        s = self.cell_spacing / 4  # sort by a fine Z-order grid for locality
        order = np.argsort(
            morton_codes(
                ((x - x0) / s).clip(0).astype(np.uint64), ((y - y0) / s).clip(0).astype(np.uint64)
            ),
            kind="stable",
        )
        start = int(self.tile_transcript_offsets[t])
        return pd.DataFrame(
            {
                "x": x[order].astype(np.float32),
                "y": y[order].astype(np.float32),
                "z": (rng.random(n) * 10.0).astype(np.float32)[order],
                "gene": pd.Categorical.from_codes(codes[order], categories=self.genes),
                "cell_id": cell_id[order],
                "qv": (20 + 20 * rng.random(n)).astype(np.float32)[order],
            },
            index=pd.RangeIndex(start, start + n),
        )

    def transcript_bounds(self, t: int) -> np.ndarray:
        """A box that surely holds tile ``t``'s transcripts: the tile plus the maximal radius."""
        x0, x1, y0, y1 = self.tile_extent(t)
        r = _RADIUS * self.cell_spacing + _JITTER * self.cell_spacing
        return np.array([x0 - r, y0 - r, 0.0, x1 + r, y1 + r, 10.0])

    # --- rasters -------------------------------------------------------------------------
    @property
    def raster_shape(self) -> tuple[int, int]:
        return (math.ceil(self.height / self.pixel_size), math.ceil(self.width / self.pixel_size))

    def _cells_near(self, y0: float, y1: float, x0: float, x1: float) -> Cells:
        s = self.cell_spacing
        block = np.array(
            [
                max(0, int(x0 // s) - 1),
                min(self.nx, int(x1 // s) + 2),
                max(0, int(y0 // s) - 1),
                min(self.ny, int(y1 // s) + 2),
            ]
        )
        return self.cells(block)

    def _chunk_disks(self, block_info: dict, which: str) -> tuple[np.ndarray, Cells]:
        (i0, i1), (j0, j1) = block_info[None]["array-location"][-2:]
        ps = self.pixel_size
        c = self._cells_near(i0 * ps, i1 * ps, j0 * ps, j1 * ps)
        r = c.r_nucleus if which == "nucleus" else c.r_in
        lab = rasterize_disks((i1 - i0, j1 - j0), j0 * ps, i0 * ps, ps, c.x, c.y, r, c.cell_id + 1)
        return lab, c

    def labels_chunk(self, block_info: dict | None = None) -> np.ndarray:
        lab, _ = self._chunk_disks(block_info, "nucleus")
        return lab

    def image_chunk(self, block_info: dict | None = None) -> np.ndarray:
        nuc, _ = self._chunk_disks(block_info, "nucleus")
        cell, _ = self._chunk_disks(block_info, "cell")
        loc = block_info[None]["chunk-location"]
        rng = np.random.default_rng([self.seed, 202, *loc])
        h, w = nuc.shape
        dapi = 300 + rng.normal(0, 40, (h, w)) + np.where(nuc > 0, 2600.0, 0.0)
        polyt = (
            250
            + rng.normal(0, 40, (h, w))
            + np.where(cell > 0, 900.0, 0.0)
            + np.where(nuc > 0, 300.0, 0.0)
        )
        return np.clip(np.stack([dapi, polyt]), 0, 65535).astype(np.uint16)

    def _pyramid_factors(self) -> list[int]:
        factors, size = [], max(self.raster_shape)
        while size > 2 * 512 and len(factors) < 4:
            factors.append(2)
            size //= 2
        return factors

    # --- elements ------------------------------------------------------------------------
    def points_element(self) -> Points:
        meta = self.transcripts_meta()
        ddf = dd.from_map(
            self.transcripts,
            list(range(len(self.tiles))),
            meta=meta,
            divisions=(
                *tuple(int(v) for v in self.tile_transcript_offsets[:-1]),
                int(self.tile_transcript_offsets[-1]) - 1,
            )
            if self.n_transcripts and np.all(self.tile_transcripts > 0)
            else None,
            enforce_metadata=False,
            label="xenium-transcripts",
        )
        bounds = np.vstack([self.transcript_bounds(t) for t in range(len(self.tiles))])
        return Points(
            ddf,
            feature_key="gene",
            instance_key="cell_id",
            transforms={"global": Identity()},
            partition_bounds=bounds,
        )

    def transcripts_meta(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "x": np.empty(0, np.float32),
                "y": np.empty(0, np.float32),
                "z": np.empty(0, np.float32),
                "gene": pd.Categorical.from_codes(np.empty(0, np.int64), categories=self.genes),
                "cell_id": np.empty(0, np.int64),
                "qv": np.empty(0, np.float32),
            },
            index=pd.RangeIndex(0, 0),
        )

    def _shapes_element(self, fn: str) -> Shapes:
        meta = gpd.GeoDataFrame(
            {"geometry": gpd.GeoSeries([], crs=None)},
            index=pd.Index(np.empty(0, np.int64), name="cell_id"),
        )
        ddf = dd.from_map(
            getattr(self, fn),
            list(range(len(self.tiles))),
            meta=meta,  # a tile's ids are contiguous but in Z-order: no known divisions
            enforce_metadata=False,
            label=f"xenium-{fn}",
        )
        r = (_RADIUS + _JITTER) * self.cell_spacing
        bounds = []
        for t in range(len(self.tiles)):
            x0, x1, y0, y1 = self.tile_extent(t)
            bounds.append([x0 - r, y0 - r, x1 + r, y1 + r])
        return Shapes(ddf, transforms={"global": Identity()}, partition_bounds=bounds)

    def spots_element(self) -> Shapes:
        pitch, radius = 100.0, 27.5
        dy = pitch * math.sqrt(3) / 2
        rows = max(1, int((self.height - 2 * radius) // dy) + 1)
        xs, ys = [], []
        for j in range(rows):
            x = np.arange(radius + (j % 2) * pitch / 2, self.width - radius + 1e-9, pitch)
            xs.append(x)
            ys.append(np.full(x.size, radius + j * dy))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if x.size == 0:  # a tissue smaller than one spot: one spot in the middle
            x, y = np.array([self.width / 2]), np.array([self.height / 2])
        idx = pd.Index([f"spot_{k:06d}" for k in range(x.size)], name="spot_id")
        gdf = gpd.GeoDataFrame(
            {"radius": np.full(x.size, radius)}, geometry=shapely.points(x, y), index=idx
        )
        return Shapes(gdf, transforms={"global": Identity()}, spatial_sort=False)

    def raster_elements(self) -> tuple[Image, Labels]:
        shape = self.raster_shape
        ch = self.raster_chunk
        lab = da.map_blocks(
            self.labels_chunk,
            chunks=(_chunks(shape[0], ch), _chunks(shape[1], ch)),
            dtype=np.uint32,
            name=f"xenium-nuclei-{self._token()}",
        )
        img = da.map_blocks(
            self.image_chunk,
            chunks=((2,), _chunks(shape[0], ch), _chunks(shape[1], ch)),
            dtype=np.uint16,
            name=f"xenium-morphology-{self._token()}",
        )
        to_um = {"global": Scale([self.pixel_size, self.pixel_size], ("x", "y"))}
        factors = self._pyramid_factors()
        image = Image(
            img,
            dims=("c", "y", "x"),
            channel_names=["DAPI", "PolyT"],
            scale_factors=factors,
            transforms=to_um,
        )
        labels = Labels(lab, dims=("y", "x"), scale_factors=factors, transforms=dict(to_um))
        return image, labels

    def _token(self) -> str:
        from dask.base import tokenize

        return tokenize(self)

    def table(self) -> Table:
        ids, types, xs, ys = [], [], [], []
        for t in range(len(self.tiles)):
            p = self._grid(self.tiles[t])
            p = p[p < self.n_cells]
            x, y = self._centres(p)
            ids.append(self.tile_cell_offsets[t] + np.arange(len(p)))
            types.append(self._types(p, x, y))
            xs.append(x)
            ys.append(y)
        cell_id = np.concatenate(ids)
        obs = pd.DataFrame(
            {
                "cell_id": cell_id,
                "region": pd.Categorical.from_codes(np.zeros(len(cell_id), np.int8), ["cells"]),
                "cell_type": pd.Categorical.from_codes(
                    np.concatenate(types), categories=list(self.cell_types)
                ),
            },
            index=pd.Index(cell_id.astype(str)),
        )
        adata = ad.AnnData(obs=obs, obsm={"spatial": np.c_[np.concatenate(xs), np.concatenate(ys)]})
        return Table(adata, region="cells", region_key="region", instance_key="cell_id")

    def dataset(self) -> Dataset:
        image, labels = self.raster_elements()
        return Dataset(
            images={"morphology": image},
            labels={"nuclei": labels},
            points={"transcripts": self.points_element()},
            shapes={
                "cells": self._shapes_element("cell_polygons"),
                "nucleus_boundaries": self._shapes_element("nuclei_polygons"),
                "spots": self.spots_element(),
            },
            tables={"table": self.table()},
        )


def _chunks(n: int, c: int) -> tuple[int, ...]:
    return (c,) * (n // c) + ((n % c,) if n % c else ())


def xenium_like(
    n_transcripts: int, n_cells: int, *, n_genes: int = 300, seed: int = 0, **options: object
) -> Dataset:
    """A deterministic synthetic Xenium-like Dataset (see the module docstring).

    ``options`` are the other fields of :class:`XeniumLike` (``cell_spacing``, ``pixel_size``,
    ``transcripts_per_partition``, ``raster_chunk``). Nothing is computed: transcripts,
    polygons and pixels are generated per partition or chunk when computed."""
    layout = XeniumLike(
        int(n_transcripts), int(n_cells), n_genes=int(n_genes), seed=int(seed), **options
    )  # type: ignore[arg-type]
    return layout.dataset()
