"""In-memory conversion between a spatialflow Dataset and a ``spatialdata.SpatialData``.

spatialdata is optional (a test extra): these functions import it when called. Transforms go
through the spatialdata JSON dialect both ways (io/sdtransforms.py, the same code that reads
and writes stores), so what converts in memory also converts on disk. Row order, index,
dtypes, categories, channel names, feature/instance keys and table links are kept: points and
shapes keep their partitioning (no spatial re-sort).

Decisions:
- Rasters are handed to spatialdata built exactly as spatialdata's own zarr reader builds
  them (``dask_arrays_to_datatree`` + ``compute_coordinates``), so ``to_spatialdata()`` of a
  Dataset read from a store equals ``spatialdata.read_zarr`` of that store.
- spatialdata holds the feature column of points as an *unknown* categorical after reading
  a store; spatialflow needs it known. The categories are the union, in order of first
  appearance, of every partition's categories, which is also what computing the spatialdata
  frame yields (one pass over that one column).
- Points stay lazy both ways; shapes are small enough that spatialdata holds them as geopandas
  frames (computed); tables are AnnData both ways.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement, scale_key
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import SpatialFlowError
from spatialflow.io.native import exact_dtypes
from spatialflow.io.sdtransforms import read_transform, write_transform
from spatialflow.transforms.base import Transform

__all__ = ["from_spatialdata", "to_spatialdata"]


def _sd() -> Any:
    try:
        import spatialdata
    except ImportError as e:  # pragma: no cover - the test extra always has it
        raise SpatialFlowError(
            "this needs the 'spatialdata' package: pip install "
            "'spatialflow[test]' or spatialdata==0.8.*"
        ) from e
    return spatialdata


# --- transforms ----------------------------------------------------------------------------
def _transforms_from_sd(obj: Any, axes: tuple[str, ...], where: str) -> dict[str, Transform]:
    from spatialdata.transformations import get_transformation
    from spatialdata.transformations.ngff.ngff_transformations import NgffBaseTransformation

    out = {}
    for cs, t in get_transformation(obj, get_all=True).items():
        ngff = t.to_ngff(input_axes=axes, output_axes=axes, output_coordinate_system_name=cs)
        d = ngff.to_dict() if isinstance(ngff, NgffBaseTransformation) else ngff
        out[cs] = read_transform(d, where)[1]
    return out


def _transforms_to_sd(transforms: dict[str, Transform], axes: tuple[str, ...]) -> dict[str, Any]:
    from spatialdata.transformations import BaseTransformation
    from spatialdata.transformations.ngff.ngff_transformations import NgffBaseTransformation

    return {
        cs: BaseTransformation.from_ngff(
            NgffBaseTransformation.from_dict(write_transform(t, axes, cs))
        )
        for cs, t in transforms.items()
    }


# --- spatialdata -> spatialflow ------------------------------------------------------------
def from_spatialdata(sdata: Any) -> Dataset:
    """The Dataset equivalent of a ``spatialdata.SpatialData`` object."""
    _sd()
    ds = Dataset()
    for name, img in sdata.images.items():
        ds.images[name] = _raster_from_sd(img, Image, f"images/{name}")
    for name, lab in sdata.labels.items():
        ds.labels[name] = _raster_from_sd(lab, Labels, f"labels/{name}")
    for name, pts in sdata.points.items():
        ds.points[name] = _points_from_sd(pts, f"points/{name}")
    for name, shp in sdata.shapes.items():
        ds.shapes[name] = _shapes_from_sd(shp, f"shapes/{name}")
    for name, table in sdata.tables.items():
        ds.tables[name] = Table(table.copy())
    ds.validate_links()
    return ds


def _partition_categories(part: pd.DataFrame, column: str) -> list[Any]:
    return list(part[column].cat.categories)


def known_categories(ddf: dd.DataFrame, column: str) -> list[Any]:
    """The union, in order of first appearance, of the categories of every partition."""
    parts = ddf[[column]].to_delayed()
    seen: dict[Any, None] = {}
    for cats in dask.compute(*[dask.delayed(_partition_categories)(p, column) for p in parts]):
        seen.update(dict.fromkeys(cats))
    return list(seen)


def fresh_frame(ddf: dd.DataFrame) -> dd.DataFrame:
    """A new collection over the same data without spatialdata's ``attrs`` (its transforms and
    keys), which spatialdata's accessor copies onto every derived collection."""
    out = ddf[list(ddf.columns)]
    if out is ddf:  # pragma: no cover - dask always builds a new collection
        raise SpatialFlowError("cannot detach the points from spatialdata's attrs")
    attrs = getattr(out, "attrs", None)
    if attrs is not None and attrs is not getattr(ddf, "attrs", None):
        for key in ("transform", "spatialdata_attrs"):
            attrs.pop(key, None)
    return out


