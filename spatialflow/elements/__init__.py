"""The five element kinds: thin typed wrappers that carry transforms and metadata with the data."""

from spatialflow.elements.base import Element, check_name
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table

KINDS: dict[str, type[Element]] = {
    "images": Image,
    "labels": Labels,
    "points": Points,
    "shapes": Shapes,
    "tables": Table,
}

__all__ = [
    "KINDS",
    "Element",
    "Image",
    "Labels",
    "Points",
    "RasterElement",
    "Shapes",
    "Table",
    "check_name",
]
