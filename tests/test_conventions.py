"""spatialdata's in-memory conventions: multiscale children named scale0, scale1, ...;
spatialdata-style code (img["scale0"]) works on spatialflow elements; old names and old stores
(arrays s0, s1, ... on disk; trees with s0 children in memory) still read."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

import spatialflow as sf
from spatialflow.elements.raster import Image, Labels


def _image() -> Image:
    data = np.arange(2 * 32 * 32, dtype=np.uint16).reshape(2, 32, 32)
    return Image(data, channel_names=["a", "b"], scale_factors=[2, 2], name="im")


def test_children_are_named_like_spatialdatas_and_indexing_works():
    img = _image()
    assert list(img.data.children) == ["scale0", "scale1", "scale2"]
    assert list(img) == ["scale0", "scale1", "scale2"]
    node = img["scale1"]
    assert isinstance(node, xr.DataTree)
    assert node["image"].shape == (2, 16, 16)
    assert list(node["image"].coords["c"].values) == ["a", "b"]
    # the old names and level numbers address the same node
    assert img["s2"]["image"].shape == img[2]["image"].shape == (2, 8, 8)
    assert "scale2" in img and "s1" in img and "scale3" not in img
    with pytest.raises(KeyError, match="no scale 'scale7'"):
        img["scale7"]


def test_a_tree_with_old_child_names_is_renamed():
    lv0 = xr.DataArray(np.zeros((8, 8), dtype=np.int32), dims=("y", "x"))
    old = xr.DataTree.from_dict(
        {"s0": xr.Dataset({"image": lv0}), "s1": xr.Dataset({"image": lv0[::2, ::2]})}
    )
    lab = Labels(old)
    assert list(lab.data.children) == ["scale0", "scale1"]
    assert lab["scale1"]["image"].shape == (4, 4)


def test_stores_keep_s0_on_disk_and_spatialdata_reads_the_same_names(tmp_path):
    ds = sf.Dataset(images={"im": _image()})
    ds.write(tmp_path / "x.zarr")
    group = zarr.open_group(tmp_path / "x.zarr" / "images" / "im", mode="r")
    assert sorted(k for k, _ in group.arrays()) == ["s0", "s1", "s2"]  # on disk: unchanged
    back = sf.read(tmp_path / "x.zarr").images["im"]
    assert list(back.data.children) == ["scale0", "scale1", "scale2"]
    np.testing.assert_array_equal(back["scale0"]["image"].values, _image().scale(0).values)
    sdata = sf.to_spatialdata(sf.read(tmp_path / "x.zarr"))
    theirs = sdata.images["im"]
    assert list(theirs.children) == list(back.data.children)  # same names as spatialdata's
    again = sf.from_spatialdata(sdata).images["im"]
    assert again["scale2"]["image"].shape == theirs["scale2"]["image"].shape
