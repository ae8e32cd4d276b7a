"""Deterministic synthetic data for tests, benchmarks and the demo.

One module per kind of sample: ``xenium`` (a Xenium-like sample: transcripts, cells, nuclei,
an image, spots and a count table), and next to it the tiled mosaics for stitching and the
vendor output folders for the readers. Everything here is lazy where it can be and
reproducible from its seed.
"""

from spatialflow.datasets.mosaic import MosaicTruth, tiled_mosaic
from spatialflow.datasets.vendor import write_vendor_sample
from spatialflow.datasets.xenium import CELL_TYPES, XeniumLike, xenium_like

__all__ = [
    "CELL_TYPES",
    "MosaicTruth",
    "XeniumLike",
    "tiled_mosaic",
    "write_vendor_sample",
    "xenium_like",
]
