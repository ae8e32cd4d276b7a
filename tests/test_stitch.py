"""Stitching: registration accuracy against the mosaic's truth, empty tiles, exact and blended
fusion, chunk-read locality, the global solve, a stitch job commit, spatialdata interop, errors."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import yaml

import spatialflow as sf
from spatialflow.datasets.mosaic import tiled_mosaic
from spatialflow.errors import PlanError, TransformError, ValidationError
from spatialflow.kernels.solve import Edge, solve_positions
from spatialflow.ops.stitch import fuse, register, stitch
from spatialflow.transforms.base import Translation


def _errors(result, truth) -> np.ndarray:
    """|registered - true| position per tile (y, x), after removing the mean offset (the
    mosaic's absolute placement is a gauge choice) over the tiles with tissue."""
    names = [n for n in sorted(truth.positions) if n not in truth.empty]
    est = np.array([result.matrices[n][:2, 2] for n in names])
    true = np.array([truth.positions[n] for n in names])
    return np.abs(est - true - (est - true).mean(axis=0))


@pytest.fixture(scope="module")
def mosaic():
    return tiled_mosaic(5, 5, 256, overlap=0.15, stage_noise=15.0, seed=0, empty_tiles=2)


@pytest.fixture(scope="module")
def registered(mosaic, _cluster):
    ds, _ = mosaic
    with dask.config.set(scheduler=_cluster):
        return register(ds, "tile_*").compute()


# --- registration ---------------------------------------------------------------------------
def test_registration_accuracy_on_a_cluster_with_empty_tiles(mosaic, registered):
    ds, truth = mosaic
    stage_err = np.mean(
        [np.abs(truth.stage[n] - truth.positions[n]).mean() for n in truth.positions]
    )
    assert stage_err > 4  # the stage is really off
    err = _errors(registered, truth)
    assert err.mean() <= 0.2 and err.max() <= 0.5, (err.mean(), err.max())
    # empty tiles: reported, their pairs rejected for quality, stage position kept exactly
    assert sorted(registered.unregistered) == truth.empty and len(truth.empty) == 2
    for n in truth.empty:
        np.testing.assert_allclose(
            registered.transforms[n].to_affine_matrix(("x", "y"), ("x", "y")),
            ds.images[n].transforms["global"].to_affine_matrix(("x", "y"), ("x", "y")),
        )
        assert np.isnan(registered.residuals[n])
        theirs = registered.pairs[(registered.pairs.tile_a == n) | (registered.pairs.tile_b == n)]
        assert len(theirs) >= 2 and (theirs.status == "rejected").all()
        assert theirs.reason.str.startswith("quality").all()
    used = registered.pairs[registered.pairs.status == "used"]
    assert len(used) >= 40 - 8 - 4 and (used.residual_px < 1.0).all()
    assert (used.quality >= 0.3).all() and used.quality.median() > 0.9
    assert (used.ambiguity <= 0.75).all()
    assert list(registered.pairs.columns[:5]) == ["tile_a", "tile_b", "level", "shift_y", "shift_x"]
    assert registered.residuals.drop(truth.empty).max() < 1.0


def test_small_tiles_are_registered_or_kept_at_the_stage_never_thrown_off():
    # 96 px tiles, 14 px overlap strips, tissue with low-structure areas: the case where pair
    # peaks on narrow strips went wrong and single wrong edges placed tiles 10+ px off
    ds, truth = tiled_mosaic(12, 12, 96, stage_noise=4.0, seed=0, channels=1)
    res = register(ds, "tile_*").compute(scheduler="threads")
    names = sorted(truth.positions)
    kept = set(res.unregistered)
    assert len(kept) <= 12  # a few tiles sit in tissue gaps, most register
    for n in kept:  # exactly at the stage position, reported
        np.testing.assert_allclose(res.matrices[n][:2, 2], truth.stage[n], atol=1e-9)
        assert np.isnan(res.residuals[n])
    reg = [n for n in names if n not in kept]
    d = np.array([res.matrices[n][:2, 2] - truth.positions[n] for n in reg])
    err = np.abs(d - d.mean(axis=0))
    assert err.mean() <= 0.2 and err.max() <= 0.5, (err.mean(), err.max())
    reasons = res.pairs.reason[res.pairs.status == "rejected"]
    assert reasons.str.startswith(("quality", "ambiguous", "peak at", "unconfirmed")).all()


def test_explain_lists_pairs_levels_and_tasks(mosaic):
    ds, _ = mosaic
    lazy = register(ds, [n for n in ds.images])
    text = lazy.explain(print_=False)
    assert "tile_r00_c00 ~ tile_r00_c01: level 0" in text
    assert f"pair tasks: {len(lazy.node.pairs)}" in text and "tasks: " in text
    # a grid of 5x5 has 2*5*4 = 40 row/column neighbours, and no diagonal pairs
    assert len(lazy.node.pairs) == 40


def test_apply_adds_a_coordinate_system(mosaic, registered):
    ds, _ = mosaic
    out = registered.apply(ds, "registered")
    el = out.images["tile_r01_c01"]
    assert set(el.transforms) == {"global", "registered"}
    assert "registered" not in ds.images["tile_r01_c01"].transforms  # the input is untouched
    t = el.transforms["registered"]
    assert isinstance(t, Translation)
    np.testing.assert_allclose(t.translation[::-1], registered.matrices["tile_r01_c01"][:2, 2])
    assert sf.get_transformation_between(out, "tile_r01_c01", "registered") is not None


def test_registration_on_a_pyramid_level(_cluster):
    ds, truth = tiled_mosaic(2, 3, 256, stage_noise=8.0, seed=5, scale_factors=[2])
    lazy = register(ds, "tile_*", level=1)
    assert all(p.level == 1 for p in lazy.node.pairs)
    res = lazy.compute(scheduler="threads")
    err = _errors(res, truth)
    assert err.max() < 1.0  # half resolution: still sub-pixel at scale 0
    with pytest.raises(PlanError, match="level 2"):
        register(ds, "tile_*", level=2)


def test_pair_tasks_read_their_windows_themselves():
    # windows that span several tile chunks are read inside the pair task: same result, and
    # the graph is one task per pair + one gathering task (no tile chunk held between them)
    ds1, _ = tiled_mosaic(2, 3, 128, stage_noise=6.0, seed=3, channels=2)
    rechunked = {
        n: sf.Image(
            el.scale(0).data.rechunk((1, 48, 48)), dims=el.dims, transforms=dict(el.transforms)
        )
        for n, el in ds1.images.items()
    }
    ds2 = sf.Dataset(images=rechunked)
    lazy = register(ds2, "tile_*")
    assert lazy.n_tasks == len(lazy.node.pairs) + 1
    one = register(ds1, "tile_*").compute(scheduler="sync")
    two = lazy.compute(scheduler="sync")
    for n in one.matrices:
        np.testing.assert_allclose(one.matrices[n], two.matrices[n], atol=1e-6)
    assert list(one.pairs.status) == list(two.pairs.status)
    np.testing.assert_allclose(one.pairs.quality, two.pairs.quality, atol=1e-9)


# --- global solve ---------------------------------------------------------------------------
def _grid_edges(n: int, pos: np.ndarray, noise: float, rng) -> list[Edge]:
    edges = []
    idx = lambda r, c: r * n + c  # noqa: E731
    for r in range(n):
        for c in range(n):
            for rr, cc in ((r + 1, c), (r, c + 1)):
                if rr < n and cc < n:
                    a, b = idx(r, c), idx(rr, cc)
                    qa = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]) + pos[b]
                    # the content seen at qa through tile a is seen at qb through tile b
                    qb = qa - (pos[b] - pos[a]) + rng.normal(0, noise, 2)
                    edges.append(Edge(a, b, qa, qb, 1.0, 1.0))
    return edges


