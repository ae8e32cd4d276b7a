"""sf.plot checked by its pixels: points at their pixels (markers and datashader), shapes in
their category's colour (element and table columns), image channels in their colours, label
outlines, the bbox crop; and the `spatialflow plot` command."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

import spatialflow as sf
from spatialflow.dataset import Dataset
from spatialflow.elements.points import Points
from spatialflow.elements.raster import Image, Labels
from spatialflow.elements.shapes import Shapes
from spatialflow.elements.table import Table
from spatialflow.errors import ValidationError
from spatialflow.transforms.base import Scale


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255


def _at(fig, img: np.ndarray, x: float, y: float) -> np.ndarray:
    ax = fig.axes[0]
    dx, dy = ax.transData.transform((x, y))
    row, col = int(img.shape[0] - dy), int(dx)
    return img[min(row, img.shape[0] - 1), min(col, img.shape[1] - 1)]


def _legend(fig) -> dict[str, np.ndarray]:
    leg = fig.axes[0].get_legend()
    return {
        t.get_text(): np.asarray(h.get_facecolor()[:3])
        for t, h in zip(leg.texts, leg.legend_handles, strict=True)
    }


def _points(xy: np.ndarray, genes: list[str] | None = None) -> Points:
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
    if genes is not None:
        df["gene"] = pd.Categorical(genes)
    return Points(df, feature_key="gene" if genes else None, rows_per_partition=50_000)


def test_known_points_render_at_their_pixels():
    pts = _points(np.array([[25.0, 70.0], [60.0, 20.0]]), ["A", "B"])
    ds = Dataset(points={"pts": pts})
    fig = sf.plot(ds, bbox=[0, 0, 100, 100], width=200, color="red")
    img = _pixels(fig)
    assert img.shape[:2] == (200, 200)
    assert np.allclose(_at(fig, img, 25, 70), (1, 0, 0), atol=0.1)
    assert np.allclose(_at(fig, img, 60, 20), (1, 0, 0), atol=0.1)
    assert np.allclose(_at(fig, img, 70, 70), (1, 1, 1), atol=0.02)  # background
    # genes: only gene B is drawn, in its legend colour
    fig = sf.plot(ds, bbox=[0, 0, 100, 100], width=200, genes=["B"])
    img = _pixels(fig)
    colors = _legend(fig)
    assert list(colors) == ["B"]
    assert np.allclose(_at(fig, img, 60, 20), colors["B"], atol=0.1)
    assert np.allclose(_at(fig, img, 25, 70), (1, 1, 1), atol=0.02)


def test_many_points_are_aggregated_with_datashader_and_a_lone_point_shows():
    rng = np.random.default_rng(0)
    dense = rng.uniform(0, 20, size=(150_000, 2))
    xy = np.vstack([dense, [[80.0, 60.0]]])
    ds = Dataset(points={"many": _points(xy)})
    assert ds.points["many"].npartitions == 4
    fig = sf.plot(ds, bbox=[0, 0, 100, 100], width=100)
    img = _pixels(fig)
    ax = fig.axes[0]
    assert len(ax.images) == 1 and not ax.collections  # an aggregate image, not markers
    assert not np.allclose(_at(fig, img, 80.5, 60.5), (1, 1, 1), atol=0.05)
    assert not np.allclose(_at(fig, img, 10, 10), (1, 1, 1), atol=0.05)
    assert np.allclose(_at(fig, img, 50, 50), (1, 1, 1), atol=0.02)
    assert np.allclose(_at(fig, img, 90, 10), (1, 1, 1), atol=0.02)


def _squares() -> Dataset:
    geoms = [shapely.box(10, 10, 40, 40), shapely.box(60, 10, 90, 40), shapely.box(10, 60, 40, 90)]
    gdf = gpd.GeoDataFrame(
        {"kind": pd.Categorical(["a", "b", "a"])}, geometry=geoms, index=[5, 6, 7]
    )
    table = ad.AnnData(
        obs=pd.DataFrame(
            {
                "region": pd.Categorical(["squares"] * 3),
                "square_id": [5, 6, 7],
                "type": pd.Categorical(["x", "x", "y"]),
            },
            index=["0", "1", "2"],
        )
    )
    return Dataset(
        shapes={"squares": Shapes(gdf)},
        tables={
            "table": Table(table, region="squares", region_key="region", instance_key="square_id")
        },
    )


def test_shapes_are_filled_in_their_category_colour():
    ds = _squares()
    fig = sf.plot(ds, "squares", color="kind", bbox=[0, 0, 100, 100], width=200)
    img, colors = _pixels(fig), _legend(fig)
    assert set(colors) == {"a", "b"} and not np.allclose(colors["a"], colors["b"])
    assert np.allclose(_at(fig, img, 25, 25), colors["a"], atol=0.03)
    assert np.allclose(_at(fig, img, 75, 25), colors["b"], atol=0.03)
    assert np.allclose(_at(fig, img, 25, 75), colors["a"], atol=0.03)
    assert np.allclose(_at(fig, img, 75, 75), (1, 1, 1), atol=0.02)
    # a column of the table annotating the shapes, matched by instance id
    fig = sf.plot(ds, "squares", color="type", bbox=[0, 0, 100, 100], width=200)
    img, colors = _pixels(fig), _legend(fig)
    assert np.allclose(_at(fig, img, 75, 25), colors["x"], atol=0.03)
    assert np.allclose(_at(fig, img, 25, 75), colors["y"], atol=0.03)
    # no colour: outlines only, the inside stays background
    fig = sf.plot(ds, "squares", bbox=[0, 0, 100, 100], width=200)
    img = _pixels(fig)
    assert np.allclose(_at(fig, img, 25, 25), (1, 1, 1), atol=0.02)
    assert _at(fig, img, 10.2, 25).sum() < 2.0  # the edge is drawn
    with pytest.raises(ValidationError, match="nope"):
        sf.plot(ds, "squares", color="nope")


def _two_channel_image() -> Image:
    data = np.zeros((2, 40, 60), dtype=np.uint16)
    data[0, :, :30] = 1000  # channel 0: left half
    data[1, :, 30:] = 1000  # channel 1: right half
    data[:, 0, 0] = 1  # a little variation so percentiles differ
    return Image(
        data,
        channel_names=["DAPI", "CD45"],
        scale_factors=[2],
        transforms={"global": Scale([2.0, 2.0], ("x", "y"))},
    )


def test_image_channels_take_their_colours_and_bbox_crops():
    ds = Dataset(images={"img": _two_channel_image()})
    fig = sf.plot(ds, width=240)
    img = _pixels(fig)
    assert img.shape[:2] == (160, 240)  # extent 120 x 80 (Scale 2) keeps its aspect
    assert np.allclose(_at(fig, img, 30, 40), (0, 0, 1), atol=0.05)  # DAPI: blue
    assert np.allclose(_at(fig, img, 90, 40), (0, 1, 0), atol=0.05)  # CD45: green
    fig = sf.plot(ds, width=240, color={"CD45": "red"})
    img = _pixels(fig)
    assert np.allclose(_at(fig, img, 90, 40), (1, 0, 0), atol=0.05)
    assert np.allclose(_at(fig, img, 30, 40), (0, 0, 0), atol=0.05)  # DAPI not shown
    # bbox: only the right half, the whole figure is that channel
    fig = sf.plot(ds, bbox=[64, 4, 116, 76], width=104)
    img = _pixels(fig)
    assert img.shape[:2] == (144, 104)
    # (the upper right holds the channel legend)
    assert np.allclose(np.median(img[5:-5, 5:-5], axis=(0, 1)), (0, 1, 0), atol=0.05)
    assert np.allclose(img[60:-5, 5:-5].mean(axis=(0, 1)), (0, 1, 0), atol=0.05)


def test_labels_are_outlined():
    lab = np.zeros((50, 50), dtype=np.int32)
    lab[10:40, 10:40] = 3
    ds = Dataset(labels={"seg": Labels(lab)})
    fig = sf.plot(ds, bbox=[0, 0, 50, 50], width=200)
    img = _pixels(fig)
    assert np.allclose(_at(fig, img, 25, 25), (1, 1, 1), atol=0.02)  # inside: empty
    assert not np.allclose(_at(fig, img, 10.1, 25), (1, 1, 1), atol=0.05)  # the border
    assert np.allclose(_at(fig, img, 5, 5), (1, 1, 1), atol=0.02)


def test_plot_command_writes_the_png(tmp_path):
    import matplotlib.image as mpimg

    _squares().write(tmp_path / "sq.zarr")
    out = tmp_path / "fig.png"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "spatialflow.cli",
            "plot",
            str(tmp_path / "sq.zarr"),
            "--out",
            str(out),
            "--elements",
            "squares",
            "--bbox",
            "50",
            "0",
            "100",
            "50",
            "--color",
            "kind",
            "--width",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    png = mpimg.imread(out)[..., :3]
    assert png.shape[:2] == (100, 100)
    centre = png[50, 50]  # square "b" (60..90) fills the middle of the box
    assert not np.allclose(centre, (1, 1, 1), atol=0.05)
    assert np.allclose(png[5, 5], (1, 1, 1), atol=0.02)
