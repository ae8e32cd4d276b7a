"""A synthetic tiled mosaic for stitching: overlapping tiles cut from one tissue-like image at
known sub-pixel positions, placed by noisy stage translations.

Design decisions:

* The "tissue" is a *function* of continuous world coordinates, not a stored image, so a tile at
  any sub-pixel position is sampled exactly (no interpolation enters the ground truth) and every
  tile is generated lazily and independently (the 8x8 x 2048^2 benchmark never holds the whole
  image). Structure at several scales: nuclei (Gaussian blobs, sigma 2-3.2 px, on a jittered
  lattice), larger fainter cell bodies (sigma 4-7 px), both modulated by a low-frequency tissue
  density (a few random sinusoids, wavelengths 150-600 px) that also adds a smooth background.
  Blob parameters come from a counter-based hash of (lattice row, lattice column, seed), so a
  tile needs no shared state beyond a few numbers.
* Channel 0 shows nuclei, channel 1 cell bodies (further channels alternate with other weights).
* Tile ``tile_rRR_cCC`` (row, column, zero-padded to 2 digits) has pixel (0, 0) at its true
  position ``truth.positions[name]`` (world (y, x) of the pixel's corner; pixel i covers
  [i, i + 1) as everywhere in spatialflow); its transform to ``"global"`` is a Translation by
  the *stage* position ``truth.stage[name]`` = true position + uniform noise in
  [-stage_noise, stage_noise] per axis.
* ``empty_tiles`` tiles (chosen by the seed, never a corner) show no tissue: the tissue density
  is zero inside their true box, so their neighbours see only background there too.
* The truth is returned as a second value (``ds, truth = tiled_mosaic(...)``): spatialflow's
  Dataset has no free-form attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask.array as da
import numpy as np
from dask.base import tokenize

from spatialflow.dataset import Dataset
from spatialflow.elements.raster import Image
from spatialflow.errors import ValidationError
from spatialflow.transforms.base import Translation

__all__ = ["MosaicTruth", "tile_name", "tiled_mosaic"]

_LAYERS = (  # (lattice spacing px, sigma min, sigma max, presence probability)
    (10.0, 2.0, 3.2, 0.8),
    (22.0, 4.0, 7.0, 0.7),
)
_CHANNEL_WEIGHTS = ((1.0, 0.15, 0.25), (0.2, 1.0, 0.4))  # (nuclei, cells, density) per channel
_PEAK = 12000.0
_BACKGROUND = 300.0


def tile_name(row: int, col: int) -> str:
    return f"tile_r{row:02d}_c{col:02d}"


def _hash_uniform(i: np.ndarray, j: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) floats from (i, j, k, seed) by a splitmix64-style integer hash."""
    with np.errstate(over="ignore"):
        x = (
            i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ j.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ np.uint64((k * 0x165667B19E3779F9 + seed * 0x27D4EB2F165667C5) % 2**64)
        )
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class MosaicTruth:
    """What the mosaic was made from: true and stage positions (world (y, x) of each tile's
    pixel-corner origin), the empty tiles, and the noise-free tissue as a function."""

    tile_shape: tuple[int, int]
    positions: dict[str, np.ndarray]
    stage: dict[str, np.ndarray]
    empty: list[str]
    channels: int
    seed: int
    noise: float
    waves: np.ndarray = field(repr=False)  # (K, 4): ky, kx, phase, amplitude
    empty_boxes: np.ndarray = field(repr=False)  # (E, 4): y0, x0, y1, x1

    @property
    def origin(self) -> np.ndarray:
        """The integer world (y, x) corner of the mosaic's bounding grid."""
        return np.floor(np.min(np.stack(list(self.positions.values())), axis=0))

    @property
    def shape(self) -> tuple[int, int]:
        """The size of the bounding grid that starts at :attr:`origin`."""
        hi = np.max(np.stack(list(self.positions.values())), axis=0) + self.tile_shape
        return tuple(int(v) for v in np.ceil(hi - self.origin))  # type: ignore[return-value]

    def _inside_empty(self, y: np.ndarray, x: np.ndarray, margin: float = 0.0) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=bool)
        for y0, x0, y1, x1 in self.empty_boxes:
            out |= (y >= y0 - margin) & (y < y1 + margin) & (x >= x0 - margin) & (x < x1 + margin)
        return out

    def _density(self, y: np.ndarray, x: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Tissue density in [0, 1] at world points (broadcasting y, x); 0 inside the empty
        tiles' boxes grown by ``margin``."""
        acc = np.zeros(np.broadcast_shapes(y.shape, x.shape))
        for ky, kx, ph, amp in self.waves:
            acc = acc + amp * np.sin(ky * y + kx * x + ph)
        d = np.clip(0.5 + acc, 0.0, 1.0)
        return np.where(self._inside_empty(y, x, margin), 0.0, d)

    def _layer(self, layer: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """One blob layer sampled at pixel centres ``ys`` x ``xs`` (1D world coordinates)."""
        s, smin, smax, p = _LAYERS[layer]
        reach = 6.5 * smax  # exp(-21): what lies beyond stays below the uint16 rounding
        out = np.zeros((ys.size, xs.size))
        i0, i1 = int(np.floor((ys[0] - reach) / s)) - 1, int(np.ceil((ys[-1] + reach) / s)) + 1
        j0, j1 = int(np.floor((xs[0] - reach) / s)) - 1, int(np.ceil((xs[-1] + reach) / s)) + 1
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
        k = 10 * layer
        cy = (ii + _hash_uniform(ii, jj, k, self.seed)) * s
        cx = (jj + _hash_uniform(ii, jj, k + 1, self.seed)) * s
        sig = smin + (smax - smin) * _hash_uniform(ii, jj, k + 2, self.seed)
        amp = 0.5 + 0.5 * _hash_uniform(ii, jj, k + 3, self.seed)
        keep = _hash_uniform(ii, jj, k + 4, self.seed) < p
        amp = amp * keep * self._density(cy, cx, margin=reach)  # no blob reaches into empties
        for r in range(ii.shape[0]):  # one lattice row at a time: its blobs touch few rows
            on = amp[r] > 0
            if not np.any(on):
                continue
            cyr, cxr, sr, ar = cy[r, on], cx[r, on], sig[r, on], amp[r, on]
            r0 = int(np.searchsorted(ys, cyr.min() - reach))
            r1 = int(np.searchsorted(ys, cyr.max() + reach, side="right"))
            if r1 <= r0:
                continue
            gy = np.exp(-0.5 * ((ys[None, r0:r1] - cyr[:, None]) / sr[:, None]) ** 2)
            gx = np.exp(-0.5 * ((xs[None, :] - cxr[:, None]) / sr[:, None]) ** 2)
            out[r0:r1] += (gy * ar[:, None]).T @ gx
        return out

    def render(self, y0: float, x0: float, shape: tuple[int, int]) -> np.ndarray:
        """The noise-free image (channels, y, x) whose pixel (0, 0) has its corner at world
        (y0, x0), as float64."""
        ys = y0 + np.arange(shape[0]) + 0.5
        xs = x0 + np.arange(shape[1]) + 0.5
        nuclei = self._layer(0, ys, xs)
        cells = self._layer(1, ys, xs)
        dens = self._density(ys[:, None], xs[None, :])
        out = np.empty((self.channels, *shape))
        for c in range(self.channels):
            wn, wc, wd = _CHANNEL_WEIGHTS[c % 2]
            if c >= 2:
                wn, wc = wn * (0.5 + 0.1 * c), wc * (1.2 - 0.1 * c)
            out[c] = _BACKGROUND + _PEAK * (wn * nuclei + wc * cells + wd * dens)
        return out

    def image(self) -> np.ndarray:
        """The noise-free mosaic on the grid starting at :attr:`origin` (uint16, c, y, x)."""
        y0, x0 = self.origin
        return _to_uint16(self.render(float(y0), float(x0), self.shape))

    def tile(
        self,
        name: str,
        with_noise: bool = True,
        start: tuple[int, int] = (0, 0),
        shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Tile ``name`` (or its region of ``shape`` from index ``start``) as uint16 (c, y, x),
        with this mosaic's image noise unless told not (the noise of a region depends on the
        region, so a tile is generated chunk by chunk consistently)."""
        shape = self.tile_shape if shape is None else shape
        y0, x0 = self.positions[name]
        img = self.render(float(y0) + start[0], float(x0) + start[1], shape)
        if with_noise and self.noise > 0:
            idx = sorted(self.positions).index(name)
            rng = np.random.default_rng([self.seed, 7, idx, start[0], start[1]])
            img = img + rng.normal(0.0, self.noise, img.shape)
        return _to_uint16(img)


class _TileSource:
    """One tile's generator as a Dask task argument: an opaque object with a cheap token (the
    truth itself holds every tile's position; letting Dask traverse and hash it for every tile
    made building a 32x32 mosaic quadratic)."""

    def __init__(self, truth: MosaicTruth, name: str, token: str) -> None:
        self.truth, self.name, self.token = truth, name, token

    def __dask_tokenize__(self) -> str:
        return self.token

    def __call__(self, block_info: dict | None = None) -> np.ndarray:
        info = block_info[None]  # type: ignore[index]
        (_, _), (y0, y1), (x0, x1) = info["array-location"]
        return self.truth.tile(self.name, start=(y0, x0), shape=(y1 - y0, x1 - x0))


def _to_uint16(img: np.ndarray) -> np.ndarray:
    # quantize first: a pixel rendered as part of two tiles (or of the whole image) may differ
    # in the last bits (another summation order), which must not flip the integer rounding
    return np.clip(np.round(np.round(img, 3)), 0, 65535).astype(np.uint16)


def tiled_mosaic(
    n_rows: int,
    n_cols: int,
    tile_shape: int | tuple[int, int],
    *,
    overlap: float = 0.15,
    stage_noise: float = 10.0,
    channels: int = 2,
    seed: int = 0,
    empty_tiles: int = 0,
    noise: float = 150.0,
    subpixel: bool = True,
    chunks: int | tuple[int, int] | None = None,
    scale_factors: list[int] | None = None,
) -> tuple[Dataset, MosaicTruth]:
    """``(ds, truth)``: a Dataset of ``n_rows x n_cols`` uint16 tiles (see the module doc).

    ``overlap`` is the nominal fraction of a tile shared with each neighbour; true positions
    add a jitter of up to +-2 px (sub-pixel unless ``subpixel=False``, which rounds them to
    integers); ``noise`` is the standard deviation of the Gaussian image noise (0: none);
    ``chunks`` the tiles' spatial chunk size (default: one chunk per tile; each chunk is
    generated on its own, with its own noise); ``scale_factors``
    gives the tiles a pyramid."""
    if not (isinstance(n_rows, int) and isinstance(n_cols, int) and n_rows >= 1 and n_cols >= 1):
        raise ValidationError(
            f"tiled_mosaic: n_rows and n_cols must be positive integers, got {n_rows}, {n_cols}"
        )
    shape = (tile_shape, tile_shape) if isinstance(tile_shape, int) else tuple(tile_shape)
    if len(shape) != 2 or min(shape) < 16:
        raise ValidationError(
            f"tiled_mosaic: tile_shape must be (y, x) of at least 16 px, got {tile_shape!r}"
        )
    if not 0.02 <= overlap < 0.5:
        raise ValidationError(f"tiled_mosaic: overlap must be in [0.02, 0.5), got {overlap}")
    if channels < 1:
        raise ValidationError(f"tiled_mosaic: channels must be at least 1, got {channels}")
    inner = [
        (r, c)
        for r in range(n_rows)
        for c in range(n_cols)
        if (r, c) not in {(0, 0), (0, n_cols - 1), (n_rows - 1, 0), (n_rows - 1, n_cols - 1)}
    ]
    if not 0 <= empty_tiles <= len(inner):
        raise ValidationError(
            f"tiled_mosaic: empty_tiles must be in [0, {len(inner)}], got {empty_tiles}"
        )
    rng = np.random.default_rng(seed)
    step = np.array(shape, dtype=np.float64) * (1.0 - overlap)
    positions, stage = {}, {}
    for r in range(n_rows):
        for c in range(n_cols):
            p = np.array([r, c]) * step + rng.uniform(-2.0, 2.0, 2) + 40.0
            if not subpixel:
                p = np.round(p)
            positions[tile_name(r, c)] = p
            stage[tile_name(r, c)] = p + rng.uniform(-stage_noise, stage_noise, 2)
    chosen = rng.choice(len(inner), size=empty_tiles, replace=False) if empty_tiles else []
    empty = sorted(tile_name(*inner[k]) for k in chosen)
    boxes = np.array([[*positions[n], *(positions[n] + shape)] for n in empty]).reshape(-1, 4)
    k = 6
    wavelength = rng.uniform(150.0, 600.0, k)
    angle = rng.uniform(0, np.pi, k)
    waves = np.stack(
        [
            2 * np.pi / wavelength * np.sin(angle),
            2 * np.pi / wavelength * np.cos(angle),
            rng.uniform(0, 2 * np.pi, k),
            np.full(k, 0.45 / np.sqrt(k / 2)),
        ],
        axis=1,
    )
    truth = MosaicTruth(shape, positions, stage, empty, channels, seed, float(noise), waves, boxes)
    ch = (
        shape
        if chunks is None
        else ((chunks, chunks) if isinstance(chunks, int) else tuple(chunks))
    )
    # the token of everything a tile depends on, hashed once
    base = tokenize(shape, n_rows, n_cols, overlap, stage_noise, channels, seed, empty_tiles)
    base = tokenize(base, noise, subpixel, ch)
    images = {}
    for name in sorted(positions):
        token = f"{base}-{name}"
        arr = da.map_blocks(
            _TileSource(truth, name, token),
            name=f"tiled-mosaic-{token}",
            dtype=np.uint16,
            chunks=da.core.normalize_chunks((channels, *ch), (channels, *shape)),
            meta=np.empty((0, 0, 0), dtype=np.uint16),
        )
        images[name] = Image(
            arr,
            dims=("c", "y", "x"),
            transforms={"global": Translation(stage[name][::-1], axes=("x", "y"))},
            scale_factors=scale_factors,
            channel_names=[f"ch{c}" for c in range(channels)],
        )
    return Dataset(images=images), truth