def test_solve_removes_an_outlier_edge_and_keeps_connectivity():
    rng = np.random.default_rng(0)
    n = 32  # 1,024 tiles
    true_corr = rng.normal(0, 3, (n * n, 2))
    edges = []
    for e in _grid_edges(n, np.zeros((n * n, 2)), 0.02, rng):
        # measured: G_a(qa) = G_b(qb) with G_i = + true_corr[i]
        qb = e.beads_a + true_corr[e.a] - true_corr[e.b]
        edges.append(Edge(e.a, e.b, e.beads_a, qb + rng.normal(0, 0.02, qb.shape), 1.0, 1.0))
    bad = 100
    e = edges[bad]
    edges[bad] = Edge(e.a, e.b, e.beads_a, e.beads_b + 25.0, 1.0, 1.0)
    sol = solve_positions(n * n, np.zeros((n * n, 2)), edges)
    assert sol.removed_order == [bad] and not sol.used[bad] and sol.connected.all()
    got = sol.matrices[:, :2, 2]
    err = got - true_corr
    assert np.abs(err - err.mean(axis=0)).max() < 0.1


def test_solve_keeps_a_bridge_and_isolated_tiles_stay():
    # 0 - 1 - 2 chain: edge (1, 2) is wrong but is a bridge; tile 3 has no edge
    q = np.array([[0.0, 0.0], [5.0, 5.0]])
    edges = [Edge(0, 1, q, q, 1.0, 1.0), Edge(1, 2, q, q + 40.0, 1.0, 1.0)]
    sol = solve_positions(4, np.zeros((4, 2)), edges)
    assert sol.used.all() and sol.removed_order == []
    assert list(sol.connected) == [True, True, True, False]
    np.testing.assert_allclose(sol.matrices[3], np.eye(3))


