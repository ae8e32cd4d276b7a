"""Image and Labels: multiscale rasters as an xarray DataTree of dask arrays.

The tree has one child per scale, ``scale0, scale1, ...`` (full resolution first), named as in
spatialdata's in-memory trees so that spatialdata code (``img["scale0"]``) works unchanged; on
disk the arrays stay ``s0, s1, ...`` (OME-Zarr paths, see FORMAT.md). A tree given with other
child names (the old in-memory ``s0, s1, ...``, or anything ending in the level number) is read
by that number and renamed. Each child holds one variable ``image`` with dims ``c, (z), y, x``
(Image) or ``(z), y, x`` (Labels). Channel names of an Image are the coordinate of its ``c``
dimension. The element's transforms map scale 0's pixel space (pixel i covers [i, i + 1)) to
coordinate systems; scale k is derived by ``Scale(shape0 / shapek)`` first, as SpatialData
stores it.

``el["scale0"]`` (and ``el["s0"]``, ``el[0]``) returns the child node of the tree, as indexing
spatialdata's DataTree does; :meth:`RasterElement.scale` returns the DataArray.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import xarray as xr

from spatialflow.elements.base import Element
from spatialflow.transforms.base import Scale, Transform

__all__ = ["Image", "Labels", "RasterElement", "scale_key"]

VAR = "image"
SCALE_PREFIX = "scale"


def scale_key(k: int) -> str:
    """The in-memory name of scale ``k``: ``scale0, scale1, ...`` (spatialdata's)."""
    return f"{SCALE_PREFIX}{k}"


class RasterElement(Element):
    """A multiscale raster."""

    allowed_dims: ClassVar[tuple[tuple[str, ...], ...]]

    def __init__(
        self,
        data: Any,
        *,
        dims: Sequence[str] | None = None,
        transforms: Mapping[str, Transform] | None = None,
        name: str | None = None,
        scale_factors: Sequence[int] | None = None,
        chunks: Any = None,
        channel_names: Sequence[Any] | None = None,
    ) -> None:
        super().__init__(transforms=transforms, name=name)
        levels = self._levels(data, dims, chunks)
        if channel_names is not None:
            levels = [lv.assign_coords(c=self._check_channels(channel_names, lv)) for lv in levels]
        if scale_factors:
            if len(levels) > 1:
                raise self.error("scale_factors", "given for data that is already multiscale")
            levels = self._pyramid(levels[0], scale_factors)
        self._validate(levels)
        self.data: xr.DataTree = xr.DataTree.from_dict(
            {scale_key(k): xr.Dataset({VAR: lv}) for k, lv in enumerate(levels)}
        )

    # --- construction ----------------------------------------------------------------
    def _levels(self, data: Any, dims: Sequence[str] | None, chunks: Any) -> list[xr.DataArray]:
        if isinstance(data, xr.DataTree):
            keys = sorted(data.children, key=_scale_index)
            if not keys:
                raise self.error("data", "the DataTree has no scale children (scale0, scale1, ...)")
            levels = []
            for k in keys:
                node = data[k]
                var = VAR if VAR in node.data_vars else next(iter(node.data_vars), None)
                if var is None:
                    raise self.error("data", f"scale {k!r} holds no array")
                levels.append(node.to_dataset()[var])
            return [self._as_dask(lv, chunks) for lv in levels]
        if isinstance(data, xr.DataArray):
            if dims is not None and tuple(data.dims) != tuple(dims):
                data = data.rename(dict(zip(data.dims, dims, strict=False)))
            return [self._as_dask(data, chunks)]
        if isinstance(data, np.ndarray | da.Array):
            if dims is None:
                dims = self._default_dims(data.ndim)
            if len(dims) != data.ndim:
                raise self.error(
                    "dims", f"{tuple(dims)} do not match an array with {data.ndim} dims"
                )
            return [self._as_dask(xr.DataArray(data, dims=tuple(dims)), chunks)]
        raise self.error(
            "data",
            f"expected a DataTree, DataArray, dask or numpy array, got {type(data).__name__}",
        )

    def _default_dims(self, ndim: int) -> tuple[str, ...]:
        for d in self.allowed_dims:
            if len(d) == ndim:
                return d
        raise self.error("dims", f"an array with {ndim} dims fits none of {self.allowed_dims}")

    @staticmethod
    def _as_dask(arr: xr.DataArray, chunks: Any) -> xr.DataArray:
        if not isinstance(arr.data, da.Array):
            arr = arr.copy(data=da.from_array(np.asarray(arr.data), chunks=chunks or "auto"))
        elif chunks is not None:
            arr = arr.chunk(chunks)
        return arr.drop_vars([c for c in arr.coords if c not in arr.dims])

    def _check_channels(self, names: Sequence[Any], lv: xr.DataArray) -> list[Any]:
        names = list(names)
        if "c" not in lv.dims:
            raise self.error("channel_names", "only images (with a 'c' dim) have channel names")
        if len(names) != lv.sizes["c"]:
            raise self.error("channel_names", f"{len(names)} names for {lv.sizes['c']} channels")
        if len(set(map(str, names))) != len(names):
            raise self.error("channel_names", f"names must be unique, got {names}")
        return names

    def _pyramid(self, base: xr.DataArray, factors: Sequence[int]) -> list[xr.DataArray]:
        levels = [base]
        for f in factors:
            if not isinstance(f, int | np.integer) or f < 2:
                raise self.error(
                    "scale_factors", f"factors must be integers >= 2, got {list(factors)}"
                )
            prev = levels[-1]
            spatial = {d: int(f) for d in prev.dims if d != "c"}
            if any(prev.sizes[d] < f for d in spatial):
                raise self.error(
                    "scale_factors",
                    f"scale {len(levels)} would have a dim smaller "
                    f"than 1 (shape {dict(prev.sizes)}, factor {f})",
                )
            levels.append(self.downsample(prev, spatial))
        return levels

    @abstractmethod
    def downsample(self, arr: xr.DataArray, factors: dict[str, int]) -> xr.DataArray:
        """The next scale: ``arr`` reduced by ``factors`` per spatial dim."""

    def _validate(self, levels: list[xr.DataArray]) -> None:
        dims0 = tuple(levels[0].dims)
        if dims0 not in self.allowed_dims:
            raise self.error("dims", f"{dims0} is not one of {self.allowed_dims}")
        for k, lv in enumerate(levels):
            if tuple(lv.dims) != dims0:
                raise self.error("dims", f"scale{k} has dims {tuple(lv.dims)}, scale0 has {dims0}")
            self._check_dtype(lv.dtype)
            if any(n == 0 for n in lv.shape):
                raise self.error("data", f"scale{k} has an empty dimension {dict(lv.sizes)}")
            if k and any(lv.sizes[d] > levels[k - 1].sizes[d] for d in dims0 if d != "c"):
                raise self.error("data", f"scale{k} is larger than scale{k - 1}")

    @abstractmethod
    def _check_dtype(self, dtype: np.dtype) -> None:
        """Raise a ValidationError if ``dtype`` is not allowed."""

    # --- access ----------------------------------------------------------------------
    @property
    def n_scales(self) -> int:
        return len(self.data.children)

    def scale(self, k: int = 0) -> xr.DataArray:
        """The DataArray of scale ``k`` (0 = full resolution)."""
        return self.data[scale_key(k)].to_dataset()[VAR]

    def __getitem__(self, key: str | int) -> xr.DataTree:
        """The tree node of one scale: ``el["scale0"]`` as in spatialdata (also ``"s0"``, 0)."""
        k = key if isinstance(key, int) else _parse_scale_key(key)
        if k is None or not 0 <= k < self.n_scales:
            raise KeyError(
                f"{self.label}: no scale {key!r}; it has {list(self.data.children)} "
                f"(old names s0, s1, ... and integers work too)"
            )
        return self.data[scale_key(k)]

    def __contains__(self, key: object) -> bool:
        k = key if isinstance(key, int) else _parse_scale_key(key)
        return k is not None and 0 <= k < self.n_scales

    def __iter__(self) -> Iterator[str]:
        """The scale names, ``scale0, scale1, ...`` (as iterating the DataTree)."""
        return iter(list(self.data.children))

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.scale(0).dims)

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(d for d in self.dims if d != "c")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.scale(0).shape)

    @property
    def dtype(self) -> np.dtype:
        return self.scale(0).dtype

    def scale_transform(self, k: int) -> Scale:
        """Pixel space of scale k -> pixel space of scale 0."""
        s0, sk = self.scale(0), self.scale(k)
        return Scale([s0.sizes[a] / sk.sizes[a] for a in self.axes], self.axes)

    def summary(self) -> str:
        shape = "x".join(f"{self.scale(0).sizes[d]}{d}" for d in self.dims)
        return f"{shape} {self.dtype}, {self.n_scales} scale(s)"