def _points_from_sd(pts: Any, where: str) -> Points:
    attrs = dict(pts.attrs.get("spatialdata_attrs", {}))
    axes = ("x", "y", "z") if "z" in pts.columns else ("x", "y")
    feature = attrs.get("feature_key")
    data = fresh_frame(pts)
    if feature is not None and not data[feature].cat.known:
        cats = known_categories(pts, feature)
        data = data.assign(**{feature: data[feature].cat.set_categories(cats)})
    return Points(
        data,
        feature_key=feature,
        instance_key=attrs.get("instance_key"),
        transforms=_transforms_from_sd(pts, axes, where),
    )


def _shapes_from_sd(shp: Any, where: str) -> Shapes:
    import dask_geopandas

    gdf = shp.copy()
    gdf.attrs = {}
    with exact_dtypes():
        data = dask_geopandas.from_geopandas(gdf, npartitions=1, sort=False)
    return Shapes(
        data,
        transforms=_transforms_from_sd(shp, ("x", "y"), where),
    )


def _raster_from_sd(obj: Any, cls: type[RasterElement], where: str) -> RasterElement:
    import xarray as xr

    if isinstance(obj, xr.DataTree):
        keys = sorted(obj.children, key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
        levels = [next(iter(obj[k].to_dataset().data_vars.values())) for k in keys]
    else:
        levels = [obj]
    dims = tuple(levels[0].dims)
    spatial = tuple(d for d in dims if d != "c")
    tree = xr.DataTree.from_dict(
        {
            scale_key(k): xr.Dataset({"image": xr.DataArray(lv.data, dims=dims)})
            for k, lv in enumerate(levels)
        }
    )
    kwargs: dict[str, Any] = {"transforms": _transforms_from_sd(obj, spatial, where)}
    if cls is Image and "c" in levels[0].coords:
        kwargs["channel_names"] = [_py(v) for v in levels[0].coords["c"].values]
    return cls(tree, **kwargs)


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# --- spatialflow -> spatialdata ------------------------------------------------------------
def to_spatialdata(ds: Dataset) -> Any:
    """The ``spatialdata.SpatialData`` equivalent of a Dataset (lazy data stays lazy)."""
    sd = _sd()
    out: dict[str, dict[str, Any]] = {
        k: {} for k in ("images", "labels", "points", "shapes", "tables")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in ("images", "labels"):
            for name, el in getattr(ds, kind).items():
                out[kind][name] = _raster_to_sd(el)
        for name, pts in ds.points.items():
            out["points"][name] = _points_to_sd(pts)
        for name, shp in ds.shapes.items():
            out["shapes"][name] = _shapes_to_sd(shp)
        for name, table in ds.tables.items():
            out["tables"][name] = _table_to_sd(table)
        return sd.SpatialData(**out)


def _points_to_sd(pts: Points) -> Any:
    from spatialdata.models import PointsModel

    return PointsModel.parse(
        fresh_frame(pts.data),
        feature_key=pts.feature_key,
        instance_key=pts.instance_key,
        transformations=_transforms_to_sd(pts.transforms, pts.axes),
    )


def _shapes_to_sd(shp: Shapes) -> Any:
    from spatialdata.models import ShapesModel

    gdf = shp.data.compute()
    return ShapesModel.parse(gdf, transformations=_transforms_to_sd(shp.transforms, ("x", "y")))


def _table_to_sd(table: Table) -> Any:
    from spatialdata.models import TableModel

    adata = table.data.copy()
    if not table.region:
        adata.uns.pop("spatialdata_attrs", None)
        return TableModel.parse(adata)
    return TableModel.parse(
        adata,
        region=adata.uns["spatialdata_attrs"]["region"],
        region_key=table.region_key,
        instance_key=table.instance_key,
        overwrite_metadata=True,
    )


def _raster_to_sd(el: RasterElement) -> Any:
    """``el`` built as spatialdata's zarr reader builds a raster (and validated by its model)."""
    import xarray as xr
    from spatialdata.models import get_model
    from spatialdata.models.pyramids_utils import dask_arrays_to_datatree
    from spatialdata.transformations import set_transformation
    from spatialdata.transformations._utils import compute_coordinates

    dims = el.dims
    channels = list(el.channel_names) if isinstance(el, Image) else None
    arrays = [el.scale(k).data for k in range(el.n_scales)]
    transforms = _transforms_to_sd(el.transforms, el.axes)
    if len(arrays) > 1:
        obj: Any = dask_arrays_to_datatree(arrays, dims=dims, channels=channels)
    else:
        coords = {"c": channels} if channels is not None else {}
        obj = xr.DataArray(arrays[0], name="image", dims=dims, coords=coords)
    set_transformation(obj, transforms, set_all=True)
    obj = compute_coordinates(obj)
    get_model(obj)().validate(obj)
    return obj