def test_solve_drops_a_weak_bridge_and_guards_far_tiles():
    # 0 - 1 - 2 triangle is confirmed; tile 3 hangs on one weak edge that says "move 6 px";
    # tile 4 hangs on a strong edge that says "move 30 px" (beyond any pair's search radius)
    q = np.array([[0.0, 0.0], [5.0, 5.0]])
    tri = [Edge(0, 1, q, q, 1.0, 1.0), Edge(1, 2, q, q, 1.0, 1.0), Edge(0, 2, q, q, 1.0, 1.0)]
    edges = [*tri, Edge(2, 3, q, q + 6.0, 0.5**2, 1.0), Edge(1, 4, q, q + 30.0, 1.0, 1.0)]
    sol = solve_positions(5, np.zeros((5, 2)), edges, min_bridge_weight=0.8**2, max_correction=15)
    assert sol.weak_bridges == [3] and sol.guarded == [4]
    assert list(sol.connected) == [True, True, True, False, False]
    np.testing.assert_allclose(sol.matrices[3], np.eye(3))
    np.testing.assert_allclose(sol.matrices[4], np.eye(3), atol=1e-6)
    # without the two rules both tiles follow their single edge
    plain = solve_positions(5, np.zeros((5, 2)), edges)
    rel = plain.matrices[4][:2, 2] - plain.matrices[1][:2, 2]
    assert plain.connected.all() and np.allclose(np.abs(rel), 30, atol=1e-3)


def test_solve_rigid_recovers_a_rotation():
    theta = 0.01
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centres = np.array([[50.0, 50.0], [50.0, 140.0]])
    qa = np.array([[0.0, 90.0], [100.0, 90.0], [0.0, 110.0], [100.0, 110.0]])
    # tile 1 is rotated about its centre by theta relative to tile 0
    qb = (qa - centres[1]) @ rot + centres[1]
    sol = solve_positions(2, centres, [Edge(0, 1, qa, qb, 1.0, 1.0)], transform="rigid")
    rel = np.linalg.inv(sol.matrices[0]) @ sol.matrices[1]
    assert abs(np.arctan2(rel[1, 0], rel[0, 0]) - theta) < 1e-3
    np.testing.assert_allclose(rel[:2, :2] @ rel[:2, :2].T, np.eye(2), atol=1e-9)