def _scale_index(key: str) -> int:
    digits = "".join(ch for ch in key if ch.isdigit())
    return int(digits) if digits else 0


def _parse_scale_key(key: object) -> int | None:
    """``"scale3"`` or the old ``"s3"`` -> 3; anything else -> None."""
    if not isinstance(key, str):
        return None
    for prefix in (SCALE_PREFIX, "s"):
        rest = key[len(prefix) :]
        if key.startswith(prefix) and rest.isdigit():
            return int(rest)
    return None


class Image(RasterElement):
    """A (multiscale) image with dims ``c, y, x`` or ``c, z, y, x``."""

    kind = "images"
    allowed_dims = (("c", "y", "x"), ("c", "z", "y", "x"))

    def _check_dtype(self, dtype: np.dtype) -> None:
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise self.error("dtype", f"{dtype} is not numeric")

    def downsample(self, arr: xr.DataArray, factors: dict[str, int]) -> xr.DataArray:
        out = arr.coarsen(factors, boundary="trim").mean()
        if np.issubdtype(arr.dtype, np.integer):
            out = out.round()
        return out.astype(arr.dtype)

    @property
    def channel_names(self) -> list[Any]:
        lv = self.scale(0)
        if "c" in lv.coords:
            return list(lv.coords["c"].values)
        return list(range(lv.sizes["c"]))


class Labels(RasterElement):
    """A (multiscale) segmentation mask with dims ``y, x`` or ``z, y, x``, integer ids, 0 = none."""

    kind = "labels"
    allowed_dims = (("y", "x"), ("z", "y", "x"))

    def _check_dtype(self, dtype: np.dtype) -> None:
        if not np.issubdtype(dtype, np.integer):
            raise self.error("dtype", f"labels must be integers, got {dtype}")

    def downsample(self, arr: xr.DataArray, factors: dict[str, int]) -> xr.DataArray:
        # nearest: keep every f-th pixel (label ids must not be averaged)
        return arr.isel({d: slice(f // 2, None, f) for d, f in factors.items()}).isel(
            {d: slice(0, arr.sizes[d] // f) for d, f in factors.items()}
        )
