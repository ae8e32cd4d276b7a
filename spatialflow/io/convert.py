"""In-memory conversion between a spatialflow Dataset and a ``spatialdata.SpatialData``.

spatialdata is optional (a test extra): these functions import it when called. Transforms go
through the spatialdata JSON dialect both ways (the same code that reads and writes stores), so
what converts in memory also converts on disk. Row order, index, dtypes, categories, channel
names, feature/instance keys and table links are kept: points and shapes keep their
partitioning (no spatial re-sort).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from spatialflow.dataset import Dataset
from spatialflow.elements import Image, Labels, Points, RasterElement, Shapes, Table
from spatialflow.errors import SpatialFlowError
from spatialflow.transforms import Transform
from spatialflow.transforms.ngff import from_spatialdata_dict, to_spatialdata_dict

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


def _transforms_from_sd(obj: Any, axes: tuple[str, ...]) -> dict[str, Transform]:
    from spatialdata.transformations import get_transformation
    from spatialdata.transformations.ngff.ngff_transformations import NgffBaseTransformation

    out = {}
    for cs, t in get_transformation(obj, get_all=True).items():
        ngff = t.to_ngff(input_axes=axes, output_axes=axes, output_coordinate_system_name=cs)
        d = ngff.to_dict() if isinstance(ngff, NgffBaseTransformation) else ngff
        out[cs] = from_spatialdata_dict(d)[1]
    return out


def _transforms_to_sd(transforms: dict[str, Transform], axes: tuple[str, ...]) -> dict[str, Any]:
    from spatialdata.transformations import BaseTransformation
    from spatialdata.transformations.ngff.ngff_transformations import NgffBaseTransformation

    out = {}
    for cs, t in transforms.items():
        d = to_spatialdata_dict(t, axes, cs)
        out[cs] = BaseTransformation.from_ngff(NgffBaseTransformation.from_dict(d))
    return out


def from_spatialdata(sdata: Any) -> Dataset:
    """The Dataset equivalent of a ``spatialdata.SpatialData`` object."""
    _sd()
    ds = Dataset()
    for name, img in sdata.images.items():
        ds.images[name] = _raster_from_sd(img, Image)
    for name, lab in sdata.labels.items():
        ds.labels[name] = _raster_from_sd(lab, Labels)
    for name, pts in sdata.points.items():
        attrs = pts.attrs.get("spatialdata_attrs", {})
        axes = ("x", "y", "z") if "z" in pts.columns else ("x", "y")
        data = pts.copy()
        data.attrs = {}
        feature = attrs.get("feature_key")
        if feature is not None and not data[feature].cat.known:
            data[feature] = data[feature].cat.as_known()
        ds.points[name] = Points(
            data,
            feature_key=feature,
            instance_key=attrs.get("instance_key"),
            transforms=_transforms_from_sd(pts, axes),
        )
    for name, shp in sdata.shapes.items():
        import dask.dataframe as dd

        gdf = shp.copy()
        gdf.attrs = {}
        ds.shapes[name] = Shapes(
            dd.from_pandas(gdf, npartitions=1, sort=False),
            transforms=_transforms_from_sd(shp, ("x", "y")),
        )
    for name, table in sdata.tables.items():
        ds.tables[name] = Table(table.copy())
    return ds


def _raster_from_sd(obj: Any, cls: type[RasterElement]) -> RasterElement:
    if isinstance(obj, xr.DataTree):
        keys = sorted(obj.children, key=lambda k: int("".join(c for c in k if c.isdigit()) or 0))
        levels = [next(iter(obj[k].to_dataset().data_vars.values())) for k in keys]
        first = obj[keys[0]].to_dataset()
        source = next(iter(first.data_vars.values()))
    else:
        levels = [obj]
        source = obj
    dims = tuple(levels[0].dims)
    spatial = tuple(d for d in dims if d != "c")
    tree = xr.DataTree.from_dict(
        {
            f"s{k}": xr.Dataset({"image": xr.DataArray(lv.data, dims=dims)})
            for k, lv in enumerate(levels)
        }
    )
    kwargs: dict[str, Any] = {"transforms": _transforms_from_sd(source, spatial)}
    if cls is Image and "c" in levels[0].coords:
        kwargs["channel_names"] = [
            v.item() if isinstance(v, np.generic) else v for v in levels[0].coords["c"].values
        ]
    return cls(tree, **kwargs)


def to_spatialdata(ds: Dataset) -> Any:
    """The ``spatialdata.SpatialData`` equivalent of a Dataset (lazy data stays lazy)."""
    sd = _sd()
    from spatialdata.models import (
        Image2DModel,
        Image3DModel,
        Labels2DModel,
        Labels3DModel,
        PointsModel,
        ShapesModel,
        TableModel,
    )
    from spatialdata.transformations import set_transformation

    out: dict[str, dict[str, Any]] = {
        k: {} for k in ("images", "labels", "points", "shapes", "tables")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, img in ds.images.items():
            model = Image3DModel if "z" in img.dims else Image2DModel
            out["images"][name] = _raster_to_sd(img, model)
        for name, lab in ds.labels.items():
            model = Labels3DModel if "z" in lab.dims else Labels2DModel
            out["labels"][name] = _raster_to_sd(lab, model)
        for name, pts in ds.points.items():
            data = pts.data
            parsed = PointsModel.parse(
                data,
                feature_key=pts.feature_key,
                instance_key=pts.instance_key,
                transformations=_transforms_to_sd(pts.transforms, pts.axes),
            )
            out["points"][name] = parsed
        for name, shp in ds.shapes.items():
            gdf = shp.data.compute()
            parsed = ShapesModel.parse(
                gdf, transformations=_transforms_to_sd(shp.transforms, ("x", "y"))
            )
            out["shapes"][name] = parsed
        for name, table in ds.tables.items():
            adata = table.data.copy()
            if table.region:
                adata = TableModel.parse(
                    adata,
                    region=table.region if len(table.region) > 1 else table.region[0],
                    region_key=table.region_key,
                    instance_key=table.instance_key,
                )
            out["tables"][name] = adata
        sdata = sd.SpatialData(**out)
        for kind in ("images", "labels"):
            for name, el in getattr(ds, kind).items():
                set_transformation(
                    sdata[name], _transforms_to_sd(el.transforms, el.axes), set_all=True
                )
    return sdata


def _raster_to_sd(el: RasterElement, model: Any) -> Any:
    dims = el.dims
    base = el.scale(0)
    kwargs: dict[str, Any] = {
        "dims": dims,
        "transformations": _transforms_to_sd(el.transforms, el.axes),
    }
    if isinstance(el, Image):
        kwargs["c_coords"] = list(el.channel_names)
    if el.n_scales == 1:
        return model.parse(base.data, **kwargs)
    from multiscale_spatial_image import MultiscaleSpatialImage  # noqa: F401 - spatialdata's dep

    single = model.parse(base.data, **kwargs)
    tree: dict[str, xr.Dataset] = {}
    for k in range(el.n_scales):
        lv = el.scale(k)
        arr = xr.DataArray(lv.data, dims=dims, name="image")
        for d in dims:
            if d == "c":
                arr = arr.assign_coords(c=single.coords["c"].values)
            else:
                n = lv.sizes[d]
                f = base.sizes[d] / n
                arr = arr.assign_coords({d: (np.arange(n) + 0.5) * f})
        arr.attrs = dict(single.attrs)
        tree[f"scale{k}"] = xr.Dataset({"image": arr})
    out = xr.DataTree.from_dict(tree)
    return out
