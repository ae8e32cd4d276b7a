"""``sf.plot``: one static matplotlib figure of a Dataset's elements in one coordinate system.

Decisions:

* The drawing is a map: the axes fill the figure, x grows right and y grows DOWN (image
  convention, as spatialdata-plot and napari show it), no ticks; the figure is ``width`` pixels
  wide (dpi 100) and as high as the extent's aspect asks, so one data unit is the same size on
  both axes and a test can find any data point's pixel through ``ax.transData``.
* The extent is ``bbox`` (``[xmin, ymin, xmax, ymax]`` in the coordinate system) or the union of
  the elements' extents. Everything is cut to it before any pixel or row is read: rasters are
  sliced at the scale that matches the screen resolution, points and shapes read only the
  partitions whose bounding boxes meet it.
* Drawing order: images, labels, shapes, points (later ones on top). The background is black
  when an image is drawn (channels blend additively on black), white otherwise.
* Every element kind has its own module (rasters, shapes, points) with one ``draw_*`` function
  that takes the element, its transform to the coordinate system and a :class:`Canvas`.
* Library code: nothing is printed; what is skipped (an element without a transform to the
  coordinate system) is logged. Uses the Agg backend unless a figure or ``ax`` is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spatialflow.dataset import Dataset
from spatialflow.elements.base import Element
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels, RasterElement
from spatialflow.elements.shapes import Shapes
from spatialflow.errors import ValidationError
from spatialflow.transforms.apply import box_image
from spatialflow.transforms.base import Transform

__all__ = ["Canvas", "element_extent", "plot"]

log = logging.getLogger(__name__)

_ORDER = {"images": 0, "labels": 1, "shapes": 2, "points": 3}


@dataclass
class Canvas:
    """Where and how large the drawing is: extent in the coordinate system, size in pixels."""

    ax: Any
    extent: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
    width: int
    height: int
    dataset: Dataset
    coordinate_system: str
    dark: bool = False
    legend: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)
    color_used: bool = False  # some element understood ``color``

    @property
    def pixel_size(self) -> float:
        """Data units per screen pixel (the larger of the two axes)."""
        x0, y0, x1, y1 = self.extent
        return max((x1 - x0) / self.width, (y1 - y0) / self.height)


def plot(
    ds: Dataset,
    elements: str | Sequence[str] | None = None,
    *,
    coordinate_system: str = "global",
    bbox: Sequence[float] | None = None,
    genes: Sequence[Any] | None = None,
    color: Any = None,
    ax: Any = None,
    width: int = 1200,
) -> Any:
    """A matplotlib Figure of ``elements`` (default: every image, labels, shapes and points
    element with a transform to ``coordinate_system``).

    ``bbox``: ``[xmin, ymin, xmax, ymax]`` in ``coordinate_system``. ``genes``: only these
    feature values of points, each in its own colour. ``color``: for shapes and points, a column
    of the element or of a table annotating it (categories get a legend, numbers viridis), or
    one matplotlib colour; for images, a channel, a list of channels or ``{channel: colour}``.
    ``ax``: draw into these axes instead of a new figure. ``width``: figure width in pixels.
    Points above ~10^5 are aggregated with datashader partition by partition on Dask (memory
    bounded by the canvas, not the number of points).
    """
    if not isinstance(ds, Dataset):
        raise ValidationError(f"plot: expected a Dataset, got {type(ds).__name__}")
    if not isinstance(width, int | np.integer) or width < 16:
        raise ValidationError(f"plot: width must be an integer >= 16 pixels, got {width!r}")
    chosen = _choose(ds, elements, coordinate_system)
    extent = _extent(chosen, bbox, coordinate_system)
    fig, ax, w, h = _figure(ax, extent, int(width))
    dark = any(isinstance(el, Image) for _, el, _ in chosen)
    canvas = Canvas(ax, extent, w, h, ds, coordinate_system, dark=dark)
    ax.set_facecolor("black" if dark else "white")
    if ax.figure is fig and len(fig.axes) == 1:
        fig.patch.set_facecolor("black" if dark else "white")
    from spatialflow.plot.points import draw_points
    from spatialflow.plot.rasters import draw_image, draw_labels
    from spatialflow.plot.shapes import draw_shapes

    for name, el, t in chosen:
        log.info("plot: drawing %s %r", el.kind, name)
        if isinstance(el, Image):
            draw_image(el, t, canvas, color=color)
        elif isinstance(el, Labels):
            draw_labels(el, t, canvas)
        elif isinstance(el, Shapes):
            draw_shapes(name, el, t, canvas, color=color)
        elif isinstance(el, Points):
            draw_points(name, el, t, canvas, genes=genes, color=color)
    if color is not None and not canvas.color_used:
        raise ValidationError(
            f"plot: color {color!r} is neither a column of the drawn elements (or of a table "
            "annotating them), nor an image channel, nor a matplotlib colour"
        )
    x0, y0, x1, y1 = extent
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    if canvas.legend:
        _legend(canvas)
    return fig


# --- choosing elements and the extent ---------------------------------------------------------
def _choose(
    ds: Dataset, elements: str | Sequence[str] | None, cs: str
) -> list[tuple[str, Element, Transform]]:
    if isinstance(elements, str):
        elements = [elements]
    out = []
    if elements is None:
        for name, el in ds.items():
            if el.kind not in _ORDER:
                continue
            if cs not in el.transforms:
                log.info("plot: %s %r has no transform to %r; skipped", el.kind, name, cs)
                continue
            out.append((name, el, el.transforms[cs]))
        if not out:
            raise ValidationError(
                f"plot: no element has a transform to coordinate system {cs!r}; "
                f"the dataset's coordinate systems are {ds.coordinate_systems}"
            )
    else:
        for name in elements:
            if name not in ds:
                raise ValidationError(
                    f"plot: no element {name!r}; the dataset has {[n for n, _ in ds.items()]}"
                )
            el = ds[name]
            if el.kind not in _ORDER:
                raise ValidationError(
                    f"plot: {el.kind} {name!r} cannot be drawn by itself; pass "
                    "the shapes or labels it annotates and color=<one of its columns>"
                )
            if cs not in el.transforms:
                raise ValidationError(
                    f"plot: {el.kind} {name!r} has no transform to {cs!r}; it has "
                    f"{sorted(el.transforms)} (pass coordinate_system=...)"
                )
            out.append((name, el, el.transforms[cs]))
    return sorted(out, key=lambda item: _ORDER[item[1].kind])


def element_extent(el: Element, t: Transform) -> np.ndarray:
    """``[xmin, ymin, xmax, ymax]`` of ``el`` after ``t`` (from metadata and partition bounds)."""
    if isinstance(el, RasterElement):
        box = np.array([0.0, 0.0, float(el.scale(0).sizes["x"]), float(el.scale(0).sizes["y"])])
        return box_image(_xy(t), box, ("x", "y"))
    b = el.bounds()  # type: ignore[attr-defined]
    d = len(el.axes)
    box = np.array([b[0], b[1], b[d], b[d + 1]], dtype=np.float64)
    if isinstance(el, Shapes) and el.is_circles:  # partition bounds hold centres only
        r = float(el.data["radius"].max().compute())
        box += [-r, -r, r, r]
    return box_image(_xy(t), box, ("x", "y"))


def _xy(t: Transform) -> Transform:
    """``t`` restricted to the x, y plane (as an Affine on x, y)."""
    from spatialflow.transforms.base import Affine

    m = t.to_affine_matrix(("x", "y"), ("x", "y"))
    return Affine(m, input_axes=("x", "y"), output_axes=("x", "y"))


def _extent(
    chosen: list[tuple[str, Element, Transform]], bbox: Sequence[float] | None, cs: str
) -> tuple[float, float, float, float]:
    if bbox is not None:
        try:
            b = [float(v) for v in bbox]
        except (TypeError, ValueError):
            b = []
        if len(b) != 4 or not (b[2] > b[0] and b[3] > b[1]) or not np.all(np.isfinite(b)):
            raise ValidationError(
                f"plot: bbox must be [xmin, ymin, xmax, ymax] in {cs!r} with "
                f"xmax > xmin and ymax > ymin, got {bbox!r}"
            )
        return (b[0], b[1], b[2], b[3])
    boxes = np.array([element_extent(el, t) for _, el, t in chosen])
    boxes = boxes[np.all(np.isfinite(boxes), axis=1)]
    if not len(boxes):
        raise ValidationError("plot: the chosen elements are empty; nothing to draw")
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    pad = 0.01 * max(x1 - x0, y1 - y0, 1e-9)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - pad, x1 + pad
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - pad, y1 + pad
    return (float(x0), float(y0), float(x1), float(y1))


def _figure(ax: Any, extent: tuple[float, float, float, float], width: int) -> tuple:
    x0, y0, x1, y1 = extent
    if ax is not None:
        fig = ax.figure
        bb = ax.get_window_extent()
        return fig, ax, max(1, int(bb.width)), max(1, int(bb.height))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    height = round(width * (y1 - y0) / (x1 - x0))
    height = int(min(max(height, 16), 4 * width))
    fig = _figure_class()(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_aspect("auto")
    return fig, ax, width, height


def _figure_class() -> type:
    """A matplotlib Figure that shows itself as a PNG in Jupyter without pyplot."""
    from matplotlib.figure import Figure

    class PlotFigure(Figure):
        def _repr_png_(self) -> bytes:
            import io

            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=self.dpi, facecolor=self.get_facecolor())
            return buf.getvalue()

    return PlotFigure


def _legend(canvas: Canvas) -> None:
    from matplotlib.patches import Patch

    items = canvas.legend[:20]
    handles = [Patch(facecolor=c, edgecolor="none", label=str(label)) for label, c in items]
    if len(canvas.legend) > 20:
        handles.append(Patch(facecolor="none", edgecolor="none", label="..."))
    canvas.ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
