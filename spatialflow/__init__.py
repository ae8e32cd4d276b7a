"""spatialflow: a Dask-distributed batch engine for spatial omics data (the SpatialData model).

The public API (DESIGN.md section 8) is re-exported here lazily: ``import spatialflow`` costs
nothing until a name is used, so the command line (``spatialflow map-coords`` above all) starts
fast while ``sf.Dataset``, ``sf.read`` ... work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spatialflow._version import __version__ as __version__

_EXPORTS: dict[str, str] = {
    # errors
    **dict.fromkeys(
        [
            "SpatialFlowError",
            "ValidationError",
            "TransformError",
            "FormatError",
            "PlanError",
            "ConfigError",
            "CommitConflictError",
            "StorageError",
        ],
        "spatialflow.errors",
    ),
    # data model
    "Dataset": "spatialflow.dataset",
    **dict.fromkeys(
        ["Element", "Image", "Labels", "Points", "Shapes", "Table"], "spatialflow.elements"
    ),
    # transformations
    **dict.fromkeys(
        [
            "Transform",
            "Identity",
            "Translation",
            "Scale",
            "Affine",
            "Rotation",
            "MapAxis",
            "Sequence",
            "ByDimension",
            "Bijection",
            "InverseOf",
            "get_transformation",
            "set_transformation",
            "get_transformation_between",
            "align_landmarks",
        ],
        "spatialflow.transforms",
    ),
    "transform": "spatialflow.ops.transform",
    "aggregate": "spatialflow.ops.aggregate",
    **dict.fromkeys(["bounding_box_query", "polygon_query"], "spatialflow.ops.query"),
    **dict.fromkeys(["index_points", "viewport_query"], "spatialflow.ops.index"),
    **dict.fromkeys(["register", "fuse", "stitch"], "spatialflow.ops.stitch"),
    **dict.fromkeys(["annotate", "link"], "spatialflow.ops.links"),
    **dict.fromkeys(["join", "get_values"], "spatialflow.ops.join"),
    "read": "spatialflow.io",
    **dict.fromkeys(["ring_density", "smooth_density"], "spatialflow.ops.density"),
    **dict.fromkeys(["rasterize", "to_circles", "get_extent"], "spatialflow.ops.geometry"),
    **dict.fromkeys(["from_spatialdata", "to_spatialdata"], "spatialflow.io.convert"),
    "plot": "spatialflow.plot",
}
_SUBMODULES = {"datasets", "transforms", "elements", "errors", "kernels", "ops", "io", "jobs"}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"spatialflow.{name}")
    raise AttributeError(f"module 'spatialflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from spatialflow import datasets as datasets
    from spatialflow.dataset import Dataset as Dataset
    from spatialflow.elements.base import Element as Element
    from spatialflow.elements.points import Points as Points
    from spatialflow.elements.raster import Image as Image
    from spatialflow.elements.raster import Labels as Labels
    from spatialflow.elements.shapes import Shapes as Shapes
    from spatialflow.elements.table import Table as Table
    from spatialflow.errors import CommitConflictError as CommitConflictError
    from spatialflow.errors import ConfigError as ConfigError
    from spatialflow.errors import FormatError as FormatError
    from spatialflow.errors import PlanError as PlanError
    from spatialflow.errors import SpatialFlowError as SpatialFlowError
    from spatialflow.errors import StorageError as StorageError
    from spatialflow.errors import TransformError as TransformError
    from spatialflow.errors import ValidationError as ValidationError
    from spatialflow.io import read as read
    from spatialflow.io.convert import from_spatialdata as from_spatialdata
    from spatialflow.io.convert import to_spatialdata as to_spatialdata
    from spatialflow.ops.aggregate import aggregate as aggregate
    from spatialflow.ops.density import ring_density as ring_density
    from spatialflow.ops.density import smooth_density as smooth_density
    from spatialflow.ops.geometry import get_extent as get_extent
    from spatialflow.ops.geometry import rasterize as rasterize
    from spatialflow.ops.geometry import to_circles as to_circles
    from spatialflow.ops.index import index_points as index_points
    from spatialflow.ops.index import viewport_query as viewport_query
    from spatialflow.ops.join import get_values as get_values
    from spatialflow.ops.join import join as join
    from spatialflow.ops.links import annotate as annotate
    from spatialflow.ops.links import link as link
    from spatialflow.ops.query import bounding_box_query as bounding_box_query
    from spatialflow.ops.query import polygon_query as polygon_query
    from spatialflow.ops.stitch import fuse as fuse
    from spatialflow.ops.stitch import register as register
    from spatialflow.ops.stitch import stitch as stitch
    from spatialflow.ops.transform import transform as transform
    from spatialflow.plot.figure import plot as plot
    from spatialflow.transforms import align_landmarks as align_landmarks
    from spatialflow.transforms import get_transformation as get_transformation
    from spatialflow.transforms import get_transformation_between as get_transformation_between
    from spatialflow.transforms import set_transformation as set_transformation
    from spatialflow.transforms.base import Affine as Affine
    from spatialflow.transforms.base import Identity as Identity
    from spatialflow.transforms.base import MapAxis as MapAxis
    from spatialflow.transforms.base import Rotation as Rotation
    from spatialflow.transforms.base import Scale as Scale
    from spatialflow.transforms.base import Transform as Transform
    from spatialflow.transforms.base import Translation as Translation
    from spatialflow.transforms.composite import Bijection as Bijection
    from spatialflow.transforms.composite import ByDimension as ByDimension
    from spatialflow.transforms.composite import InverseOf as InverseOf
    from spatialflow.transforms.composite import Sequence as Sequence
