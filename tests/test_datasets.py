"""The synthetic Xenium-like generator: exact counts, deterministic, lazy, realistic enough."""

from __future__ import annotations

import tracemalloc
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import shapely

import spatialflow as sf
from spatialflow.datasets import XeniumLike


@pytest.fixture(scope="module")
def small():
    return sf.datasets.xenium_like(
        60_000, 600, n_genes=50, seed=3, transcripts_per_partition=15_000
    )


@pytest.fixture(scope="module")
def small_points(small):
    return small.points["transcripts"].data.compute()


@pytest.fixture(scope="module")
def small_cells(small):
    return small.shapes["cells"].data.compute()


def test_elements_and_kinds(small):
    assert set(small.images) == {"morphology"}
    assert set(small.labels) == {"nuclei"}
    assert set(small.points) == {"transcripts"}
    assert set(small.shapes) == {"cells", "nucleus_boundaries", "spots"}
    assert set(small.tables) == {"table"}
    img = small.images["morphology"]
    assert img.dims == ("c", "y", "x") and img.dtype == np.uint16
    assert list(img.channel_names) == ["DAPI", "PolyT"]
    assert small.tables["table"].region == ["cells"]


def test_exact_counts(small, small_points, small_cells):
    assert len(small_points) == 60_000
    assert len(small_cells) == 600
    assert small.tables["table"].data.n_obs == 600
    assert small_points["gene"].cat.categories.size == 50
    assert isinstance(small_points["gene"].dtype, pd.CategoricalDtype)
    assert small.points["transcripts"].data["gene"].cat.known
    assert list(small_points.columns) == ["x", "y", "z", "gene", "cell_id", "qv"]
    assert small_points.index.is_unique
    # partitions hold contiguous index ranges matching the known divisions
    assert small.points["transcripts"].data.known_divisions


def test_deterministic_for_a_seed(small_points):
    again = sf.datasets.xenium_like(
        60_000, 600, n_genes=50, seed=3, transcripts_per_partition=15_000
    )
    pd.testing.assert_frame_equal(again.points["transcripts"].data.compute(), small_points)
    other = sf.datasets.xenium_like(
        60_000, 600, n_genes=50, seed=4, transcripts_per_partition=15_000
    )
    assert not np.array_equal(other.points["transcripts"].data.compute()["x"], small_points["x"])


def test_transcripts_mostly_inside_their_cells(small_points, small_cells):
    pts = shapely.points(small_points.x.to_numpy(np.float64), small_points.y.to_numpy(np.float64))
    hit_pt, hit_cell = small_cells.sindex.query(pts, predicate="within")
    inside = np.zeros(len(pts), bool)
    inside[hit_pt] = True
    assert inside.mean() >= 0.80
    # cell_id names the polygon a transcript lies in
    assigned = small_points.cell_id.to_numpy()[hit_pt]
    ok = assigned >= 0
    np.testing.assert_array_equal(small_cells.index.to_numpy()[hit_cell][ok], assigned[ok])
    assert (small_points.cell_id >= 0).mean() >= 0.85


def test_cells_do_not_overlap(small_cells):
    geoms = small_cells.geometry.values
    a, b = small_cells.sindex.query(geoms, predicate="intersects")
    a, b = a[a < b], b[a < b]
    overlap = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    assert overlap.max() < 1e-6 * shapely.area(geoms).min()
    assert small_cells.index.is_unique


def test_gene_programs_differ_by_cell_type(small, small_points):
    obs = small.tables["table"].data.obs
    kind = obs.set_index("cell_id")["cell_type"]
    inside = small_points[small_points.cell_id >= 0]
    types = kind.reindex(inside.cell_id.to_numpy()).to_numpy()
    prof = pd.crosstab(types, inside.gene.to_numpy(), normalize="index")
    assert prof.shape[0] >= 3
    # the most frequent gene differs between cell types
    assert prof.idxmax(axis=1).nunique() >= 3


def test_nuclei_labels_inside_cells_and_brighter(small, small_cells):
    lab = small.labels["nuclei"].scale(0).values
    img = small.images["morphology"].scale(0).values
    ids = np.unique(lab)
    assert ids[0] == 0 and len(ids) > 500  # nearly every cell has a nucleus
    dapi = img[0]
    assert dapi[lab > 0].mean() > 3 * dapi[lab == 0].mean()
    # a nucleus pixel centre (in microns) lies inside the cell with id label - 1
    ps = small.images["morphology"].transforms["global"].scale[0]
    iy, ix = np.nonzero(lab)
    pick = np.random.default_rng(0).choice(len(iy), 500, replace=False)
    px, py = (ix[pick] + 0.5) * ps, (iy[pick] + 0.5) * ps
    cells = small_cells.loc[lab[iy[pick], ix[pick]] - 1]
    assert shapely.contains_xy(cells.geometry.values, px, py).all()


def test_spots_are_visium_like(small):
    spots = small.shapes["spots"].data.compute()
    assert (spots["radius"] == 27.5).all()
    xy = shapely.get_coordinates(spots.geometry.values)
    d = np.sort(np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)), axis=1)[:, 1]
    np.testing.assert_allclose(d, 100.0, rtol=1e-9)


def test_hundred_million_builds_lazily_and_one_partition_is_bounded():
    calls = []
    real = XeniumLike.transcripts

    def counting(self, t):
        calls.append(t)
        return real(self, t)

    with mock.patch.object(XeniumLike, "transcripts", counting):
        ds = sf.datasets.xenium_like(100_000_000, 1_000_000)
        pts = ds.points["transcripts"]
        assert pts.npartitions >= 50
        assert calls == []  # building computed no transcripts
        assert pts.partition_bounds.shape == (pts.npartitions, 6)
        tracemalloc.start()
        try:
            part = pts.data.get_partition(17).compute()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert calls == [17]
    assert 500_000 <= len(part) <= 2_000_000
    # memory proportional to the partition (~26 MB), never the whole (~2.6 GB)
    assert peak < 12 * part.memory_usage(deep=True).sum()
    assert peak < 500e6
    b = pts.partition_bounds[17]
    assert (part.x >= b[0]).all() and (part.x <= b[3]).all()
    assert (part.y >= b[1]).all() and (part.y <= b[4]).all()


def test_bad_arguments():
    with pytest.raises(sf.ValidationError, match="n_cells"):
        sf.datasets.xenium_like(10, 0)
    with pytest.raises(sf.ValidationError, match="n_transcripts"):
        sf.datasets.xenium_like(-5, 10)