# --- fusion ---------------------------------------------------------------------------------
def _covered(truth, grid_origin: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for p in truth.positions.values():
        lo = np.ceil(p - grid_origin).astype(int)
        hi = np.floor(p + truth.tile_shape - grid_origin).astype(int)
        mask[lo[0] : hi[0], lo[1] : hi[1]] = True
    return mask


def test_fusion_of_integer_offsets_without_blending_is_exact():
    ds, truth = tiled_mosaic(3, 3, 128, stage_noise=0.0, subpixel=False, noise=0.0, seed=2)
    img = fuse(ds, "tile_*", blending=None, chunks=100)
    assert img.n_scales >= 2 and img.dtype == np.uint16
    t = img.transforms["global"]
    np.testing.assert_allclose(t.translation[::-1], truth.origin)
    got = img.scale(0).data.compute()
    want = truth.image()
    assert got.shape == want.shape
    mask = _covered(truth, truth.origin, want.shape[1:])
    assert mask.mean() > 0.9
    np.testing.assert_array_equal(got[:, mask], want[:, mask])
    assert (got[:, ~mask] == 0).all()


def test_blended_fusion_psnr_and_no_seams():
    ds, truth = tiled_mosaic(3, 3, 160, stage_noise=0.0, noise=0.0, seed=4, channels=1)
    img = fuse(ds, "tile_*", blending="cosine", chunks=128)
    got = img.scale(0).data.compute()[0].astype(np.float64)
    want = truth.image()[0].astype(np.float64)
    mask = _covered(truth, truth.origin, want.shape)
    mse = np.mean((got[mask] - want[mask]) ** 2)
    psnr = 10 * np.log10(want.max() ** 2 / mse)
    assert psnr >= 40, psnr
    # seams: mean |gradient| across the tile borders vs everywhere else, inside the mosaic
    gx = np.abs(np.diff(got, axis=1))
    inner = mask[:, 1:] & mask[:, :-1]
    border = np.zeros_like(inner)
    for p in truth.positions.values():
        for x in (p[1], p[1] + truth.tile_shape[1]):
            col = int(np.floor(x - truth.origin[1]))
            for c in (col - 1, col):
                if 0 <= c < border.shape[1]:
                    border[:, c] = True
    border &= inner
    ratio = gx[border].mean() / gx[inner & ~border].mean()
    assert abs(ratio - 1) <= 0.1, ratio
    # a different blending changes the output (the blending is really applied)
    other = fuse(ds, "tile_*", blending=None, chunks=128).scale(0).data.compute()[0]
    assert np.any(other != got.astype(np.uint16))


def test_one_output_chunk_reads_only_the_tiles_and_chunks_it_meets():
    ds0, truth = tiled_mosaic(3, 3, 128, stage_noise=3.0, noise=0.0, seed=6, channels=1)
    reads: list[tuple[str, tuple[int, ...]]] = []

    def loader(block, name, block_info=None):
        reads.append((name, tuple(block_info[0]["chunk-location"])))
        return block

    images = {}
    for name, el in ds0.images.items():
        base = da.from_array(truth.tile(name, with_noise=False), chunks=(1, 32, 32))
        arr = da.map_blocks(loader, base, name, dtype=base.dtype)
        images[name] = sf.Image(arr, dims=("c", "y", "x"), transforms=dict(el.transforms))
    ds = sf.Dataset(images=images)
    img = fuse(ds, "tile_*", blending="linear", chunks=64)
    data = img.scale(0).data
    assert data.numblocks[1] >= 5 and data.numblocks[2] >= 5
    grid_t = img.transforms["global"].translation[::-1]
    by, bx = 2, 3
    lo = np.array([by * 64, bx * 64]) + grid_t
    hi = lo + 64
    reads.clear()
    data.blocks[0, by, bx].compute(scheduler="sync")
    meets = {
        n for n, p in truth.stage.items() if np.all(p < hi) and np.all(p + truth.tile_shape > lo)
    }
    assert 1 <= len(meets) < 9
    assert {n for n, _ in reads} == meets
    for n, (_, cy, cx) in reads:  # only the tile chunks the output chunk maps onto (+1 px)
        p = truth.stage[n]
        c_lo = np.array([cy, cx]) * 32 + p
        c_hi = c_lo + 32
        assert np.all(c_lo < hi + 1) and np.all(c_hi > lo - 1), (n, cy, cx)
    assert len(reads) < len(meets) * 16  # not whole tiles


# --- stitch, job, interop -------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_mosaic():
    return tiled_mosaic(3, 3, 128, overlap=0.2, stage_noise=6.0, seed=8)


def test_stitch_job_commits_once_and_spatialdata_reads_the_result(
    small_mosaic, tmp_path, cluster_client
):
    import spatialdata as sd

    from spatialflow.io.location import location
    from spatialflow.io.repository import open_repository
    from spatialflow.jobs.config import parse_config
    from spatialflow.jobs.runner import run_job

    ds, _ = small_mosaic
    ds.write(tmp_path / "tiles.icechunk", format="icechunk", message="tiles")
    cfg = parse_config(
        yaml.safe_load(
            f"""
            repository: {tmp_path / "out.icechunk"}
            inputs: {{tiles: {tmp_path / "tiles.icechunk"}}}
            steps:
              - stitch: {{input: tiles, tiles: "tile_*", output: fused}}
            """
        )
    )
    res = run_job(cfg, scheduler=cluster_client.scheduler.address)
    assert res.status == "committed"
    repo = open_repository(location(tmp_path / "out.icechunk"))
    snaps = list(repo.ancestry(branch="main"))
    assert len(snaps) == 2  # the repository's initial snapshot + this one commit
    report = snaps[0].metadata["stitch"]["fused"]
    assert len(report["pairs"]) == 12 and not report["unregistered"]
    out = sf.read(tmp_path / "out.icechunk")
    assert "fused" in out.images and "registered" in out.images["fused"].transforms
    assert set(out.images["tile_r01_c01"].transforms) == {"global", "registered"}
    # the committed image equals fusing with the registered transforms directly
    direct = stitch(ds, "tile_*").compute()
    np.testing.assert_array_equal(
        out.images["fused"].scale(0).data.compute(), direct.image.scale(0).data.compute()
    )
    # spatialdata 0.8 reads a SpatialData store of the stitched result
    store = tmp_path / "stitched.zarr"
    direct.to_dataset(ds, "fused").write(store, format="spatialdata")
    sdata = sd.read_zarr(store)
    fused = sdata.images["fused"]
    assert fused["scale0"]["image"].shape == direct.image.shape
    t = sd.transformations.get_transformation(sdata.images["tile_r02_c01"], "registered")
    got = t.to_affine_matrix(("y", "x"), ("y", "x"))
    np.testing.assert_allclose(got, direct.registration.matrices["tile_r02_c01"], atol=1e-9)


# --- bad input ------------------------------------------------------------------------------
def test_bad_inputs_name_the_tile(small_mosaic):
    ds, _ = small_mosaic
    names = list(ds.images)
    imgs = {n: ds.images[n] for n in names}

    def with_(**extra):
        return sf.Dataset(images={**imgs, **extra.get("images", {})}, labels=extra.get("labels"))

    with pytest.raises(ValidationError, match="tile 'nope'"):
        register(ds, [*names, "nope"])
    labels = sf.Labels(np.zeros((8, 8), dtype=np.int32))
    with pytest.raises(ValidationError, match="tile 'mask' is a label"):
        register(with_(labels={"mask": labels}), [*names, "mask"])
    three = sf.Image(np.zeros((3, 128, 128), np.uint16), transforms={"global": Translation([0, 0])})
    with pytest.raises(ValidationError, match="tile 'odd': 3 channels"):
        register(with_(images={"odd": three}), [*names, "odd"])
    flt = sf.Image(np.zeros((2, 128, 128), np.float32), transforms={"global": Translation([0, 0])})
    with pytest.raises(ValidationError, match="tile 'flt': dtype float32"):
        fuse(with_(images={"flt": flt}), [*names, "flt"])
    lost = sf.Image(
        np.zeros((2, 128, 128), np.uint16), transforms={"elsewhere": Translation([0, 0])}
    )
    with pytest.raises(TransformError, match="tile 'lost'"):
        register(with_(images={"lost": lost}), [*names, "lost"])
    far = sf.Image(
        np.zeros((2, 128, 128), np.uint16), transforms={"global": Translation([9000, 9000])}
    )
    with pytest.raises(PlanError, match="far"):
        register(with_(images={"far": far}), [*names, "far"])
    with pytest.raises(ValidationError, match="transform"):
        register(ds, names, transform="elastic")
    pts = sf.Points(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    with pytest.raises(ValidationError, match="tile 'spots' is a point element, not an image"):
        stitch(sf.Dataset(images=imgs, points={"spots": pts}), [*names, "spots"])
    vol = sf.Image(
        np.zeros((2, 4, 128, 128), np.uint16),
        dims=("c", "z", "y", "x"),
        transforms={"global": Translation([0, 0, 0], axes=("x", "y", "z"))},
    )
    with pytest.raises(ValidationError, match="tile 'vol': dims"):
        fuse(with_(images={"vol": vol}), [*names, "vol"])
    with pytest.raises(TransformError, match=f"tile '{names[0]}'.*'nowhere'"):
        fuse(ds, names, coordinate_system="nowhere")
    with pytest.raises(ValidationError, match=f"channel 'dapi' of tile '{names[0]}'"):
        register(ds, names, channel="dapi")
    with pytest.raises(ValidationError, match="at least two tiles"):
        register(ds, names[:1])
    with pytest.raises(ValidationError, match="max_shift must be positive"):
        register(ds, names, max_shift=-3)
    with pytest.raises(ValidationError, match="blending"):
        fuse(ds, names, blending="max")
    with pytest.raises(ValidationError, match="matches no element"):
        register(ds, "cell_*")
